//! The Prometheus alerting rules and the Grafana dashboard shipped in
//! `systemd/monitoring/` (issue 15), checked with Prometheus's own `promtool` (Debian's
//! `prometheus` package) against a real controller's `/metrics`: the rules load and pass
//! their unit tests, every query of the dashboard parses, and every series either names
//! exists from the controller's first scrape, so no panel or alert starts as "no data".

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use metalbus_e2e::Controller;
use serde_json::Value;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/monitoring")
}

/// Runs promtool with `args` (and `stdin`); whether it succeeded, and its output.
fn promtool_run(args: &[&str], dir: &Path, stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian: apt-get install prometheus)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs promtool with `args`; its output, or a failure with it.
fn promtool(args: &[&str], dir: &Path, stdin: Option<&str>) -> String {
    let (ok, text) = promtool_run(args, dir, stdin);
    assert!(ok, "promtool {args:?} failed:\n{text}");
    text
}

/// The `metalbus_...` series a PromQL expression reads.
fn series_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("metalbus_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        found.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    found
}

/// Every PromQL expression of the dashboard, with `$job` made a plain regex.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["uid"], "metalbus-fleet");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$job", ".+");
            out.push((title.to_string(), expr));
        }
    }
    assert!(out.len() >= 16, "{} queries", out.len());
    out
}

/// Every `expr:` of the alerting rules.
fn rule_queries() -> Vec<String> {
    std::fs::read_to_string(monitoring().join("metalbus.rules.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_and_the_dashboard_hold_against_a_fresh_controller() {
    // The rules: they load, and their unit tests pass.
    let dir = monitoring();
    let checked = promtool(&["check", "rules", "metalbus.rules.yml"], &dir, None);
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    promtool(&["test", "rules", "metalbus.rules.test.yml"], &dir, None);

    // Every dashboard query parses: promtool checks them as recording rules.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries().iter().enumerate() {
        rules += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        );
    }
    std::fs::write(tmp.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], tmp.path(), None);

    // A fresh controller, before any node: its exposition passes promtool's lint, and
    // every series a panel or an alert reads is already there. promtool reads the
    // classic text format, where a counter's HELP names the `_total` sample; the
    // controller speaks OpenMetrics, where it names the family. That one complaint is
    // expected; any other fails.
    let ctl = Controller::start(tmp.path(), &[]).await;
    let text = ctl.api().get_text("/metrics").await.unwrap();
    let (_, lint) = promtool_run(&["check", "metrics"], tmp.path(), Some(&text));
    for line in lint.lines().filter(|l| !l.trim().is_empty()) {
        let family = line
            .strip_suffix(" no help text")
            .and_then(|name| name.strip_suffix("_total"));
        assert!(
            family.is_some_and(|f| text.contains(&format!("# HELP {f} "))),
            "promtool check metrics: {line}"
        );
    }
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let mut read = 0;
    for (title, expr) in dashboard_queries() {
        for series in series_in(&expr) {
            assert!(
                exported.contains(&series),
                "panel {title:?} reads {series}, which a fresh controller does not export"
            );
            read += 1;
        }
    }
    for expr in rule_queries() {
        for series in series_in(&expr) {
            assert!(
                exported.contains(&series),
                "an alert reads {series}, which a fresh controller does not export"
            );
            read += 1;
        }
    }
    assert!(read > 25, "{read} series read");
}
