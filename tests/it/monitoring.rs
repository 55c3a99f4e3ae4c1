//! The shipped monitoring, checked with the tools that will read it: `/metrics` of a live bridge
//! (Kafka, RabbitMQ, HTTPS, admin listener) passes `promtool check metrics` with no output; the
//! alert rules pass `promtool check rules` and their unit tests `promtool test rules`; every
//! PromQL expression of the Grafana dashboard parses; every metric the dashboard and the alerts
//! name is in that `/metrics`; the dashboard type-checks against Grafana's `@grafana/schema`;
//! the Kubernetes PrometheusRule is rendered from the alerts; every runbook link resolves. A
//! missing tool fails the test (scripts/test.sh installs them: scripts/consumer-tools.sh).
//! And each check is shown to fail on a broken input.

use crate::facing::{self, Pki};
use crate::harness::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DASHBOARD: &str = "monitoring/grafana/c360-bridge.json";
const ALERTS: &str = "monitoring/prometheus/alerts.yml";
const ALERT_TESTS: &str = "monitoring/prometheus/alerts_test.yml";
/// Where the alerts' `runbook_url`s point.
const RUNBOOK: &str = "docs/operations.md";

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An executable named by the environment variable `var`; a missing one fails the test.
fn tool(var: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: {what} is needed (scripts/test.sh sets it; or eval \"$(scripts/consumer-tools.sh)\")")
    });
    assert!(
        path.exists(),
        "{var}={} does not exist: run scripts/consumer-tools.sh",
        path.display()
    );
    path
}

fn promtool() -> PathBuf {
    tool("C360_PROMTOOL", "promtool (scripts/promtool.sh)")
}

/// Runs `promtool ARGS` (with `stdin`): exit success, and stdout + stderr.
fn run_promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("promtool ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `promtool check rules` of a rule file given as text.
fn check_rules(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, text).expect("write rules");
    run_promtool(&["check", "rules", &file.display().to_string()], None)
}

/// Every `expr` of the dashboard's panels, with the panel's title.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((
                p["title"].as_str().unwrap_or("").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    out
}

/// What Grafana substitutes before a query reaches Prometheus.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

/// Every metric name (`c360_…`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("c360_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The alert rule file's `expr`s: every line from `expr:` to the next key of the rule.
fn alert_exprs(alerts: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in alerts.lines() {
        let t = line.trim_start();
        if t.starts_with("expr:") {
            inside = true;
        } else if inside && (t.starts_with("for:") || t.starts_with("labels:")) {
            inside = false;
        }
        if inside && !t.starts_with('#') {
            out.push_str(t);
            out.push('\n');
        }
    }
    out
}

