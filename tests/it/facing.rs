//! Facing the internet: HTTPS with a real verifying TLS client (test CA made with rcgen), the
//! certificate swapped under a running bridge (file change and SIGHUP), and the source
//! allowlist with and without trusted proxies. Every refusal is followed by a read that finds
//! nothing.

use crate::harness::*;
use crate::hostile::{Target, server_toml};
use lapin::types::FieldTable;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

pub const KEY: &str = "hostile-key";

/// A test certificate authority.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate for `localhost` and its key, as PEM, plus its DER to compare.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    /// The CA's certificate, PEM, for a client's trust store.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            // The chain, leaf first, as an operator's fullchain.pem.
            cert_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A TLS client that trusts this CA only and verifies the chain and the name.
    pub fn client(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// Writes `leaf` to `dir`/cert.pem and key.pem atomically (write then rename, as a certificate
/// manager does); returns the `[server.tls]` table.
pub fn install(dir: &std::path::Path, leaf: &Leaf) -> String {
    for (name, text) in [("cert.pem", &leaf.cert_pem), ("key.pem", &leaf.key_pem)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

/// An HTTPS connection verified against `pki`.
pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

pub async fn connect(pki: &Pki, addr: std::net::SocketAddr) -> Result<Tls, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    pki.client().connect(name, tcp).await
}

/// The leaf certificate the server presented on `s`.
pub fn served_leaf(s: &Tls) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Sends one request on a kept-alive connection and reads its answer: (status, body).
pub async fn exchange(s: &mut Tls, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let sig = c360_bridge::webhook::signature::sign(KEY.as_bytes(), body);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-C360-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    read_response(s).await
}

async fn read_response(s: &mut Tls) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "answer head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A bridge on HTTPS publishing to its own queue.
pub async fn https_bridge(tls: &str, extra_server: &str) -> (HttpsBridge, Queue) {
    let exchange = unique("x-tls");
    let queue = Queue::bind(&exchange, &["#"], FieldTable::default()).await;
    let toml = format!(
        "[server]\nack_timeout = \"5s\"\nkeys_poll_interval = \"200ms\"\n{extra_server}\n{tls}\n{}{}{}",
        webhook_toml("tls", KEY),
        rabbit_sink_toml("rabbit", &exchange),
        route_all_toml(&["rabbit"], "")
    );
    // Readiness is polled over plain HTTP, which an HTTPS listener does not answer: the admin
    // endpoints get a plain listener of their own.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, toml).unwrap();
    let config = c360_bridge::config::load(Some(&path)).unwrap();
    let app = c360_bridge::App::build(config, Some(&path)).unwrap();
    (HttpsBridge::serve(app).await, queue)
}

/// A bridge in this process serving HTTPS on `addr`, its admin endpoints on plain `admin`.
pub struct HttpsBridge {
    pub addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl HttpsBridge {
    async fn serve(app: c360_bridge::App) -> HttpsBridge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(c360_bridge::serve(
            Arc::new(app),
            listener,
            Some(admin),
            async {
                let _ = rx.await;
            },
        ));
        wait_ready_at(&format!("http://{admin_addr}"), Duration::from_secs(20)).await;
        HttpsBridge {
            addr,
            admin: admin_addr,
            _stop: tx,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_chain_a_verifying_client_accepts_and_publishes() {
    let _shared = SHARED_BROKERS.read().await;
    let pki = Pki::new("c360 test CA");
    let dir = tempfile::tempdir().unwrap();
    let leaf = pki.leaf();
    let (bridge, queue) = https_bridge(&install(dir.path(), &leaf), "").await;

    let mut s = connect(&pki, bridge.addr)
        .await
        .expect("verified handshake");
    assert_eq!(served_leaf(&s), leaf.der);
    let e = event("task_created", &unique("tls"));
    let (status, body) = exchange(&mut s, "POST", "/hook", &batch(std::slice::from_ref(&e))).await;
    assert_eq!((status, body.as_str()), (200, r#"{"accepted":1}"#));
    let got = queue.drain().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, e.as_bytes());

    // A client that does not trust the CA refuses the chain; plain HTTP gets no answer.
    let stranger = Pki::new("another CA");
    assert!(connect(&stranger, bridge.addr).await.is_err());
    let mut plain = TcpStream::connect(bridge.addr).await.unwrap();
    plain
        .write_all(b"HEAD /hook HTTP/1.1\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let answer = crate::hostile::read_to_close(&mut plain, Duration::from_secs(5)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
    assert!(queue.drain().await.is_empty());
}

/// Opens new verified connections until one is served `want`; returns how long that took.
async fn until_served(pki: &Pki, addr: std::net::SocketAddr, want: &[u8]) -> Duration {
    let started = Instant::now();
    loop {
        let s = connect(pki, addr).await.expect("handshake");
        if served_leaf(&s) == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new certificate is not served after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_certificate_is_served_without_dropping_open_connections() {
    let _shared = SHARED_BROKERS.read().await;
    let pki = Pki::new("c360 test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = pki.leaf();
    let (bridge, queue) = https_bridge(&install(dir.path(), &first), "").await;
    let mut open = connect(&pki, bridge.addr).await.unwrap();
    assert_eq!(served_leaf(&open), first.der);

    let second = pki.leaf();
    install(dir.path(), &second);
    let took = until_served(&pki, bridge.addr, &second.der).await;
    println!("certificate swap: new leaf served {took:?} after the files changed");

    // The connection opened before the swap still works, on its old certificate.
    let e = event("task_created", &unique("kept"));
    let (status, _) = exchange(&mut open, "POST", "/hook", &batch(std::slice::from_ref(&e))).await;
    assert_eq!(status, 200);
    assert_eq!(served_leaf(&open), first.der);
    assert_eq!(queue.drain().await.len(), 1);

    // A broken pair keeps the one in force, and is counted.
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    let m = bridge.url("/metrics");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let text = reqwest::get(&m).await.unwrap().text().await.unwrap();
        if metric(&text, "c360_tls_reloads_total{result=\"error\"}") >= 1.0 {
            break;
        }
        assert!(Instant::now() < until, "the broken pair was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = connect(&pki, bridge.addr).await.expect("still serving TLS");
    assert_eq!(served_leaf(&s), second.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_certificate_at_once() {
    let _shared = SHARED_BROKERS.read().await;
    let pki = Pki::new("c360 test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = pki.leaf();
    let tls = install(dir.path(), &first);
    let exchange = unique("x-tls");
    let config = format!(
        "[server]\nkeys_poll_interval = \"1h\"\nadmin_listen = \"127.0.0.1:{}\"\n{tls}\n{}{}{}",
        free_port(),
        webhook_toml("tls", KEY),
        rabbit_sink_toml("rabbit", &exchange),
        route_all_toml(&["rabbit"], "")
    );
    let (_cfg_dir, path) = write_config(&config);
    let admin = config
        .lines()
        .find_map(|l| l.strip_prefix("admin_listen = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let served = ServedTls::start(&path, &admin).await;
    let addr = served.addr;
    let s = connect(&pki, addr).await.unwrap();
    assert_eq!(served_leaf(&s), first.der);
    let second = pki.leaf();
    install(dir.path(), &second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = connect(&pki, addr).await.unwrap();
    assert_eq!(
        served_leaf(&s),
        first.der,
        "no poll for an hour: still the first"
    );
    served.signal("HUP");
    let took = until_served(&pki, addr, &second.der).await;
    println!("certificate swap: new leaf served {took:?} after SIGHUP");
    served.stop().await;
}

/// `serve` with HTTPS on the webhook port and plain admin endpoints (for readiness).
struct ServedTls {
    addr: std::net::SocketAddr,
    child: std::process::Child,
}

impl ServedTls {
    async fn start(config: &str, admin: &str) -> ServedTls {
        let port = free_port();
        let child = std::process::Command::new(BIN)
            .args(["serve", "--config", config])
            .env("C360_BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_ready_at(&format!("http://{admin}"), Duration::from_secs(20)).await;
        ServedTls {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child,
        }
    }

    fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    async fn stop(mut self) {
        self.signal("TERM");
        let until = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "serve did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServedTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- allow_from

/// Posts a signed batch with `X-Forwarded-For: xff` (if any); returns the reply.
async fn post_from(t: &Target, xff: Option<&str>) -> Reply {
    let body = batch(&[event("task_created", &unique("src"))]);
    let mut req = reqwest::Client::new()
        .post(t.bridge.url("/hook"))
        .header(
            "x-c360-signature",
            c360_bridge::webhook::signature::sign(KEY.as_bytes(), &body),
        )
        .body(body);
    if let Some(v) = xff {
        req = req.header("x-forwarded-for", v);
    }
    reply(req).await
}

async fn published_count(t: &Target) -> (usize, usize) {
    let (k, r) = t.published().await;
    (k.len(), r.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_source_is_served_and_others_get_403_before_the_body_is_read() {
    let _shared = SHARED_BROKERS.read().await;
    let allowed = Target::start(
        &server_toml(""),
        "allow_from = [\"127.0.0.0/8\", \"::1\"]\n",
    )
    .await;
    assert_eq!(post_from(&allowed, None).await.status, 200);
    assert_eq!(published_count(&allowed).await, (1, 1));

    let t = Target::start(
        &server_toml(""),
        "allow_from = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
    )
    .await;
    let r = post_from(&t, None).await;
    assert_eq!(r.status, 403, "{:?}", r.json);
    assert_eq!(r.json["error"], "forbidden_source");
    // Before the body: a request announcing 1 MB and sending none is answered at once.
    let started = Instant::now();
    let mut s = TcpStream::connect(t.bridge.addr).await.unwrap();
    s.write_all(b"POST /hook HTTP/1.1\r\nHost: b\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 403");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered before the body: the body deadline is 4.5 s"
    );
    // catalog360's URL check (HEAD) gets the same answer; an allowed client gets 200.
    let head = |b: &Bridge| reqwest::Client::new().head(b.url("/hook")).send();
    assert_eq!(head(&t.bridge).await.unwrap().status(), 403);
    assert_eq!(head(&allowed.bridge).await.unwrap().status(), 200);
    assert_eq!(published_count(&t).await, (0, 0));
    let m = metrics_text(&t.bridge).await;
    assert!(metric(&m, "c360_forbidden_sources_total{webhook=\"hostile\"}") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_for_header_from_an_untrusted_peer_is_ignored() {
    let _shared = SHARED_BROKERS.read().await;
    // The peer (127.0.0.1) is no trusted proxy: its claim to be 203.0.113.5 counts for nothing.
    let t = Target::start(&server_toml(""), "allow_from = [\"203.0.113.0/24\"]\n").await;
    let r = post_from(&t, Some("203.0.113.5")).await;
    assert_eq!(r.status, 403, "{:?}", r.json);
    assert_eq!(published_count(&t).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_trusted_proxy_the_right_most_untrusted_address_is_the_client() {
    let _shared = SHARED_BROKERS.read().await;
    let t = Target::start(
        &server_toml("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n"),
        "allow_from = [\"203.0.113.0/24\"]\n",
    )
    .await;
    // catalog360 (203.0.113.5) -> an inner proxy 10.1.1.1 -> the peer proxy 127.0.0.1.
    let r = post_from(&t, Some("203.0.113.5, 10.1.1.1")).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(published_count(&t).await, (1, 1));
    // A client that prepends the allowed address is still itself (the right-most untrusted).
    let r = post_from(&t, Some("203.0.113.5, 198.51.100.7")).await;
    assert_eq!(r.status, 403, "{:?}", r.json);
    // No header through the proxy: the proxy itself is the client, and it is not allowed.
    assert_eq!(post_from(&t, None).await.status, 403);
    assert_eq!(published_count(&t).await, (0, 0));
}

#[test]
fn check_names_a_bad_cidr_and_an_unusable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "{}{}",
        webhook_toml("w", KEY),
        "[sinks.k]\ntype = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n[[routes]]\nmatch = \"*\"\nsinks = [\"k\"]\n"
    );
    let (_d, path) = write_config(&base.replace(
        "path = \"/hook\"",
        "path = \"/hook\"\nallow_from = [\"10.0.0.0/33\"]",
    ));
    let (code, _, err) = run(&["check", "--config", &path], None);
    assert_eq!(code, 1);
    assert!(err.contains("10.0.0.0/33"), "{err}");
    let tls = format!(
        "[server.tls]\ncert_file = \"{0}/missing.pem\"\nkey_file = \"{0}/missing.key\"\n",
        dir.path().display()
    );
    let (_d, path) = write_config(&format!("{tls}{base}"));
    let (code, _, err) = run(&["check", "--config", &path], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.tls") && err.contains("missing.pem"),
        "{err}"
    );
    let pki = Pki::new("check CA");
    let tls = install(dir.path(), &pki.leaf());
    let (_d, path) = write_config(&format!("{tls}{base}"));
    let (code, out, err) = run(&["check", "--config", &path], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("https (certificate"), "{out}");
}
