//! A tansu broker of a test's own, on its own port: sqlite storage (survives SIGKILL) or
//! memory storage (a restart loses everything, producer state included).

use std::time::{Duration, Instant};

/// A tansu broker on its own port, which a test may kill and restart.
pub struct Tansu {
    pub addr: String,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    sqlite: bool,
    /// What tansu tells clients to connect to (a TLS front's address), when not its own.
    advertised: Option<String>,
    /// More `broker` arguments (`--authentication`).
    extra: Vec<String>,
}

impl Tansu {
    /// Storage in sqlite: what was acknowledged survives a SIGKILL.
    pub async fn start_sqlite() -> Tansu {
        Self::start(true).await
    }

    /// Storage in memory: a restart comes back empty, without any producer's state.
    pub async fn start_memory() -> Tansu {
        Self::start(false).await
    }

    /// Memory storage, telling clients to connect to `advertised` (`HOST:PORT`, e.g. a TLS front).
    pub async fn start_advertising(advertised: &str) -> Tansu {
        Self::start_with(false, Some(advertised.to_owned())).await
    }

    async fn start(sqlite: bool) -> Tansu {
        Self::start_with(sqlite, None).await
    }

    async fn start_with(sqlite: bool, advertised: Option<String>) -> Tansu {
        let port = crate::harness::free_port();
        let mut t = Tansu {
            addr: format!("127.0.0.1:{port}"),
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            sqlite,
            advertised,
            extra: Vec::new(),
        };
        t.spawn().await;
        t
    }

    async fn spawn(&mut self) {
        let bin = std::env::var("C360_TANSU_BIN").unwrap_or_else(|_| "tansu".into());
        let url = format!("tcp://{}", self.addr);
        let advertised = format!("tcp://{}", self.advertised.as_deref().unwrap_or(&self.addr));
        // tansu 0.6 reads sqlite://HOST/PATH as a path relative to its working directory.
        let db = if self.sqlite {
            "sqlite://tansu.db"
        } else {
            "memory://tansu/"
        };
        let child = std::process::Command::new(&bin)
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", db])
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(log_file(&self.dir))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu ({bin}): {e}; run scripts/brokers.sh start or set C360_TANSU_BIN"));
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < until,
                "tansu did not listen on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.sqlite {
            index_headers(self.dir.path().join("tansu.db")).await;
        }
    }

    /// Stops tansu and starts it again on the same port and storage with `args` added to the
    /// `broker` command (e.g. `--authentication`).
    pub async fn restart_with(&mut self, args: &[&str]) {
        self.kill9();
        self.extra = args.iter().map(|a| a.to_string()).collect();
        self.spawn().await;
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

/// Adds the index tansu 0.6.0's sqlite schema lacks for its per-record header lookup: without
/// it every fetched record scans all headers ever written (10 ms a record at 27k records), and a
/// consumer of a soak-sized topic gets nothing for minutes. Speed only; no data changes. Retried
/// until tansu has created its tables.
async fn index_headers(db: std::path::PathBuf) {
    const SCRIPT: &str = r#"
import sqlite3, sys, time
for _ in range(200):
    try:
        c = sqlite3.connect(sys.argv[1], timeout=30)
        c.execute("create index if not exists c360_header_record on header (topition, offset_id)")
        c.commit()
        sys.exit(0)
    except sqlite3.OperationalError as e:
        err = e
        time.sleep(0.05)
sys.exit(f"no header table in {sys.argv[1]}: {err}")
"#;
    let status = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&db)
        .status()
        .await
        .unwrap_or_else(|e| panic!("python3 (to index tansu's sqlite headers): {e}"));
    assert!(
        status.success(),
        "indexing tansu's headers in {db:?} failed"
    );
}

fn log_file(dir: &tempfile::TempDir) -> std::process::Stdio {
    let path = std::env::temp_dir().join(format!(
        "tansu-{}.log",
        dir.path().file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_or(std::process::Stdio::null(), Into::into)
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill9();
    }
}