/// The `(name, value)` of every sample line of an exposition text.
fn samples(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// A bridge on HTTPS with a Kafka and a RabbitMQ sink, the admin endpoints on plain HTTP, after
/// one accepted batch and one refused for a missing topic: its `/metrics` text.
async fn live_metrics() -> String {
    let _shared = SHARED_BROKERS.read().await;
    require(&kafka(), "Kafka (tansu)");
    let topic = unique("monitoring");
    create_topics(&kafka(), std::slice::from_ref(&topic), 1).await;
    let exchange = unique("x-monitoring");
    let queue = Queue::bind(&exchange, &["#"], lapin::types::FieldTable::default()).await;
    let pki = Pki::new("c360 monitoring CA");
    let certs = tempfile::tempdir().expect("tempdir");
    let tls = facing::install(certs.path(), &pki.leaf());
    let admin = format!("127.0.0.1:{}", free_port());
    let missing = unique("monitoring-missing");
    let config = format!(
        "[server]\nadmin_listen = \"{admin}\"\n{tls}\n{}{}{}\
         [[routes]]\nmatch = \"shipment_*\"\nsinks = [\"kafka\"]\ntopic = \"{missing}\"\n\
         [[routes]]\nmatch = \"*\"\nsinks = [\"kafka\", \"rabbit\"]\ntopic = \"{topic}\"\n",
        webhook_toml("shop", facing::KEY),
        kafka_sink_toml("kafka", &kafka()),
        rabbit_sink_toml("rabbit", &exchange),
    );
    let (_config_dir, path) = write_config(&config);
    let served = Served::start_unready(&path, &[]);
    let admin = format!("http://{admin}");
    wait_ready_at(&admin, Duration::from_secs(20)).await;
    let addr = served
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("listen address");
    let mut s = facing::connect(&pki, addr).await.expect("HTTPS");
    let ok = batch(&[event("task_created", &unique("m"))]);
    let (status, body) = facing::exchange(&mut s, "POST", "/hook", &ok).await;
    assert_eq!(status, 200, "{body}");
    let refused = batch(&[event("shipment_created", &unique("m"))]);
    let (status, body) = facing::exchange(&mut s, "POST", "/hook", &refused).await;
    assert_eq!(status, 503, "a topic the cluster lacks: {body}");
    assert_eq!(
        queue.drain().await.len(),
        1,
        "RabbitMQ got the accepted event"
    );
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    served.stop().await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_hold_every_metric_the_dashboard_and_alerts_use() {
    let text = live_metrics().await;
    let (ok, out) = run_promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics: {out}\n---\n{text}"
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(!line.ends_with(" summary"), "a summary: {line}");
    }

    let present = samples(&text);
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    let mut wanted: BTreeSet<(String, &str)> = BTreeSet::new();
    for (_, expr) in dashboard_exprs(&dashboard) {
        wanted.extend(metric_names(&expr).into_iter().map(|n| (n, DASHBOARD)));
    }
    wanted.extend(
        metric_names(&alert_exprs(&read(ALERTS)))
            .into_iter()
            .map(|n| (n, ALERTS)),
    );
    assert!(wanted.len() > 15, "{wanted:?}");
    let absent: Vec<_> = wanted
        .iter()
        .filter(|(n, _)| !present.contains(n))
        .collect();
    assert!(
        absent.is_empty(),
        "named by the monitoring files, not in /metrics: {absent:?}\n---\n{text}"
    );

    // At zero from start-up, with the configured labels.
    for line in [
        "c360_events_dead_lettered_total{reason=\"too_large\"} 0",
        "c360_sink_restarts_total{sink=\"kafka\",reason=\"fatal_error\"} 0",
        "c360_sink_restarts_total{sink=\"rabbit\",reason=\"connection_lost\"} 0",
        "c360_key_reloads_total{webhook=\"shop\",result=\"error\"} 0",
        "c360_config_reloads_total{result=\"error\"} 0",
        "c360_connections_refused_total{listener=\"admin\"} 0",
        "c360_ledger_errors_total{op=\"write\",reason=\"timeout\"} 0",
        "c360_requests_total{webhook=\"shop\",status=\"200\",reason=\"accepted\"} 1",
        "c360_requests_total{webhook=\"shop\",status=\"503\",reason=\"unknown_topic\"} 1",
        "c360_ack_timeout_seconds 20",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    let expiry = metric(&text, "c360_tls_cert_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 14.0 * 86400.0,
        "the test certificate's notAfter: {expiry}"
    );
    for edge in ["le=\"15\"", "le=\"18\"", "le=\"20\"", "le=\"40\""] {
        assert!(
            text.contains(&format!("c360_publish_seconds_bucket{{{edge}}}")),
            "bucket {edge} (around ack_timeout 20 s)"
        );
    }
}

#[test]
fn alert_rules_check_and_every_alert_is_unit_tested_firing_and_not() {
    let (ok, out) = run_promtool(
        &["check", "rules", &repo(ALERTS).display().to_string()],
        None,
    );
    assert!(ok, "promtool check rules: {out}");
    let (ok, out) = run_promtool(
        &["test", "rules", &repo(ALERT_TESTS).display().to_string()],
        None,
    );
    assert!(ok && out.contains("SUCCESS"), "promtool test rules: {out}");

    let alerts = read(ALERTS);
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 9, "{names:?}");
    for key in ["summary:", "description:", "runbook_url:"] {
        let n = alerts.lines().filter(|l| l.trim().starts_with(key)).count();
        assert_eq!(n, names.len(), "every alert has {key}");
    }
    // Which alerts a case expects firing, and which it expects silent.
    let tests = read(ALERT_TESTS);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.strip_prefix("alertname: ") {
            match lines.get(i + 1) {
                Some(&"exp_alerts: []") => silent.insert(name),
                _ => firing.insert(name),
            };
        }
    }
    for name in &names {
        assert!(firing.contains(name), "{name}: no case where it fires");
        assert!(
            silent.contains(name),
            "{name}: no case where it stays silent"
        );
    }
}

#[test]
fn every_dashboard_query_parses_as_promql() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (title, expr))| {
            let e = substituted(expr);
            assert!(!e.contains('$'), "{title}: a variable left in {e}");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": e })
        })
        .collect();
    // JSON is YAML: a rule file of one recording rule per query.
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let (ok, out) = check_rules(&file.to_string());
    assert!(ok, "dashboard queries: {out}");
}

