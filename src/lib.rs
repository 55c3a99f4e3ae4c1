//! c360-bridge: receives catalog360 Outbound Webhooks and publishes every event to Kafka and/or
//! RabbitMQ, answering 200 only once every event is confirmed by its broker.

pub mod app;
pub mod config;
pub mod delivery;
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
    let flag = app.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: refusing new batches, finishing in-flight ones");
        flag.begin_shutdown();
        trigger.cancel();
    });
    tokio::spawn(watch_files(&app, stop.clone()));
    let main = server::Listener {
        name: "webhook",
        router: server::http::router(app.clone(), admin.is_none()),
        limits: app.limits,
        tls: app.tls.clone(),
    };
    let main = server::run(listener, main, stop.clone());
    match admin {
        Some(admin) => {
            let admin_listener = server::Listener {
                name: "admin",
                router: server::http::admin_router(app.clone()),
                limits: app.limits,
                tls: None,
            };
            tokio::try_join!(main, server::run(admin, admin_listener, stop.clone()))?;
        }
        None => main.await?,
    }
    app.finish().await;
    tracing::info!("stopped");
    Ok(())
}

/// One watcher for every file re-read while running: the keys files and the TLS pair, polled
/// every `server.keys_poll_interval` and re-read on SIGHUP.
fn watch_files(app: &App, stop: CancellationToken) -> impl Future<Output = ()> + use<> {
    let webhooks = app.webhook_keys();
    let tls = app.tls.clone();
    let polled = tls.is_some() || webhooks.iter().any(|w| w.has_file());
    let reload: config::watch::Reload = Arc::new(move |t| {
        webhook::keys::reload_all(&webhooks, t);
        if let Some(tls) = &tls {
            tls.reload(t);
        }
    });
    config::watch::run(reload, polled, app.keys_poll_interval, stop, || {
        tracing::info!(
            "SIGHUP: nothing is read from a file (no keys_file, no server.tls); inline and keys_env keys change only with a restart"
        )
    })
}
