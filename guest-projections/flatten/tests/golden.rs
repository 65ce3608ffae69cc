//! Golden tests: every fixture in `guest-projections/fixtures/<event_type>.json`
//! projects to exactly the operations in `<event_type>.ops.json`.
//!
//! After an intended change of a flattening rule, regenerate the expected
//! files with `UPDATE_GOLDEN=1 cargo test -p projection-flatten --test golden`
//! and review the diff. Only the exact value `1` regenerates, never under CI
//! (`CI` set), and `scripts/test` fails if the fixtures differ from the
//! committed ones, so a run cannot rewrite what it checks. The golden files
//! are the code's own output; `seed_mapping.rs` checks the columns against
//! values written by hand from the seed's flattening tables.

use std::path::{Path, PathBuf};

use projection_flatten::{DOMAINS, Envelope, RowOp, domain};

fn fixtures() -> PathBuf {
    manifest_dir().join("../fixtures")
}

fn project_file(path: &Path) -> Result<Vec<RowOp>, projection_flatten::ProjectionError> {
    let text = std::fs::read_to_string(path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let data = v["data"].to_string();
    let env = Envelope {
        event_type: v["event_type"].as_str().unwrap(),
        event_id: v["event_id"].as_str().unwrap(),
        timestamp: v["timestamp"].as_str().unwrap(),
        entity_id: v["entity_id"].as_str().unwrap(),
        data: &data,
    };
    let topic = env.event_type.split('.').next().unwrap();
    let d = domain(topic).unwrap_or_else(|| panic!("no domain for {topic}"));
    (d.project)(&env)
}

#[test]
fn every_event_type_has_a_fixture_and_projects_to_its_golden_ops() {
    let update = match std::env::var("UPDATE_GOLDEN").as_deref() {
        Ok("1") => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "UPDATE_GOLDEN=1 is refused under CI: regenerate the golden files locally and commit them"
            );
            true
        }
        Ok("") | Err(_) => false,
        Ok(other) => {
            panic!("UPDATE_GOLDEN={other:?}: only UPDATE_GOLDEN=1 regenerates the golden files")
        }
    };
    let mut checked = 0;
    for d in DOMAINS {
        let info = (d.info)();
        for event_type in &info.handles {
            let fixture = fixtures().join(format!("{event_type}.json"));
            assert!(fixture.exists(), "missing fixture {}", fixture.display());
            let ops = project_file(&fixture).unwrap_or_else(|e| panic!("{event_type}: {e}"));
            assert!(!ops.is_empty(), "{event_type} produced no ops");
            for op in &ops {
                assert!(
                    info.allows(op),
                    "{event_type}: op outside what {} declares: {op:?}",
                    d.name
                );
            }
            let golden = fixtures().join(format!("{event_type}.ops.json"));
            if update {
                let mut text = serde_json::to_string_pretty(&ops).unwrap();
                text.push('\n');
                std::fs::write(&golden, text).unwrap();
            }
            let expected: Vec<RowOp> = serde_json::from_str(
                &std::fs::read_to_string(&golden)
                    .unwrap_or_else(|_| panic!("missing {}", golden.display())),
            )
            .unwrap();
            assert_eq!(
                ops,
                expected,
                "{event_type} differs from {}",
                golden.display()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 20);
}

// The checkout the tests run in (cargo sets CARGO_MANIFEST_DIR when it runs
// them), not the one they were compiled in: a shared target folder may hold
// a binary built from another clone of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
