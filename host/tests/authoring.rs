//! The authoring loop as a new author runs it, through the `projector`
//! binary: `new` scaffolds a crate, `test` passes it in both builds (and fails
//! when a golden file disagrees), `check` loads the built component once the
//! host's settings grant its table, and `check --against` a database shows
//! the table its declaration creates; a host then creates it and projects.

mod common;

use std::path::Path;

use common::*;

fn projector(args: &[&str]) -> (bool, String) {
    run_projector(args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_component_builds_passes_its_fixtures_and_loads() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("review");
    let sdk = repo().join("guest-projections/sdk");
    let (ok, out) = projector(&[
        "new",
        "review",
        "--dir",
        dir.to_str().unwrap(),
        "--sdk",
        sdk.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        dir.join("fixtures/review.created.ops.json").is_file(),
        "{out}"
    );

    let (ok, out) = projector(&["test", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("projects all 3 fixtures"), "{out}");
    let wasm = out
        .split_once("wasm: review@0.1.0 (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(path, _)| path.to_owned())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(Path::new(&wasm).is_file(), "{wasm}");

    // The host loads it only where its table is granted.
    let (ok, out) = projector(&["check", &wasm]);
    assert!(!ok, "{out}");
    assert!(out.contains("outside its grant"), "{out}");
    let settings = scratch.path().join("projector.toml");
    std::fs::write(&settings, "[grants]\nreview = [\"reviews\"]\n").unwrap();
    let (ok, out) = projector(&["--config", settings.to_str().unwrap(), "check", &wasm]);
    assert!(ok, "{out}");
    assert!(out.contains("review@0.1.0"), "{out}");
    assert!(out.contains("writes reviews (5 columns)"), "{out}");

    // Against a database without its table: the plan creates it; a host
    // serving it creates it and projects the fixtures' events into it.
    let db = TestDb::new().await;
    let (ok, out) = projector(&[
        "--config",
        settings.to_str().unwrap(),
        "check",
        "--against",
        &db.url,
        &wasm,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("apply   reviews: create the table"), "{out}");
    assert!(out.contains("CREATE TABLE `reviews`"), "{out}");
    let components = scratch.path().join("components");
    std::fs::create_dir(&components).unwrap();
    std::fs::copy(&wasm, components.join("review.wasm")).unwrap();
    let topics = Topics::new();
    let mut s = common::settings(&db, &topics, &unique("g"));
    s.components.dir = components;
    s.topics = vec![topics.of("review.created")];
    s.grants.0.insert("review".into(), vec!["reviews".into()]);
    let host = RunningHost::start(s, projector_host::pipeline::Mode::Wasm).await;
    let envelope = std::fs::read_to_string(dir.join("fixtures/review.created.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    produce(
        &producer(),
        &topics.of("review.created"),
        v["entity_id"].as_str().unwrap(),
        envelope.as_bytes(),
    )
    .await;
    wait_processed(&db.pool, 1, std::time::Duration::from_secs(60)).await;
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM reviews WHERE review_id = ?")
        .bind(v["entity_id"].as_str().unwrap())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    host.stop().await;
    assert_eq!(name.as_deref(), v["data"]["name"].as_str());
    db.drop_db().await;

    // A golden file that disagrees fails the loop.
    let golden = dir.join("fixtures/review.created.ops.json");
    let text = std::fs::read_to_string(&golden).unwrap();
    std::fs::write(&golden, text.replace("\"First\"", "\"Second\"")).unwrap();
    let (ok, out) = projector(&["test", dir.to_str().unwrap()]);
    assert!(!ok, "{out}");
}
