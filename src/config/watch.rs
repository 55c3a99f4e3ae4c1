//! The file-watch helper shared by everything re-read while running (keys files, TLS pair):
//! a poll every interval plus SIGHUP, each calling the reload functions off the runtime.

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What made a file be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The periodic look: reports only when the file's content (or its error) changed.
    Poll,
    /// SIGHUP: re-reads and reports, changed or not.
    Signal,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Poll => "file changed",
            Trigger::Signal => "SIGHUP",
        }
    }
}

/// A reload run on every poll (when `polled`) and on every SIGHUP.
pub type Reload = Arc<dyn Fn(Trigger) + Send + Sync>;

/// Calls `reload` every `every` (if `polled`) and on SIGHUP, until `stop`. The reload runs on
/// the blocking pool (it reads files). SIGHUP is taken even when nothing is polled, so that it
/// never kills the daemon; `on_idle_hangup` is then called instead.
pub async fn run(
    reload: Reload,
    polled: bool,
    every: Duration,
    stop: CancellationToken,
    on_idle_hangup: impl Fn(),
) {
    let mut hangups = hangups();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick(), if polled => Trigger::Poll,
            Some(()) = next_hangup(&mut hangups) => Trigger::Signal,
        };
        if trigger == Trigger::Signal && !polled {
            on_idle_hangup();
            continue;
        }
        let r = reload.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || r(trigger)).await {
            tracing::error!(error = %e, "re-reading watched files failed");
        }
    }
}

fn hangups() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(
            |e| tracing::warn!(error = %e, "SIGHUP cannot be caught; watched files are still polled"),
        )
        .ok()
}

async fn next_hangup(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
