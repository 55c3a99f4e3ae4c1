//! `c360-bridge redrive`: the dead letters of a configuration published again where its routes
//! send them now, through the daemon's own routing, ledger and publish code.
//!
//! Each letter keeps its `c360-event-id` and headers (the dead-letter ones dropped) and is
//! remembered in the ledger by its id, so a redrive run again publishes nothing twice. Only a
//! confirmed letter leaves the dead letter (Kafka: the commit passes it; RabbitMQ: it is acked).
//! A truncated letter is never published; one that still fails stays and is reported; redrive
//! never dead-letters again.

pub mod kafka;
pub mod letter;
pub mod rabbit;

use crate::app::App;
use crate::config::{Config, SinkConfig};
use crate::delivery::publish;
use letter::{Letter, Unfit};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What to redrive and how: the `redrive` command's options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// RabbitMQ dead letter: the queue bound to the dead-letter routing key.
    #[arg(long)]
    pub queue: Option<String>,
    /// Kafka dead letter: the consumer group that records what was redriven.
    #[arg(long, default_value = "c360-bridge-redrive")]
    pub group: String,
    /// Only letters from this time on: RFC 3339, or a duration ago ("2h").
    #[arg(long, value_parser = moment)]
    pub since: Option<SystemTime>,
    /// Only letters before this time: RFC 3339, or a duration ago.
    #[arg(long, value_parser = moment)]
    pub until: Option<SystemTime>,
    /// Letters per second at most.
    #[arg(long)]
    pub max_rate: Option<f64>,
    /// Letters taken at most.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Print where each letter would go; publish, commit and ack nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A time given as RFC 3339, or as a duration before now ("2h", "30m").
fn moment(text: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration"))?;
    Ok(SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub redriven: u64,
    pub truncated: u64,
    pub still_failing: u64,
    /// Outside `--since`/`--until`, or (with `--dry-run`) every letter that would be redriven.
    pub left: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redriven {}, truncated {}, still failing {}, left {}",
            self.redriven, self.truncated, self.still_failing, self.left
        )
    }
}

/// Why redrive could not run.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("no [dead_letter] in the configuration: nothing to redrive")]
    NoDeadLetter,
    #[error("dead_letter.topic {0:?} is a template: redrive reads one fixed topic")]
    Template(String),
    #[error("the dead letter goes to RabbitMQ: name the queue bound to it with --queue")]
    NoQueue,
    #[error("the dead-letter sink is of a kind redrive cannot read")]
    UnknownSource,
    #[error("cannot start: {0}")]
    Build(#[from] crate::app::BuildError),
    #[error("sinks not ready within {0:?}: {1}")]
    NotReady(Duration, String),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("RabbitMQ: {0}")]
    Rabbit(#[from] lapin::Error),
}

/// The letter's fate, as reported.
enum Fate {
    Redriven,
    Truncated,
    Failing(String),
    Left,
}

/// Redrives the dead letters of `config` (whose routes are the fixed ones).
pub async fn run(mut config: Config, opts: &Options) -> Result<Summary, RedriveError> {
    let dl = config
        .dead_letter
        .take()
        .ok_or(RedriveError::NoDeadLetter)?;
    let sink = config.sinks.get(&dl.sink).cloned();
    let app = Arc::new(App::build(config, None)?);
    let within = Duration::from_secs(20);
    c360_sinks::wait_ready(&app.sinks, within)
        .await
        .map_err(|waiting| RedriveError::NotReady(within, waiting))?;
    let mut progress = Progress::new();
    let summary = match sink {
        Some(SinkConfig::Kafka(k)) => {
            if dl.topic.contains('{') {
                return Err(RedriveError::Template(dl.topic));
            }
            let source = kafka::KafkaSource::open(&k, &dl.topic, &opts.group)?;
            drain(&app, source, opts, &mut progress).await?
        }
        Some(SinkConfig::Rabbitmq(r)) => {
            let queue = opts.queue.as_deref().ok_or(RedriveError::NoQueue)?;
            let source = rabbit::RabbitSource::open(&r.url, queue).await?;
            drain(&app, source, opts, &mut progress).await?
        }
        _ => return Err(RedriveError::UnknownSource),
    };
    progress.finish(&summary);
    app.finish().await;
    Ok(summary)
}

