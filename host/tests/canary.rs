//! Canaries against the real stack: a candidate component runs beside the
//! live one on the same events, and only one that agrees is promoted.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use projector_host::ops::canary::{self, Options, Report};
use projector_host::pipeline::Mode;
use projector_host::settings::Settings;
use tokio_util::sync::CancellationToken;

/// `n` user events (created and updated), a quarter of them with a display
/// name in lower case: the events user-next (names upper-cased) changes.
fn user_events(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let ty = if i % 2 == 0 {
                "user.created"
            } else {
                "user.updated"
            };
            let id = format!("{:024x}", 0x00c0_ffee_0000_u64 + (i / 2) as u64);
            let t = format!(
                "2026-03-01T{:02}:{:02}:{:02}.{:06}Z",
                i / 3600 % 24,
                i / 60 % 60,
                i % 60,
                i
            );
            let mut e = fixture(ty, &id, &t);
            e["data"]["id"] = id.clone().into();
            e["data"]["profile"]["display_name"] = if i % 4 == 1 {
                format!("Lower case name {i}")
            } else {
                format!("UPPER CASE NAME {i}")
            }
            .into();
            e
        })
        .collect()
}

fn options(promote_after: Option<u64>, max_events: Option<u64>, url: &str) -> Options {
    Options {
        promote_after,
        expect: Vec::new(),
        max_events,
        idle_timeout: Some(Duration::from_secs(20)),
        from_start: true,
        url: Some(url.to_owned()),
        examples: 10_000,
    }
}

