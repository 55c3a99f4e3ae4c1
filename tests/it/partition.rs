//! Silent network partitions on loopback: an nftables table of the test's own drops every
//! packet to and from one port (no RST, no FIN: what a cloud network blip looks like), until
//! the guard is dropped. Never a link taken down: traffic would follow the default route.

/// While it lives, TCP traffic to and from `127.0.0.1:port` is dropped without a trace.
pub struct Partition {
    table: String,
}

impl Partition {
    /// Cuts `port` off. Needs root and `nft` (scripts/test.sh installs nftables).
    pub fn cut(port: u16) -> Partition {
        let table = format!("c360_test_{}_{port}", std::process::id());
        nft(&["add", "table", "inet", &table]);
        let p = Partition { table };
        nft(&[
            "add",
            "chain",
            "inet",
            &p.table,
            "input",
            "{ type filter hook input priority 0; }",
        ]);
        for dir in ["dport", "sport"] {
            let rule = format!("ip daddr 127.0.0.1 tcp {dir} {port} drop");
            let mut args = vec!["add", "rule", "inet", &p.table, "input"];
            args.extend(rule.split(' '));
            nft(&args);
        }
        p
    }
}

impl Drop for Partition {
    /// Heals the partition (also when the test panicked).
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

fn nft(args: &[&str]) {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("nft (nftables) must be installed to cut a port: {e}"));
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