/// A dead-letter destination read back: letters one at a time, each then settled.
trait Source {
    type Position;
    async fn next_letter(&mut self) -> Result<Option<(Letter, Self::Position)>, RedriveError>;
    /// `redriven`: published again, so it may leave the dead letter; otherwise it stays.
    async fn settle(&mut self, pos: Self::Position, redriven: bool) -> Result<(), RedriveError>;
    /// Makes the settlements stick (Kafka: one commit, none on a dry run; RabbitMQ: requeue
    /// what stays).
    async fn finish(&mut self, dry_run: bool) -> Result<(), RedriveError>;
}

impl Source for kafka::KafkaSource {
    type Position = kafka::Position;
    async fn next_letter(&mut self) -> Result<Option<(Letter, Self::Position)>, RedriveError> {
        Ok(tokio::task::block_in_place(|| {
            kafka::KafkaSource::next_letter(self)
        })?)
    }
    async fn settle(&mut self, pos: Self::Position, redriven: bool) -> Result<(), RedriveError> {
        if !redriven {
            self.keep(pos);
        }
        Ok(())
    }
    async fn finish(&mut self, dry_run: bool) -> Result<(), RedriveError> {
        if !dry_run {
            tokio::task::block_in_place(|| self.commit())?;
        }
        Ok(())
    }
}

impl Source for rabbit::RabbitSource {
    type Position = rabbit::Position;
    async fn next_letter(&mut self) -> Result<Option<(Letter, Self::Position)>, RedriveError> {
        Ok(rabbit::RabbitSource::next_letter(self).await?)
    }
    async fn settle(&mut self, pos: Self::Position, redriven: bool) -> Result<(), RedriveError> {
        if redriven {
            self.done(pos).await?;
        } else {
            self.keep(pos);
        }
        Ok(())
    }
    async fn finish(&mut self, _dry_run: bool) -> Result<(), RedriveError> {
        Ok(rabbit::RabbitSource::finish(self).await?)
    }
}

/// Takes the letters of `source` (at most `--limit`, at most `--max-rate` a second) and
/// settles each by its fate.
async fn drain(
    app: &Arc<App>,
    mut source: impl Source,
    opts: &Options,
    progress: &mut Progress,
) -> Result<Summary, RedriveError> {
    let mut summary = Summary::default();
    let mut pace = Pace::new(opts.max_rate);
    while opts.limit.is_none_or(|l| progress.taken < l) {
        let Some((letter, pos)) = source.next_letter().await? else {
            break;
        };
        pace.wait().await;
        let fate = carry_out(app, &letter, opts, &mut summary, progress).await;
        source.settle(pos, matches!(fate, Fate::Redriven)).await?;
    }
    source.finish(opts.dry_run).await?;
    Ok(summary)
}

/// Decides and carries out one letter's fate, counting it.
async fn carry_out(
    app: &Arc<App>,
    letter: &Letter,
    opts: &Options,
    summary: &mut Summary,
    progress: &mut Progress,
) -> Fate {
    progress.taken += 1;
    let fate = fate(app, letter, opts).await;
    match &fate {
        Fate::Redriven => summary.redriven += 1,
        Fate::Left => summary.left += 1,
        Fate::Truncated => {
            summary.truncated += 1;
            progress.say(&format!("truncated, not redriven: {}", letter.id()));
        }
        Fate::Failing(why) => {
            summary.still_failing += 1;
            progress.say(&format!("still failing: {}: {why}", letter.id()));
        }
    }
    progress.show(summary);
    fate
}