async fn run(settings: &Settings, file: &std::path::Path, o: Options) -> Report {
    canary::run(settings, file, o, CancellationToken::new())
        .await
        .expect("the canary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canaries_agree_report_exactly_what_differs_and_only_agreeing_ones_are_promoted() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    // Promotion deploys into the components folder: a copy of it.
    let dir = components_copy();
    let mut settings = settings(&db, &topics, &group);
    settings.components.dir = dir.path().to_owned();
    let events = user_events(10_000);
    produce_all(&topics, &events).await;
    let host = RunningHost::start(settings.clone(), Mode::Wasm).await;
    let url = host.admin_url().await;
    wait_processed(&db.pool, events.len() as i64, Duration::from_secs(120)).await;
    let live_digest = digest_in_force(&host.shared, "user");

    // The events user-next changes, read from the events themselves.
    let affected: BTreeSet<String> = events
        .iter()
        .filter(|e| {
            let name = e["data"]["profile"]["display_name"].as_str().unwrap();
            name != name.to_uppercase()
        })
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(affected.len(), 2_500);

    // One changed rule: exactly the affected events differ, in display_name.
    let next = test_component("user-next");
    let r = run(&settings, &next, options(None, Some(10_000), &url)).await;
    eprintln!(
        "user-next canary: {} events, {} agreed, {} differences, {} errors, by column {:?}; first: {:?}",
        r.events,
        r.agreed,
        r.differences,
        r.errors,
        r.by_column,
        r.examples.first()
    );
    assert_eq!(r.events, 10_000);
    assert_eq!((r.differences, r.errors), (2_500, 0));
    assert_eq!(r.agreed, 7_500);
    let reported: BTreeSet<String> = r.examples.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(
        reported, affected,
        "the differing events are exactly the affected ones"
    );
    for e in &r.examples {
        assert_eq!(e.column.as_deref(), Some("display_name"));
        let (live, candidate) = (
            e.live["v"].as_str().unwrap(),
            e.candidate["v"].as_str().unwrap(),
        );
        assert_eq!(candidate, live.to_uppercase(), "{e:?}");
    }
    assert_eq!(
        r.by_column.into_iter().collect::<Vec<_>>(),
        vec![("users.display_name".to_owned(), 2_500)]
    );

    // Declared as expected, the same change agrees (and is counted apart).
    let mut o = options(None, Some(10_000), &url);
    o.expect = vec!["users.display_name".into()];
    let r = run(&settings, &next, o).await;
    assert_eq!(
        (r.agreed, r.expected_differences, r.differences),
        (7_500, 2_500, 0)
    );

    // The command line: exit 1 on differences, 0 when they are expected.
    let cli = |extra: &[&str]| {
        let mut args = vec![
            "canary",
            next.to_str().unwrap(),
            "--from-start",
            "--events",
            "200",
            "--json",
        ];
        args.extend_from_slice(extra);
        projector(&db.url, &topics, &group, dir.path(), &args)
    };
    let (ok, out) = cli(&[]);
    assert!(!ok, "differences exit 1: {out}");
    let json: serde_json::Value =
        serde_json::from_str(&out[..out.rfind('}').unwrap_or_else(|| panic!("{out}")) + 1])
            .unwrap();
    assert_eq!(json["events"], 200);
    assert!(json["differences"].as_u64().unwrap() > 0);
    assert_eq!(
        json["agreed"].as_u64().unwrap() + json["differences"].as_u64().unwrap(),
        200
    );
    let (ok, out) = cli(&["--expect", "display_name"]);
    assert!(ok, "expected differences exit 0: {out}");

    // On live traffic (the default): from the live host's positions, the
    // events produced while it runs.
    let mut o = options(None, Some(100), &url);
    o.from_start = false;
    let fresh = user_events(100);
    let (r, ()) = tokio::join!(run(&settings, &next, o), async {
        // Once the canary has taken its positions (it records `comparing`).
        wait_until(
            &db.pool,
            "SELECT COUNT(*) FROM projector_jobs WHERE kind = 'canary' AND state = 'comparing'",
            1,
            Duration::from_secs(60),
        )
        .await;
        produce_all(&topics, &fresh).await;
    });
    let fresh_ids: BTreeSet<String> = fresh
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!((r.events, r.differences, r.errors), (100, 25, 0));
    assert!(
        r.examples.iter().all(|e| fresh_ids.contains(&e.event_id)),
        "only the new events"
    );
    wait_processed(
        &db.pool,
        (events.len() + fresh.len()) as i64,
        Duration::from_secs(60),
    )
    .await;

    // Asked to promote, the changed rule is refused at its first difference.
    let r = run(&settings, &next, options(Some(10_000), None, &url)).await;
    assert_eq!(r.verdict, "refused");
    assert_eq!(r.differences, 1);
    assert!(r.promoted.is_none());
    assert_eq!(
        digest_in_force(&host.shared, "user"),
        live_digest,
        "the live component still serves"
    );

    // A candidate that traps on some events is never promoted.
    let mut poison = user_events(1);
    poison[0]["data"]["chaos"] = "panic".into();
    produce_all(&topics, &poison).await;
    let r = run(
        &settings,
        &test_component("chaos"),
        options(Some(20_000), None, &url),
    )
    .await;
    eprintln!(
        "chaos canary: {:?} after {} events: {:?}",
        r.verdict,
        r.events,
        r.examples.first()
    );
    assert_eq!(r.verdict, "refused");
    assert_eq!(r.errors, 1);
    assert_eq!(r.examples[0].kind, "error");
    assert_eq!(
        r.examples[0].event_id,
        poison[0]["event_id"].as_str().unwrap()
    );
    assert!(r.promoted.is_none());
    assert_eq!(
        digest_in_force(&host.shared, "user"),
        live_digest,
        "the live component still serves"
    );

    // The status page and the metrics show the last canary.
    let refused = "projector_job_state{domain=\"user\",kind=\"canary\",state=\"refused\"}";
    let m = wait_metric(&url, refused, 1.0).await;
    assert_eq!(
        m.get("projector_canary_events{domain=\"user\",result=\"error\"}"),
        Some(&1.0)
    );
    let (_, page) = http_get(&format!("{url}/")).await;
    assert!(
        page.contains("Rebuilds and canaries")
            && page.contains("chaos")
            && page.contains("refused"),
        "{page}"
    );

    // A candidate identical to the live component agrees on every one of
    // 10,000 events and is promoted.
    let same = dir.path().join("candidate.wasm.copy");
    std::fs::copy(dir.path().join("user.wasm"), &same).unwrap();
    let r = run(&settings, &same, options(Some(10_000), None, &url)).await;
    eprintln!(
        "identical canary: {} events, agreement {:.4}, verdict {}",
        r.events,
        r.agreement(),
        r.verdict
    );
    assert_eq!(r.verdict, "promoted");
    assert_eq!(
        (r.events, r.agreed, r.differences, r.errors),
        (10_000, 10_000, 0, 0)
    );
    assert!(
        r.promoted
            .as_deref()
            .is_some_and(|l| l.starts_with("user@"))
    );
    host.stop().await;
    db.drop_db().await;
}