#[test]
fn dashboard_has_the_panels_and_layout_the_spec_lists() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut rows = 0;
    for p in panels {
        let g = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(g[k].is_u64(), "{}: gridPos.{k}", p["title"]);
        }
        if p["type"] == "row" {
            rows += 1;
        } else {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    assert!(rows >= 4, "{rows} rows");
    let all: String = dashboard_exprs(&dashboard)
        .into_iter()
        .map(|(_, e)| e + "\n")
        .collect();
    for needle in [
        "by (status, reason)",
        "by (sink, destination)",
        "histogram_quantile(0.99",
        "c360_publish_seconds_bucket",
        "c360_batches_in_flight",
        "c360_events_dead_lettered_total",
        "c360_sink_restarts_total",
        "c360_ledger_errors_total",
        "c360_key_reloads_total",
        "c360_config_reloads_total",
        "c360_connections_refused_total",
    ] {
        assert!(all.contains(needle), "no query with {needle}");
    }
}

/// `tsc --noEmit` of `json` wrapped as `export const d = <json> satisfies Dashboard;`.
fn type_check(json: &str) -> (bool, String) {
    let modules = tool(
        "C360_GRAFANA_NODE_MODULES",
        "npm @grafana/schema and typescript (tests/grafana/package.json)",
    );
    let tsc = modules.join("typescript/bin/tsc");
    assert!(tsc.exists(), "{} missing", tsc.display());
    assert!(
        modules.join("@grafana/schema/package.json").exists(),
        "@grafana/schema missing in {}",
        modules.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(&modules, dir.path().join("node_modules")).expect("symlink");
    // `satisfies` on the line of the closing brace: a newline before it would end the statement.
    let ts = format!(
        "import type {{ Dashboard }} from '@grafana/schema';\nexport const d = {} satisfies Dashboard;\n",
        json.trim_end()
    );
    std::fs::write(dir.path().join("dashboard.ts"), ts).expect("write ts");
    let config = r#"{"compilerOptions": {"strict": true, "noEmit": true, "target": "es2022",
        "module": "esnext", "moduleResolution": "bundler", "skipLibCheck": true},
        "files": ["dashboard.ts"]}"#;
    std::fs::write(dir.path().join("tsconfig.json"), config).expect("write tsconfig");
    let out = Command::new("node")
        .arg(&tsc)
        .args(["-p", &dir.path().display().to_string()])
        .output()
        .expect("node runs (Debian's nodejs: scripts/consumer-tools.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn dashboard_type_checks_against_grafana_schema() {
    let (ok, out) = type_check(&read(DASHBOARD));
    assert!(ok, "tsc --noEmit of the dashboard as a Dashboard:\n{out}");
}

#[test]
fn prometheus_rule_is_rendered_from_the_alerts_and_every_runbook_link_resolves() {
    let out = Command::new("bash")
        .arg(repo("scripts/render-prometheus-rule.sh"))
        .arg("--check")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "deploy/kubernetes/components/monitoring/prometheusrule.yaml is not alerts.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // GitHub's anchors of the runbook page's headings.
    let anchors = crate::docs::anchors(&read(RUNBOOK));
    let alerts = read(ALERTS);
    for line in alerts.lines().filter(|l| l.contains("runbook_url:")) {
        let anchor = line
            .split(&format!("{RUNBOOK}#"))
            .nth(1)
            .unwrap_or_else(|| panic!("not an anchor of {RUNBOOK}: {line}"))
            .trim_end_matches('"');
        assert!(
            anchors.contains(anchor),
            "no heading of {RUNBOOK} for #{anchor}"
        );
    }
}

/// Each check above, fed something broken, fails: they are not vacuous.
#[test]
fn each_check_fails_on_a_broken_input() {
    let (ok, out) = run_promtool(
        &["check", "metrics"],
        Some("# TYPE c360_x counter\nc360_x 1\n"),
    );
    assert!(
        !ok && out.contains("no help text")
            && out.contains("counter metrics should have \"_total\" suffix"),
        "check metrics: {out}"
    );
    let broken = r#"{"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum(rate(c360_requests_total[5m])"}]}]}"#;
    let (ok, out) = check_rules(broken);
    assert!(!ok, "an unclosed parenthesis passed check rules: {out}");
    // A dashboard query with a variable Grafana would substitute but this test does not.
    let e = substituted("rate(c360_requests_total[$__unknown])");
    assert!(e.contains('$'));
    // A dashboard whose first panel lost gridPos.w.
    let mut dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    dashboard["panels"][1]["gridPos"]
        .as_object_mut()
        .expect("gridPos")
        .remove("w");
    let (ok, out) = type_check(&serde_json::to_string_pretty(&dashboard).unwrap());
    assert!(!ok && out.contains("'w'"), "tsc: {out}");
    // A metric the dashboard would name but the bridge does not export.
    let present = samples("# HELP c360_a_total a.\n# TYPE c360_a_total counter\nc360_a_total 1\n");
    assert!(present.contains("c360_a_total") && !present.contains("c360_b_total"));
}
