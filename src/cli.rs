//! Argument parsing and the six subcommands; anyhow lives here, at the edge.

use anyhow::{Context, Result, bail};
use c360_bridge::App;
use c360_bridge::config::{self, LogFormat};
use c360_bridge::delivery::dead_letter::DeadLetter;
use c360_bridge::delivery::routing;
use c360_bridge::ops::{asyncapi, dev, redrive, sample};
use c360_bridge::webhook::{keys, signature};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "c360-bridge",
    version,
    about = "catalog360 Outbound Webhooks → Kafka / RabbitMQ"
)]
struct Cli {
    /// Log format (overrides `log.format` in the config).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        #[arg(long, env = "C360_BRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration and print the routing table.
    Check {
        #[arg(long, env = "C360_BRIDGE_CONFIG")]
        config: PathBuf,
        /// Also connect to every sink and the Redis ledger (publishing nothing) and list missing
        /// Kafka topics.
        #[arg(long)]
        connect: bool,
    },
    /// Publish the dead letters of a configuration again where its (fixed) routes send them.
    Redrive {
        #[arg(long, env = "C360_BRIDGE_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        opts: redrive::Options,
    },
    /// Print an AsyncAPI 3.0 document of the topics and queues a configuration publishes to.
    Asyncapi {
        #[arg(long, env = "C360_BRIDGE_CONFIG")]
        config: PathBuf,
        /// yaml (default) or json.
        #[arg(long, value_enum, default_value_t)]
        format: asyncapi::Format,
    },
    /// Print the X-C360-Signature value of FILE (or stdin).
    Sign {
        #[arg(long)]
        key: String,
        file: Option<PathBuf>,
    },
    /// Sign and POST a batch (a sample with one event of every known class without FILE).
    Send {
        #[arg(long)]
        url: String,
        #[arg(long)]
        key: String,
        file: Option<PathBuf>,
    },
    /// Try it with nothing installed: an in-memory Kafka-protocol broker and a demo webhook.
    Dev {
        /// Where the demo webhook listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Threads of the async runtime (0 = one per core), as `server.worker_threads`.
        #[arg(long, default_value_t = 0)]
        worker_threads: usize,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(&config, cli.log_format),
        Command::Check { config, connect } => check(&config, connect),
        Command::Asyncapi { config, format } => print_asyncapi(&config, format),
        Command::Redrive { config, opts } => redrive(&config, &opts, cli.log_format),
        Command::Sign { key, file } => {
            read_input(file.as_deref()).map(|b| println!("{}", signature::sign(key.as_bytes(), &b)))
        }
        Command::Send { url, key, file } => send(&url, &key, file.as_deref()),
        Command::Dev {
            listen,
            worker_threads,
        } => {
            init_tracing(cli.log_format.unwrap_or_default(), None);
            dev::run(&listen, worker_threads).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info,lapin::returned_messages=error")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(file: &Path, log_format: Option<LogFormat>) -> Result<()> {
    let config = config::load(Some(file))?;
    init_tracing(
        log_format.unwrap_or(config.log.format),
        config.log.level.as_deref(),
    );
    let rt = c360_bridge::runtime(config.server.worker_threads)?;
    rt.block_on(async {
        let listen = config.server.listen.clone();
        let admin = config.server.admin_listen.clone();
        let app = Arc::new(App::build(config, Some(file))?);
        let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
        let admin = match admin {
            Some(a) => Some(tokio::net::TcpListener::bind(&a).await.with_context(|| format!("binding {a}"))?),
            None => None,
        };
        tracing::info!(listen = %listener.local_addr()?, webhooks = app.webhooks.len(), sinks = app.sinks.len(), "c360-bridge serving");
        c360_bridge::serve(app, listener, admin, shutdown_signal()).await?;
        Ok(())
    })
}

/// `redrive`: exit 0 once done (letters that still fail are reported and stay), 1 on a
/// configuration or connection error.
fn redrive(file: &Path, opts: &redrive::Options, log_format: Option<LogFormat>) -> Result<()> {
    let config = config::load(Some(file))?;
    init_tracing(log_format.unwrap_or(config.log.format), Some("warn"));
    let rt = c360_bridge::runtime(config.server.worker_threads)?;
    rt.block_on(redrive::run(config, opts))?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

fn check(file: &Path, connect: bool) -> Result<()> {
    let config = config::load(Some(file))?;
    let routes = routing::Routes::compile(&config, Some(file))?;
    let dead_letter = DeadLetter::compile(&config, Some(file))?;
    if let Some(tls) = &config.server.tls {
        c360_bridge::server::tls::Tls::load(tls)
            .with_context(|| format!("{}: server.tls", file.display()))?;
    }
    println!("{}: OK", file.display());
    print_server(&config.server);
    for wh in &config.webhooks {
        println!(
            "webhook {} on {} ({} key(s), test ping {})",
            wh.name,
            wh.path,
            wh.all_keys().count(),
            if wh.accept_test_ping {
                "accepted"
            } else {
                "refused"
            }
        );
        for (origin, n) in keys::sources(wh) {
            let reload = match origin {
                keys::Origin::File(_) => "re-read when it changes and on SIGHUP",
                _ => "fixed until restart",
            };
            println!("  keys from {origin}: {n} ({reload})");
        }
    }
    let webhook = config
        .webhooks
        .first()
        .map(|w| w.name.as_str())
        .unwrap_or("-");
    println!("{:<24} {:<10} {:<40} key", "event_class", "sink", "topic");
    for class in routing::KNOWN_EVENT_CLASSES {
        match routes.lookup(class) {
            Some(route) => {
                for t in &route.targets {
                    let topic =
                        t.topic
                            .render_parts(class, Some(sample::payload_class(class)), webhook);
                    let key = t.key.as_ref().map_or("-", |k| k.text.as_str());
                    println!("{class:<24} {:<10} {topic:<40} {key}", t.sink_name);
                }
            }
            None => println!("{class:<24} (dropped: no route, unrouted = \"drop\")"),
        }
    }
    print_dead_letter(dead_letter.as_ref());
    if connect {
        print_connect(&config, &routes)?;
    }
    Ok(())
}

/// `check --connect`: one line per sink and the ledger, with what answered or why nothing did,
/// and the missing Kafka topics; an error when any failed.
fn print_connect(config: &config::Config, routes: &routing::Routes) -> Result<()> {
    let mut failed = Vec::new();
    for r in c360_bridge::ops::connect::everything(config, routes) {
        match &r.outcome {
            Ok(what) => println!("{}: ok ({what})", r.name),
            Err(why) => {
                println!("{}: {why}", r.name);
                failed.push(r.name.clone());
            }
        }
        for topic in &r.missing {
            println!("  missing topic: {topic}");
        }
    }
    if !failed.is_empty() {
        bail!("could not connect to {}", failed.join(", "));
    }
    Ok(())
}

fn print_asyncapi(file: &Path, format: asyncapi::Format) -> Result<()> {
    let config = config::load(Some(file))?;
    let routes = routing::Routes::compile(&config, Some(file))?;
    let dead_letter = DeadLetter::compile(&config, Some(file))?;
    print!(
        "{}",
        asyncapi::render(&config, &routes, dead_letter.as_ref(), format)
    );
    Ok(())
}

fn print_dead_letter(dl: Option<&DeadLetter>) {
    match dl {
        Some(dl) => println!(
            "dead letter: sink {}, topic {}, max_bytes {} (illegal destinations, too large, invalid records)",
            dl.sink_name, dl.topic.text, dl.max_bytes
        ),
        None => {
            println!("dead letter: none (an illegal destination gets 400, a too large event 503)")
        }
    }
}

/// What faces the internet: the listener, HTTPS or not, deadlines and limits.
fn print_server(s: &config::ServerConfig) {
    let scheme = match &s.tls {
        Some(t) => format!("https (certificate {})", t.cert_file.display()),
        None => "http".to_owned(),
    };
    println!(
        "listen {} {scheme}; header_timeout {:?}, idle_timeout {:?}, max_connections {}, trusted_proxies {}",
        s.listen,
        s.header_timeout,
        s.idle_timeout,
        s.max_connections,
        s.trusted_proxies.len()
    );
}

fn read_input(file: Option<&Path>) -> Result<Vec<u8>> {
    match file {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display())),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}

fn send(url: &str, key: &str, file: Option<&Path>) -> Result<()> {
    let body = match file {
        Some(_) => read_input(file)?,
        None => sample::one_of_each(),
    };
    let sig = signature::sign(key.as_bytes(), &body);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header(signature::HEADER, sig)
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    })?;
    println!("{}\n{}", status.as_u16(), text);
    if !status.is_success() {
        bail!("the bridge answered {status}");
    }
    Ok(())
}
