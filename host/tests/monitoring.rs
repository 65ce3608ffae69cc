//! The operator's kit against real tools: the shipped Prometheus rules
//! under `promtool`, and a real Prometheus server (Debian's) scraping a
//! running host, evaluating those rules and answering the Grafana
//! dashboard's queries.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use projector_host::pipeline::Mode;
use sqlx::Connection as _;

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: scripts/stack install-tools installs Debian's prometheus",
        path.display()
    );
    path
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    for args in [
        vec!["check", "rules", "projector-rules.yml"],
        vec!["test", "rules", "projector-rules.test.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(&args)
            .current_dir(deploy("prometheus"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "{text}");
    }
}

/// A Prometheus server on a free loopback port scraping `target` every
/// second with the shipped rules; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: projector\n    static_configs: [{{targets: [{target:?}]}}]\n",
                rules = deploy("prometheus/projector-rules.yml").display().to_string(),
            ),
        )
        .unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while http(&format!("{}/-/ready", prometheus.url)).await != Some(200) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus did not start: {}",
                std::fs::read_to_string(prometheus._dir.path().join("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prometheus
    }

    /// `GET /api/v1/<path>`: the `data` of a successful answer, or the error.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(body.to_string())
        }
    }

    /// The instant vector `expr` evaluates to.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let data = self
            .api("query", &[("query", expr)])
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `expr` has a sample whose value satisfies `ok`.
    async fn wait_value(&self, expr: &str, ok: impl Fn(f64) -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(expr).await;
            if result.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(&ok)
            }) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {expr} gave {result:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The alerts of `name` now (state `pending` or `firing`).
    async fn alerts(&self, name: &str) -> Vec<serde_json::Value> {
        let data = self.api("alerts", &[]).await.unwrap();
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect()
    }

    async fn wait_alert(&self, name: &str, state: Option<&str>) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let alerts = self.alerts(name).await;
            let seen = match state {
                Some(state) => alerts.iter().any(|a| a["state"] == state),
                None => alerts.is_empty(),
            };
            if seen {
                return alerts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never became {state:?}: {alerts:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

/// Every PromQL expression of the dashboard (panels and annotations), with
/// Grafana's variables replaced as Grafana would for job `job`.
fn dashboard_queries(job: &str) -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/projector.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        exprs.push(annotation["expr"].as_str().unwrap().to_owned());
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
        .into_iter()
        .map(|e| e.replace("$__rate_interval", "1m").replace("$job", job))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_host_evaluates_the_rules_and_answers_the_dashboard() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    let first = events(10);
    produce_all(&topics, &first).await;
    let mut s = settings(&db, &topics, &group);
    s.admin.lag_interval = Duration::from_millis(250);
    s.admin.lag_error_threshold = 10;
    let host = RunningHost::start(s, Mode::Wasm).await;
    wait_processed(&db.pool, first.len() as i64, Duration::from_secs(60)).await;
    let url = host.admin_url().await;
    let prometheus = Prometheus::start(url.trim_start_matches("http://")).await;

    // The host's series arrive, with what MySQL says was applied.
    prometheus
        .wait_value(r#"projector_ready{job="projector"}"#, |v| v == 1.0, "ready")
        .await;
    prometheus
        .wait_value(
            r#"sum(projector_events_total{job="projector",outcome="applied"})"#,
            |v| v == first.len() as f64,
            "applied events",
        )
        .await;
    assert!(
        prometheus
            .alerts("ProjectorDeadLettersGrowing")
            .await
            .is_empty()
    );

    // A malformed event: the dead-letter alert fires (it has no `for`).
    produce(
        &producer(),
        &topics.of("order.created"),
        "k",
        b"{\"event_type\": \"order.created\"",
    )
    .await;
    let firing = prometheus
        .wait_alert("ProjectorDeadLettersGrowing", Some("firing"))
        .await;
    assert_eq!(firing[0]["labels"]["error_class"], "invalid_envelope");
    assert_eq!(firing[0]["labels"]["topic"], topics.of("order.created"));

    // Every dashboard query parses and evaluates on the real server, has
    // data from this host, and names only metrics the host exports.
    prometheus
        .wait_value(
            r#"count_over_time(projector_ready{job="projector"}[1m])"#,
            |v| v >= 5.0,
            "five scrapes",
        )
        .await;
    let exported: BTreeSet<String> = prometheus
        .api("label/__name__/values", &[])
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for expr in dashboard_queries("projector") {
        let result = prometheus.query(&expr).await;
        if !expr.starts_with("ALERTS") {
            assert!(!result.is_empty(), "no data for {expr}");
        }
        for metric in metric_names(&expr) {
            assert!(
                exported.contains(&metric),
                "{expr} names {metric}, which the host does not export"
            );
        }
    }

    // Lag forced: the positions cannot move while another session holds
    // processed_events, so the lag passes the threshold and the ERR and
    // not-ready alerts go pending.
    let mut lock = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    sqlx::query("LOCK TABLES processed_events WRITE")
        .execute(&mut lock)
        .await
        .unwrap();
    // One entity's events share a partition: its lag alone passes 10.
    let user = object_id();
    let more: Vec<serde_json::Value> = (0..30)
        .map(|i| {
            let kind = if i == 0 {
                "user.created"
            } else {
                "user.updated"
            };
            fixture(kind, &user, &format!("2026-02-01T00:00:{i:02}Z"))
        })
        .collect();
    produce_all(&topics, &more).await;
    let pending = prometheus
        .wait_alert("ProjectorLagError", Some("pending"))
        .await;
    assert!(
        pending.iter().all(|a| a["labels"]["topic"]
            .as_str()
            .unwrap()
            .starts_with(&topics.prefix)),
        "{pending:?}"
    );
    prometheus
        .wait_alert("ProjectorNotReady", Some("pending"))
        .await;

    // Released: the host catches up and the alerts clear.
    sqlx::query("UNLOCK TABLES")
        .execute(&mut lock)
        .await
        .unwrap();
    drop(lock);
    wait_processed(
        &db.pool,
        (first.len() + more.len()) as i64,
        Duration::from_secs(60),
    )
    .await;
    prometheus.wait_alert("ProjectorLagError", None).await;
    prometheus.wait_alert("ProjectorNotReady", None).await;
    prometheus
        .wait_value(
            r#"sum(projector_events_total{job="projector",outcome="applied"})"#,
            |v| v == (first.len() + more.len()) as f64,
            "applied events after the lag",
        )
        .await;
    drop(prometheus);
    host.stop().await;
    db.drop_db().await;
}

/// Metric names in a PromQL expression: identifiers starting `projector_`
/// (label values and names cannot, here).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("projector_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}
