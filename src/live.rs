//! The bridge in force: the current `App` generation, and the configuration reload that swaps
//! in the next one (read → validate → build → swap) while batches finish on the one they
//! started with.

use crate::app::App;
use crate::config::{self, Config};
use crate::telemetry::metrics as m;
use c360_sinks::Sink;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The generation new requests are served by.
pub struct Live {
    current: RwLock<Arc<App>>,
    /// One reload at a time, in the order they were asked for.
    reloading: tokio::sync::Mutex<()>,
}

/// Settings a reload cannot apply: the listeners, the runtime, and what every generation
/// shares (ledger, traces, HTTPS files). A change of one is logged and kept for the restart.
const RESTART_ONLY: [&[&str]; 11] = [
    &["server", "listen"],
    &["server", "admin_listen"],
    &["server", "worker_threads"],
    &["server", "header_timeout"],
    &["server", "idle_timeout"],
    &["server", "max_connections"],
    &["server", "max_in_flight_batches"],
    &["server", "keys_poll_interval"],
    &["server", "tls"],
    &["ledger"],
    &["telemetry"],
];

impl Live {
    pub fn new(app: Arc<App>) -> Self {
        m::config_info(None, &app.config.hash());
        Self {
            current: RwLock::new(app),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The generation in force; a batch keeps the one it got for its whole life.
    pub fn current(&self) -> Arc<App> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads in the background (see `reload_now`); for the file watcher, which must not wait.
    pub fn reload(self: &Arc<Self>, why: &'static str) {
        let live = self.clone();
        tokio::spawn(async move { live.reload_now(why).await });
    }

    /// Reads the configuration file again and swaps in the generation it describes, once the
    /// sinks it had to connect anew are ready (or its ack deadline has passed). A file that does
    /// not load, validate or build leaves the running generation in force.
    pub async fn reload_now(&self, why: &str) {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.current();
        let Some(file) = old.config_file.clone() else {
            return;
        };
        let before = old.config.hash();
        let next = config::load(Some(&file))
            .map_err(|e| e.to_string())
            .map(|c| keep_restart_only(&old.config, c))
            .and_then(|c| {
                if c.hash() == before {
                    return Ok(None);
                }
                old.next(c).map(Some).map_err(|e| e.to_string())
            });
        let next = match next {
            Ok(Some(n)) => Arc::new(n),
            Ok(None) => {
                m::config_reload("ok");
                tracing::info!(hash = %before, "configuration reload ({why}): unchanged, nothing swapped");
                return;
            }
            Err(e) => {
                m::config_reload("error");
                tracing::error!(
                    "configuration reload ({why}) failed, the running configuration stays: {e}"
                );
                return;
            }
        };
        let after = next.config.hash();
        warm_up(&old, &next).await;
        if let Ok(mut g) = self.current.write() {
            *g = next.clone();
        }
        m::config_reload("ok");
        m::config_info(Some(&before), &after);
        let retired = missing_from(&old, &next);
        tracing::info!(
            from = %before, to = %after, closing = ?retired.iter().map(|s| s.name().to_owned()).collect::<Vec<_>>(),
            "configuration reloaded ({why})"
        );
        if !retired.is_empty() {
            tokio::spawn(drain_and_close(old, retired));
        }
    }
}

/// `next` with the restart-only settings of `running` (each change logged). What they govern
/// is made once and shared by every generation (`Kept`); here they are put back in the
/// effective configuration, so that `config_hash` names what is in force.
fn keep_restart_only(running: &Config, mut next: Config) -> Config {
    for path in RESTART_ONLY {
        if running.section(path) != next.section(path) {
            tracing::warn!(
                key = %path.join("."),
                "configuration reload: this setting changes only with a restart; the running value stays"
            );
        }
        next.copy_section(running, path);
    }
    next
}

/// The sinks of `a` that `b` does not hold (the same connection, not the same name).
fn missing_from(a: &App, b: &App) -> Vec<Arc<dyn Sink>> {
    a.sinks
        .iter()
        .filter(|s| !b.sinks.iter().any(|n| Arc::ptr_eq(s, n)))
        .cloned()
        .collect()
}

/// Gives the sinks `next` connected anew until they are ready, at most `server.ack_timeout`,
/// so that a changed sink section costs no batch a 503; one still not ready is named in a WARN
/// (the reload goes on, as a restart with that configuration would).
async fn warm_up(old: &App, next: &App) {
    let fresh = missing_from(next, old);
    if let Err(waiting) = c360_sinks::wait_ready(&fresh, next.config.server.ack_timeout).await {
        tracing::warn!("configuration reload: swapping in sinks that are not ready yet: {waiting}");
    }
}

/// Waits until no batch holds the old generation any more (at most its publish deadline),
/// then closes the sinks it alone used.
async fn drain_and_close(old: Arc<App>, retired: Vec<Arc<dyn Sink>>) {
    let until = Instant::now() + old.publish_deadline;
    while Arc::strong_count(&old) > 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(old);
    for sink in retired {
        sink.close(Duration::from_secs(5)).await;
        tracing::info!(sink = %sink.name(), "sink closed after a configuration reload");
    }
}
