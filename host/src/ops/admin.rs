//! The admin HTTP server, on its own port (`admin.listen`, default
//! 127.0.0.1:9464):
//!
//! | route                     | what                                              |
//! |---------------------------|---------------------------------------------------|
//! | `GET /`                   | status page (HTML, refreshes itself every 2 s): charts of the last 15 minutes, components, lag, dead letters |
//! | `GET /health/live`        | 200 while the process serves                      |
//! | `GET /health/ready`       | 200 or 503, JSON with every check and the reasons |
//! | `GET /metrics`            | Prometheus text format                            |
//! | `GET /status.json`        | what the status page shows, as JSON               |
//! | `GET /dead-letters/{id}`  | one dead letter, read back from its topic         |
//! | `POST /projections/reload`| reload changed components now; 200, or 422 if any was refused |
//! | `POST /projections/deploy`| body: a component; validated, written into the folder and swapped in (200), or refused (422) |
//!
//! Mutating routes (`POST`) need `Authorization: Bearer <admin.token>`:
//! 401 without it or with another token (compared in constant time), 403
//! when no token is configured. A browser cannot send that header
//! cross-site without a CORS preflight this server never grants, so no form
//! on another site can trigger them. Everything the status page shows is
//! HTML-escaped (error texts echo payloads).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::chart::{self, Series, esc};
use super::lag::LagStatus;
use super::state::{Check, Shared};
use crate::sandbox::Reloader;

#[derive(Clone)]
pub struct Admin {
    pub shared: Arc<Shared>,
    pub reloader: Option<Arc<Reloader>>,
    /// SHA-256 of the admin token; none: mutating routes are refused.
    pub token: Option<[u8; 32]>,
    /// Where `GET /dead-letters/{id}` reads letters back from; none: it
    /// answers 404.
    pub settings: Option<Arc<crate::settings::Settings>>,
}

impl Admin {
    /// Keeps only the digest of `token`.
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// Whether `headers` carry the admin token; the error response if not.
    #[allow(clippy::result_large_err)]
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(want) = &self.token else {
            return Err((
                StatusCode::FORBIDDEN,
                Json(json!({"error": "no_admin_token", "message": "mutating routes are off: set admin.token or admin.token_file (PROJECTOR_ADMIN_TOKEN, PROJECTOR_ADMIN_TOKEN_FILE)"})),
            )
                .into_response());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(Admin::digest);
        // Digests of equal length, compared without an early exit.
        let same =
            given.is_some_and(|g| g.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
        if same {
            Ok(())
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "unauthorized", "message": "this route needs Authorization: Bearer <admin token>"})),
            )
                .into_response())
        }
    }
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/status.json", get(status))
        .route("/dead-letters/{id}", get(dead_letter))
        .route("/projections/reload", post(reload))
        .route(
            "/projections/deploy",
            post(deploy).layer(axum::extract::DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
        )
        .with_state(admin)
}

/// Only what monitoring reads: `/metrics` and `/health/*`.
pub fn read_only_router(admin: Admin) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

/// Binds `addr` and serves until the task is dropped; returns the bound
/// address (port 0 picks one).
pub async fn serve(
    addr: std::net::SocketAddr,
    admin: Admin,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let shared = admin.shared.clone();
    let (bound, task) = listen(addr, router(admin), "admin server").await?;
    let _ = shared.admin_addr.set(bound);
    tracing::info!(%bound, "admin server listening (/, /health/ready, /metrics)");
    Ok((bound, task))
}

/// Serves [`read_only_router`] on `addr` (`admin.metrics_listen`).
pub async fn serve_read_only(
    addr: std::net::SocketAddr,
    admin: Admin,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let shared = admin.shared.clone();
    let (bound, task) = listen(addr, read_only_router(admin), "metrics listener").await?;
    let _ = shared.metrics_addr.set(bound);
    tracing::info!(%bound, "metrics listener (/metrics, /health/*)");
    Ok((bound, task))
}

async fn listen(
    addr: std::net::SocketAddr,
    app: Router,
    what: &'static str,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{what} cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "{what} stopped");
        }
    });
    Ok((bound, task))
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

async fn ready(State(admin): State<Admin>) -> Response {
    let shared = &admin.shared;
    let reasons = shared.not_ready_reasons();
    let o = shared.observed();
    let body = json!({
        "status": if reasons.is_empty() { "ready" } else { "degraded" },
        "reasons": reasons,
        "checks": {
            "mysql": o.mysql,
            "kafka": o.kafka,
            "components": shared.components(),
            "lag": {"status": o.lag_status, "total": o.total_lag},
            "pipeline": {"retrying": o.retrying},
            "positions": {"log_gaps": o.log_gaps, "log_gap_offsets": o.log_gap_offsets},
        },
    });
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(admin): State<Admin>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.shared.metrics.render(),
    )
        .into_response()
}

