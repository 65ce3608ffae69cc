//! Self-test fixtures shipped beside a component.
//!
//! A folder `<stem>.selftest/` beside `<stem>.wasm` may hold envelope files
//! (`*.json`). Each must project without error; where `<name>.ops.json` sits
//! beside `<name>.json`, the operations must equal it (the golden format of
//! `guest-projections/fixtures`). A reload refuses a component that fails them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::envelope_view;
use super::runtime::LoadedComponent;

/// `<stem>.selftest/` beside a component file, if it exists.
pub fn selftest_dir(file: &Path) -> Option<PathBuf> {
    let stem = file.file_stem()?.to_string_lossy().into_owned();
    let dir = file.with_file_name(format!("{stem}.selftest"));
    dir.is_dir().then_some(dir)
}

/// Projects every envelope of a self-test folder through `component`; each
/// must succeed and equal its `.ops.json` where one exists.
pub fn run_selftest(component: &LoadedComponent, dir: &Path) -> anyhow::Result<usize> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p.to_string_lossy().ends_with(".ops.json")
        })
        .collect();
    files.sort();
    for file in &files {
        let name = file.display();
        let bytes = std::fs::read(file).with_context(|| format!("self-test {name}"))?;
        let envelope: events::RawEnvelope = events::Envelope::from_slice(&bytes)
            .with_context(|| format!("self-test {name} is not an envelope"))?;
        let ops = envelope_view(&envelope, |env| component.session().project(env))
            .map_err(|e| anyhow::anyhow!("self-test {name} failed: {e}"))?;
        let golden = file.with_extension("ops.json");
        if golden.exists() {
            let expected: Vec<flatten::RowOp> = serde_json::from_slice(
                &std::fs::read(&golden)
                    .with_context(|| format!("self-test {}", golden.display()))?,
            )
            .with_context(|| {
                format!(
                    "self-test {} is not a list of row operations",
                    golden.display()
                )
            })?;
            if ops != expected {
                anyhow::bail!(
                    "self-test {name}: the operations differ from {}",
                    golden.display()
                );
            }
        }
    }
    Ok(files.len())
}
