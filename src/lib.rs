//! c360-bridge: receives catalog360 Outbound Webhooks and publishes every event to Kafka and/or
//! RabbitMQ, answering 200 only once every event is confirmed by its broker.

pub mod app;
pub mod config;
pub mod delivery;
pub mod http;
pub mod live;
pub mod ops;
pub mod server;
pub mod telemetry;
pub mod webhook;

pub use app::App;

use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The multi-threaded runtime the daemon runs on; `workers` 0 means one thread per core.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build()
}

/// Serves `app` on `listener` (and the admin endpoints on `admin` if given) until `shutdown`
/// resolves; then refuses new batches, lets in-flight ones finish or fail, and closes the sinks.
/// Meanwhile the webhooks' keys files (and the TLS pair) are re-read when they change and on
/// SIGHUP.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let live = Arc::new(live::Live::new(app.clone()));
    let flag = live.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: refusing new batches, finishing in-flight ones");
        flag.current().begin_shutdown();
        trigger.cancel();
    });
    tokio::spawn(watch_files(live.clone(), stop.clone()));
    let (limits, tls) = (app.limits, app.tls.clone());
    drop(app);
    let main = server::Listener {
        name: "webhook",
        router: http::router(live.clone(), admin.is_none()),
        limits,
        tls,
    };
    let main = server::run(listener, main, stop.clone());
    match admin {
        Some(admin) => {
            let admin_listener = server::Listener {
                name: "admin",
                router: http::admin_router(live.clone()),
                limits,
                tls: None,
            };
            tokio::try_join!(main, server::run(admin, admin_listener, stop.clone()))?;
        }
        None => main.await?,
    }
    live.current().finish().await;
    tracing::info!("stopped");
    Ok(())
}

/// One watcher for every file re-read while running: the keys files, the TLS pair and the
/// configuration, polled every `server.keys_poll_interval` and re-read on SIGHUP. SIGHUP
/// reloads the configuration; with `server.watch_config` a change of its file does too.
fn watch_files(live: Arc<live::Live>, stop: CancellationToken) -> impl Future<Output = ()> {
    let app = live.current();
    let polled = app.tls.is_some()
        || app.config_file.is_some()
        || app.webhook_keys().iter().any(|w| w.has_file());
    let every = app.keys_poll_interval;
    let seen = std::sync::Mutex::new(
        app.config_file
            .as_deref()
            .and_then(|p| std::fs::read(p).ok()),
    );
    let reload: config::watch::Reload = Arc::new(move |t| {
        let app = live.current();
        webhook::keys::reload_all(&app.webhook_keys(), t);
        if let Some(tls) = &app.tls {
            tls.reload(t);
        }
        let Some(path) = &app.config_file else {
            return;
        };
        if t == config::watch::Trigger::Poll && !app.watch_config {
            return;
        }
        let now = std::fs::read(path).ok();
        let changed = seen
            .lock()
            .map(|mut s| std::mem::replace(&mut *s, now.clone()) != now);
        if t == config::watch::Trigger::Signal || changed.unwrap_or(true) {
            live.reload(t.name());
        }
    });
    config::watch::run(reload, polled, every, stop, || {
        tracing::info!(
            "SIGHUP: nothing is read from a file (no configuration file, keys_file or server.tls)"
        )
    })
}
