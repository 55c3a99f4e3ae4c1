//! Redis servers of a test's own (Debian's `redis-server`, no persistence): one on its own port
//! that a test may SIGKILL and restart, or a three-node Redis Cluster on loopback. The suite's
//! shared Redis (127.0.0.1:6379, started by scripts/brokers.sh) is never touched.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The suite's shared Redis, as a ledger URL; fails the test when nothing answers there.
pub fn shared_url() -> String {
    crate::harness::require("127.0.0.1:6379", "Redis");
    "redis://127.0.0.1:6379/0".into()
}

/// One `redis-server` process on its own loopback port.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server on a free port, answering PING.
    pub async fn start() -> RedisServer {
        Self::start_with(free_port_pair(), &[]).await
    }

    /// A server on a free port with more `redis-server` arguments (later ones win).
    pub async fn start_configured(extra: &[&str]) -> RedisServer {
        Self::start_with(free_port_pair(), extra).await
    }

    async fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        s.spawn().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log");
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--lazyfree-lazy-expire",
                "yes",
            ])
            .args(["--dir", &dir])
            .args(&self.extra)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server: {e}; scripts/brokers.sh start installs it")
            });
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while cli(self.port, &["ping"]).trim() != "PONG" {
            assert!(
                Instant::now() < until,
                "redis-server on {} did not answer PING: {}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `SIGNAME` (`STOP`, `CONT`, ...) to the server process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    /// SIGKILL: everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new, empty server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three cluster-enabled servers on loopback, joined with `redis-cli --cluster create`
/// (no replicas: each node serves a third of the slots).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ];
            nodes.push(RedisServer::start_with(free_port_pair(), &extra).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every node reports `cluster_state:ok` and knows all three masters.
    async fn wait_ok(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let all_ok = self.nodes.iter().all(|n| {
                let info = cli(n.port, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
            if all_ok {
                return;
            }
            assert!(
                Instant::now() < until,
                "the Redis Cluster did not become ok"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ledger URL: any node (the client discovers the others).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    /// Ledger pairs (set members under `prefix`) each node holds, in node order.
    pub fn members_per_node(&self, prefix: &str) -> Vec<usize> {
        self.nodes.iter().map(|n| members(n.port, prefix)).collect()
    }
}

/// `redis-cli -p PORT ARGS`: its stdout ("" when it cannot run or connect).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Keys whose name starts with `prefix` on the server at `port`.
pub fn keys(port: u16, prefix: &str) -> Vec<String> {
    cli(port, &["--scan", "--pattern", &format!("{prefix}*")])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Members of every set whose name starts with `prefix` on the server at `port`.
pub fn members(port: u16, prefix: &str) -> usize {
    keys(port, prefix)
        .iter()
        .map(|k| {
            cli(port, &["scard", k])
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum()
}

/// A free loopback port whose cluster bus port (+10000) is free too.
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = l.local_addr().expect("addr").port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for redis-server")
}
