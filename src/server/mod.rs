//! Everything before a request exists: the accept loop, TLS, the connection limit and the
//! per-connection deadlines (header, idle), and graceful shutdown of open connections.
//!
//! `axum::serve` installs no timer, so a client that sends nothing, or its head one byte at a
//! time, would hold its connection for ever. Here every connection has a watchdog: the first
//! request head must be complete within `header_timeout` of the accept (TLS handshake
//! included), a later head within `header_timeout` of its first byte, and a kept-alive
//! connection with nothing in flight is closed after `idle_timeout`. While a request is in
//! flight the handler's own answer deadline bounds it. Only HTTP/1.1 is served (what catalog360
//! speaks): hyper-util's auto builder waits for an HTTP/2 preface without any timer.

pub mod client_addr;
pub mod tls;

use crate::telemetry::metrics as m;
use axum::Router;
use client_addr::Peer;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tls::Tls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// The deadlines and the connection limit of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// One listener: what it serves, with which limits, and its name in the metrics.
#[derive(Clone)]
pub struct Listener {
    pub name: &'static str,
    pub router: Router,
    pub limits: Limits,
    pub tls: Option<Arc<Tls>>,
}

/// Accepts connections until `stop`, then lets every open connection finish its request in
/// flight (idle ones close at once) and returns once all are closed.
pub async fn run(
    tcp: TcpListener,
    listener: Listener,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(listener.limits.max_connections));
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Over the limit: closed at once, before any byte is read.
            m::connection_refused(listener.name);
            drop(stream);
            continue;
        };
        let conn = Conn {
            listener: listener.clone(),
            peer,
            stop: stop.clone(),
        };
        conns.spawn(conn.serve(stream, permit));
    }
    drop(tcp);
    conns.close();
    conns.wait().await;
    Ok(())
}

/// An accept error: a connection that died in the backlog is nothing; running out of file
/// descriptors gets a pause (retrying at once would spin).
async fn accept_failed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::ConnectionAborted {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One accepted connection.
struct Conn {
    listener: Listener,
    peer: SocketAddr,
    stop: CancellationToken,
}

impl Conn {
    async fn serve(self, stream: TcpStream, _permit: OwnedSemaphorePermit) {
        let _open = m::OpenConnection::enter(self.listener.name);
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        let Some(tls) = self.listener.tls.clone() else {
            return self.http(stream, accepted).await;
        };
        let head_deadline = accepted + self.listener.limits.header_timeout;
        match tokio::time::timeout_at(head_deadline, tls.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => self.http(stream, accepted).await,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                m::connection_closed(self.listener.name, "tls_error");
            }
            Err(_) => m::connection_closed(self.listener.name, "header_timeout"),
        }
    }

    /// Serves HTTP/1.1 on `io` under the watchdog until the client or a deadline ends it.
    async fn http<S>(self, io: S, accepted: Instant)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new(accepted));
        let io = TokioIo::new(Watched {
            inner: io,
            activity: activity.clone(),
        });
        let service = RequestService {
            router: self.listener.router.clone(),
            peer: self.peer,
            activity: activity.clone(),
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .header_read_timeout(None)
            .serve_connection(io, hyper::service::service_fn(move |r| service.call(r)));
        let mut conn = std::pin::pin!(conn);
        let limits = self.listener.limits;
        let mut draining = false;
        loop {
            let (deadline, reason) = activity.deadline(&limits);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = activity.changed.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    if activity.deadline(&limits).0 <= Instant::now() {
                        m::connection_closed(self.listener.name, reason);
                        return;
                    }
                }
                () = self.stop.cancelled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// What a connection is doing, for its watchdog.
struct Activity {
    state: Mutex<State>,
    /// Woken when the state changes in a way that moves the deadline.
    changed: Notify,
}

struct State {
    accepted: Instant,
    /// Requests handed to the router and not yet answered.
    in_flight: u32,
    /// Requests answered so far.
    answered: u64,
    /// When the connection last became idle (its last answer).
    idle_since: Instant,
    /// When the first byte of the next request head arrived, while idle.
    head_started: Option<Instant>,
}

/// A deadline far enough away to mean "none" (a request in flight has its own deadline).
const NEVER: Duration = Duration::from_secs(86_400 * 365);

impl Activity {
    fn new(accepted: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                accepted,
                in_flight: 0,
                answered: 0,
                idle_since: accepted,
                head_started: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection must be closed unless something happens first, and which deadline
    /// that is (the label of `c360_connections_closed_total`).
    fn deadline(&self, limits: &Limits) -> (Instant, &'static str) {
        let s = self.state();
        if s.in_flight > 0 {
            return (Instant::now() + NEVER, "in_flight");
        }
        if s.answered == 0 {
            return (s.accepted + limits.header_timeout, "header_timeout");
        }
        match s.head_started {
            Some(t) => (t + limits.header_timeout, "header_timeout"),
            None => (s.idle_since + limits.idle_timeout, "idle_timeout"),
        }
    }

    fn bytes_read(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.head_started.is_none() && s.answered > 0 {
            s.head_started = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        let mut s = self.state();
        s.in_flight += 1;
        s.head_started = None;
        drop(s);
        self.changed.notify_one();
    }

    fn request_answered(&self) {
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.answered += 1;
        s.idle_since = Instant::now();
        drop(s);
        self.changed.notify_one();
    }
}

/// Marks a request answered when dropped (also when hyper drops the handler's future).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_answered();
    }
}

/// Hands each request to the router with its peer address, and tells the watchdog.
#[derive(Clone)]
struct RequestService {
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl RequestService {
    fn call(
        &self,
        mut req: ::http::Request<Incoming>,
    ) -> impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + use<>
    {
        req.extensions_mut().insert(Peer(self.peer));
        self.activity.request_started();
        let guard = InFlight(self.activity.clone());
        let mut router = self.router.clone();
        async move {
            let resp = router.call(req).await;
            drop(guard);
            resp
        }
    }
}

/// The connection's byte stream, telling the watchdog when a new request head starts.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
        }
    }

    #[test]
    fn deadlines_follow_the_connection_through_its_phases() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        assert_eq!(
            a.deadline(&limits()),
            (t0 + limits().header_timeout, "header_timeout")
        );
        a.bytes_read();
        assert_eq!(
            a.deadline(&limits()).0,
            t0 + limits().header_timeout,
            "first head: from accept"
        );
        a.request_started();
        assert_eq!(a.deadline(&limits()).1, "in_flight");
        std::thread::sleep(Duration::from_millis(5));
        a.request_answered();
        let (idle, why) = a.deadline(&limits());
        assert_eq!(why, "idle_timeout");
        assert!(idle > t0 + limits().idle_timeout, "counted from the answer");
        std::thread::sleep(Duration::from_millis(5));
        a.bytes_read();
        let (head, why) = a.deadline(&limits());
        assert_eq!(why, "header_timeout");
        assert!(
            head < idle,
            "a head once started must be complete within header_timeout"
        );
    }
}
