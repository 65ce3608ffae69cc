//! The authoring loop as a new author runs it, through the `projector`
//! binary: `new` scaffolds a crate, `test` passes it in both builds (and fails
//! when a golden file disagrees), `check` loads the built component once the
//! host's settings grant its table.

mod common;

use std::path::Path;

use common::*;

fn projector(args: &[&str]) -> (bool, String) {
    run_projector(args, &[])
}

#[test]
fn a_scaffolded_component_builds_passes_its_fixtures_and_loads() {
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

    // A golden file that disagrees fails the loop.
    let golden = dir.join("fixtures/review.created.ops.json");
    let text = std::fs::read_to_string(&golden).unwrap();
    std::fs::write(&golden, text.replace("\"First\"", "\"Second\"")).unwrap();
    let (ok, out) = projector(&["test", dir.to_str().unwrap()]);
    assert!(!ok, "{out}");
}