async fn status(State(admin): State<Admin>) -> Json<serde_json::Value> {
    let shared = &admin.shared;
    Json(json!({
        "group": shared.group,
        "started_at": shared.started_at,
        "ready": shared.not_ready_reasons().is_empty(),
        "components": shared.components(),
        "observed": shared.observed(),
    }))
}

async fn reload(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Err(refused) = admin.authorize(&headers) {
        return refused;
    }
    let Some(reloader) = &admin.reloader else {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "not_reloadable", "message": "this host runs the native projections; there is nothing to reload"})),
        )
            .into_response();
    };
    let report = reloader.reload().await;
    let code = if report.refused.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (code, Json(report)).into_response()
}

/// The largest component `POST /projections/deploy` accepts.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// `POST /projections/deploy`: the body is a component; 200 with its label
/// once it is in force, 422 with the reason if it is refused (the old one
/// keeps serving).
async fn deploy(
    State(admin): State<Admin>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(refused) = admin.authorize(&headers) {
        return refused;
    }
    let Some(reloader) = &admin.reloader else {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "not_reloadable", "message": "this host runs the native projections; there is nothing to deploy to"})),
        )
            .into_response();
    };
    match reloader.deploy(body.to_vec()).await {
        Ok(label) => (StatusCode::OK, Json(json!({"loaded": label}))).into_response(),
        Err(reason) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "refused", "message": reason})),
        )
            .into_response(),
    }
}

/// The shadow rebuilds and canaries, as their rows report them.
fn jobs(jobs: &[super::jobs::Job]) -> String {
    let mut h = String::from("<h2>Rebuilds and canaries</h2>");
    if jobs.is_empty() {
        h.push_str("<p>none</p>");
        return h;
    }
    h.push_str("<table><tr><th>job</th><th>domain</th><th>state</th><th>progress</th><th>updated</th></tr>");
    for j in jobs {
        let d = &j.detail;
        let n = |k: &str| d.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
        let f = |k: &str| d.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        let s = |k: &str| {
            d.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let progress = match (j.kind.as_str(), j.state.as_str()) {
            ("rebuild", "swapped" | "rolled_back" | "dropped") if d.get("rename_ms").is_some() => {
                format!(
                    "{} rebuilt from {} events in {:.1} s; live paused {:.0} ms, RENAME TABLE {:.1} ms",
                    s("component"),
                    n("events"),
                    f("total_secs"),
                    f("live_paused_ms"),
                    f("rename_ms")
                )
            }
            ("rebuild", "failed") => format!("{}: {}", s("component"), s("error")),
            ("rebuild", _) => format!(
                "{} {} / {} events ({:.0} ev/s)",
                s("component"),
                n("done"),
                n("total"),
                f("events_per_sec")
            ),
            ("canary", _) => {
                let mut text = format!(
                    "{} beside {}: {} events, {:.2}% agreeing, {} differences, {} errors",
                    s("candidate"),
                    s("live"),
                    n("events"),
                    f("agreement") * 100.0,
                    n("differences"),
                    n("errors")
                );
                for e in d
                    .get("examples")
                    .and_then(|e| e.as_array())
                    .into_iter()
                    .flatten()
                {
                    let _ = write!(
                        text,
                        "<br>{} {} {} {}: live {} / candidate {}",
                        e["kind"].as_str().unwrap_or(""),
                        e["event_id"].as_str().unwrap_or(""),
                        e["op"].as_str().unwrap_or(""),
                        e["column"].as_str().unwrap_or(""),
                        e["live"],
                        e["candidate"]
                    );
                }
                text
            }
            _ => String::new(),
        };
        // Each part escaped; the example lines are joined by <br>.
        let progress = progress
            .split("<br>")
            .map(esc)
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{progress}</td><td>{}</td></tr>",
            esc(&j.kind),
            esc(&j.domain),
            esc(&j.state),
            esc(&j.updated_at)
        );
    }
    h.push_str("</table>");
    h
}