async fn fate(app: &Arc<App>, letter: &Letter, opts: &Options) -> Fate {
    if !within(letter, opts) {
        return Fate::Left;
    }
    let jobs = match letter.jobs(app) {
        Ok(jobs) => jobs,
        Err(Unfit::Truncated) => return Fate::Truncated,
        Err(e) => return Fate::Failing(e.to_string()),
    };
    if opts.dry_run {
        for j in &jobs {
            let sink = app.sinks[j.sink].name();
            println!(
                "would redrive {} to {sink}: {}",
                letter.id(),
                j.msg.destination
            );
        }
        return Fate::Left;
    }
    let jobs = publish::unconfirmed(app, jobs).await;
    let Ok(permit) = app.in_flight.clone().acquire_owned().await else {
        return Fate::Failing("shutting down".into());
    };
    let deadline = tokio::time::Instant::now() + app.answer_deadline;
    match publish::publish(app, jobs, permit, deadline, None).await {
        Ok(()) => Fate::Redriven,
        Err(r) => Fate::Failing(r.to_string()),
    }
}

/// Whether the letter's time is inside `--since`/`--until` (a letter without a time is).
fn within(letter: &Letter, opts: &Options) -> bool {
    let time = letter.time.or_else(|| {
        let ce = letter
            .header("ce_time")
            .or_else(|| letter.header("ce-time"))?;
        humantime::parse_rfc3339_weak(ce).ok()
    });
    let Some(t) = time else {
        return true;
    };
    opts.since.is_none_or(|s| t >= s) && opts.until.is_none_or(|u| t < u)
}

/// At most `max_rate` letters a second.
struct Pace {
    every: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pace {
    fn new(max_rate: Option<f64>) -> Self {
        Self {
            every: max_rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self) {
        if let Some(every) = self.every {
            tokio::time::sleep_until(self.next).await;
            self.next = tokio::time::Instant::now() + every;
        }
    }
}

/// A progress line on a terminal (stderr), plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    taken: u64,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr()
            .is_terminal()
            .then(indicatif::ProgressBar::new_spinner);
        Self { bar, taken: 0 }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn show(&self, summary: &Summary) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} letters: {summary}", self.taken));
            bar.tick();
        }
    }

    fn finish(&self, summary: &Summary) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        println!("{summary}");
    }
}

#[cfg(test)]
mod tests {
    use super::{Letter, Options, Pace, within};
    use std::time::{Duration, SystemTime};

    fn letter(time: Option<SystemTime>, ce_time: Option<&str>) -> Letter {
        Letter {
            body: bytes::Bytes::new(),
            headers: ce_time
                .map(|t| ("ce-time".to_owned(), t.to_owned()))
                .into_iter()
                .collect(),
            time,
        }
    }

    #[test]
    fn since_and_until_take_the_broker_time_then_ce_time_and_let_an_undated_letter_through() {
        let at = |s: &str| humantime::parse_rfc3339(s).ok();
        let opts = Options {
            since: at("2026-12-04T10:00:00Z"),
            until: at("2026-12-04T11:00:00Z"),
            ..Options::default()
        };
        assert!(within(&letter(at("2026-12-04T10:00:00Z"), None), &opts));
        assert!(!within(&letter(at("2026-12-04T09:59:59Z"), None), &opts));
        assert!(
            !within(&letter(at("2026-12-04T11:00:00Z"), None), &opts),
            "until is exclusive"
        );
        assert!(within(
            &letter(None, Some("2026-12-04T10:30:00.123Z")),
            &opts
        ));
        assert!(!within(&letter(None, Some("2026-12-04T12:00:00Z")), &opts));
        assert!(within(&letter(None, None), &opts));
    }

    #[tokio::test(start_paused = true)]
    async fn max_rate_spaces_the_letters() {
        let mut pace = Pace::new(Some(4.0));
        let started = tokio::time::Instant::now();
        for _ in 0..5 {
            pace.wait().await;
        }
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "5 letters at 4/s"
        );
    }
}