fn badge(status: LagStatus) -> String {
    let colour = match status {
        LagStatus::Ok => "#2e7d32",
        LagStatus::Warn => "#ef6c00",
        LagStatus::Stall => "#6a1b9a",
        LagStatus::Err => "#c62828",
    };
    format!(
        "<span class=b style=\"background:{colour}\">{}</span>",
        status.as_str()
    )
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;max-width:72em}\
     table{border-collapse:collapse;margin:.5em 0 1.5em}\
     td,th{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left;vertical-align:top}\
     td.n{text-align:right;font-variant-numeric:tabular-nums}\
     .b{color:#fff;padding:.1em .5em;border-radius:.3em;font-weight:600}\
     code,pre{font-size:12px}pre{background:#f6f6f6;padding:1em;overflow:auto}\
     .charts{display:flex;flex-wrap:wrap;gap:1.5em}.chart{margin:0}\
     figcaption{font-weight:600;margin-bottom:.3em}\
     .legend span{margin-right:1em;font-size:12px}\
     .legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}";

fn head(title: &str, refresh: bool) -> String {
    format!(
        "<!doctype html><html><head><meta charset=utf-8>{}<title>{}</title><style>{STYLE}</style></head><body>",
        if refresh {
            "<meta http-equiv=refresh content=2>"
        } else {
            ""
        },
        esc(title)
    )
}

/// The last [`HISTORY`](super::state::HISTORY) as two charts: events
/// applied per second per domain, and the total lag.
fn charts(o: &super::state::Observed) -> String {
    let now = chrono::Utc::now();
    let span = super::state::HISTORY;
    let domains: std::collections::BTreeSet<&String> =
        o.history.iter().flat_map(|s| s.rates.keys()).collect();
    let rates: Vec<Series<'_>> = domains
        .iter()
        .map(|d| Series {
            name: d.as_str(),
            points: o
                .history
                .iter()
                .map(|s| (s.at, s.rates.get(*d).copied().unwrap_or(0.0)))
                .collect(),
        })
        .collect();
    let lag = [Series {
        name: "total lag",
        points: o
            .history
            .iter()
            .map(|s| (s.at, s.total_lag as f64))
            .collect(),
    }];
    format!(
        "<div class=charts>{}{}</div>",
        chart::render("Events applied per second", "events/s", &rates, now, span),
        chart::render("Total lag", "events", &lag, now, span)
    )
}

async fn page(State(admin): State<Admin>) -> Html<String> {
    let shared = &admin.shared;
    let o = shared.observed();
    let reasons = shared.not_ready_reasons();
    let mut h = head("projector", true);
    let state = if reasons.is_empty() {
        "<span class=b style=\"background:#2e7d32\">READY</span>".to_owned()
    } else {
        "<span class=b style=\"background:#c62828\">DEGRADED</span>".to_owned()
    };
    let _ = write!(
        h,
        "<h1>projector {state}</h1><p>group <code>{}</code> · up since {} · lag {} {} · dead letters {}</p>",
        esc(&shared.group),
        shared.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        o.total_lag,
        badge(o.lag_status),
        o.dead_lettered
    );
    if o.log_gaps > 0 {
        let _ = write!(
            h,
            "<p><span class=b style=\"background:#c62828\">LOG GAPS</span> {} gaps, {} offsets deleted from the log before this database applied them (see recent errors)</p>",
            o.log_gaps, o.log_gap_offsets
        );
    }
    if !reasons.is_empty() {
        h.push_str("<ul>");
        for r in &reasons {
            let _ = write!(h, "<li>{}</li>", esc(r));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>The last 15 minutes</h2>");
    h.push_str(&charts(&o));
    h.push_str("<h2>Projections</h2><table><tr><th>domain</th><th>version</th><th>digest</th><th>events/s</th><th>applied</th><th>writes</th><th>granted</th></tr>");
    for c in shared.components() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code title=\"{}\">{}</code></td><td class=n>{:.1}</td><td class=n>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.domain),
            esc(&c.version),
            esc(&c.digest),
            esc(&c.digest[..c.digest.len().min(12)]),
            o.rates.get(&c.domain).copied().unwrap_or(0.0),
            o.applied.get(&c.domain).copied().unwrap_or(0),
            esc(&c.writes.join(", ")),
            esc(&c.granted.join(", "))
        );
    }
    h.push_str("</table><h2>Lag per partition</h2><table><tr><th>topic[partition]</th><th>next offset</th><th>log end</th><th>lag</th><th>status</th></tr>");
    for p in &o.partitions {
        let _ = write!(
            h,
            "<tr><td>{}[{}]</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>",
            esc(&p.topic),
            p.partition,
            p.next_offset,
            p.log_end_offset,
            p.lag,
            badge(p.status)
        );
    }
    h.push_str("</table><h2>Dead letters</h2>");
    let by_class = shared.metrics.dead_letters_by_class();
    if by_class.is_empty() {
        h.push_str("<p>none since start</p>");
    } else {
        h.push_str("<table><tr><th>class</th><th>since start</th><th>latest</th></tr>");
        for (class, n) in &by_class {
            let latest = o
                .recent_letters
                .iter()
                .rev()
                .filter(|l| &l.class == class)
                .take(5)
                .map(|l| {
                    format!(
                        "<a href=\"/dead-letters/{}\">{}</a>",
                        esc(&l.id),
                        esc(&l.source)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=n>{n}</td><td>{latest}</td></tr>",
                esc(class)
            );
        }
        h.push_str("</table><table><tr><th>at</th><th>letter</th><th>class</th><th>event</th><th>error</th></tr>");
        for l in o.recent_letters.iter().rev() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td><a href=\"/dead-letters/{}\">{}</a></td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                l.at.format("%H:%M:%S"),
                esc(&l.id),
                esc(&l.id),
                esc(&l.class),
                esc(&l.source),
                esc(&l.error)
            );
        }
        h.push_str("</table>");
    }
    h.push_str(&jobs(&o.jobs));
    let _ = write!(
        h,
        "<h2>Dependencies</h2><table><tr><td>MySQL</td><td>{}</td></tr><tr><td>Kafka</td><td>{}</td></tr></table>",
        check(&o.mysql),
        check(&o.kafka)
    );
    h.push_str("<h2>Recent errors</h2>");
    if o.recent_errors.is_empty() {
        h.push_str("<p>none</p>");
    } else {
        h.push_str("<table><tr><th>at</th><th>kind</th><th>message</th></tr>");
        for e in o.recent_errors.iter().rev() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                e.at.format("%H:%M:%S"),
                esc(&e.kind),
                esc(&e.message)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<p><a href=/metrics>/metrics</a> · <a href=/health/ready>/health/ready</a> · <a href=/status.json>/status.json</a></p></body></html>");
    Html(h)
}

/// `GET /dead-letters/{id}`: one dead letter read back from its topic,
/// its original parsed when it is JSON; 404 when the topic holds none there.
async fn dead_letter(
    State(admin): State<Admin>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Some(settings) = admin.settings.clone() else {
        return (
            StatusCode::NOT_FOUND,
            Html("dead letters are not readable here".to_owned()),
        )
            .into_response();
    };
    let wanted = id.clone();
    let read =
        tokio::task::spawn_blocking(move || crate::dlq::redrive::read_letter(&settings, &wanted))
            .await;
    let (code, body) = match read {
        Ok(Ok(Some(letter))) => {
            let text = serde_json::to_string_pretty(&letter.shown()).unwrap_or_default();
            (
                StatusCode::OK,
                format!(
                    "<h1>Dead letter <code>{}</code></h1><p>class {} · redrive with <code>projector dlq redrive {}</code></p><pre>{}</pre>",
                    esc(&id),
                    esc(letter.error_class()),
                    esc(&id),
                    esc(&text)
                ),
            )
        }
        Ok(Ok(None)) => (
            StatusCode::NOT_FOUND,
            format!(
                "<h1>No dead letter <code>{}</code></h1><p>retention may have deleted it</p>",
                esc(&id)
            ),
        ),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            format!(
                "<h1>Cannot read <code>{}</code></h1><p>{}</p>",
                esc(&id),
                esc(&format!("{e:#}"))
            ),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("<p>{}</p>", esc(&e.to_string())),
        ),
    };
    let mut h = head(&format!("dead letter {id}"), false);
    h.push_str(&body);
    h.push_str("<p><a href=/>status page</a></p></body></html>");
    (code, Html(h)).into_response()
}

fn check(c: &Check) -> String {
    if c.ok {
        "<span class=b style=\"background:#2e7d32\">up</span>".to_owned()
    } else {
        format!(
            "<span class=b style=\"background:#c62828\">down</span> <code>{}</code>",
            esc(c.error.as_deref().unwrap_or("not checked yet"))
        )
    }
}

/// Sends a component to a running host's `POST /projections/deploy`
/// (`url`, default `http://<admin.listen>`, with the settings' admin
/// token): `Ok(Ok(label))` once it is in force there, `Ok(Err(reason))` when
/// the host refused it, `Err` when the host cannot be reached or answered
/// something else.
pub async fn deploy_remote(
    settings: &crate::settings::Settings,
    bytes: Vec<u8>,
    url: Option<&str>,
) -> anyhow::Result<Result<String, String>> {
    use anyhow::Context as _;
    let token = settings
        .admin
        .token()?
        .context("no admin token: set admin.token or admin.token_file (PROJECTOR_ADMIN_TOKEN[_FILE]) to the host's")?;
    let url = url.map_or_else(
        || format!("http://{}", settings.admin.listen),
        |u| u.trim_end_matches('/').to_owned(),
    );
    let response = reqwest::Client::new()
        .post(format!("{url}/projections/deploy"))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("cannot reach the host at {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        Ok(Ok(body["loaded"].as_str().unwrap_or("?").to_owned()))
    } else if status.as_u16() == 422 {
        Ok(Err(body["message"].as_str().unwrap_or("?").to_owned()))
    } else {
        anyhow::bail!("the host at {url} answered {status}: {body}")
    }
}
