//! The authoring loop: `projector new` scaffolds a projection component
//! crate, `projector test` runs its fixtures through its native build (the
//! crate's own `cargo test`) and its WASM build (in this host's sandbox),
//! both against the same golden files.
//!
//! A scaffolded crate is a workspace of its own: `Cargo.toml` (a `cdylib`
//! for the component and an `rlib` for the native test), `src/lib.rs` (one
//! table, three event types), `fixtures/` (an envelope and its expected
//! operations per event type), `tests/fixtures.rs` and `.cargo/config.toml`
//! (a 128 KiB guest stack instead of Rust's 1 MiB).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::sandbox::Runtime;
use crate::sandbox::selftest::run_selftest;
use crate::settings::Settings;

/// Fills `{domain}`, `{table}`, `{crate}`, `{sdk}` in a template.
fn fill(template: &str, domain: &str, sdk: &Path) -> String {
    template
        .replace("{domain}", domain)
        .replace("{table}", &format!("{domain}s"))
        .replace("{crate}", &format!("{domain}-projection"))
        .replace("{sdk}", &sdk.display().to_string())
}

/// The scaffold's `.cargo/config.toml`: a small guest stack, as in
/// `guest-projections/.cargo/config.toml`.
const CARGO_CONFIG: &str = r#"# The component's stack, in its linear memory (Rust's default is 1 MiB, most
# of what the host resets after every event). 128 KiB holds the deepest JSON
# document serde_json parses; an overflow traps, and the event is
# dead-lettered.
[target.wasm32-wasip2]
rustflags = ["-C", "link-arg=-zstack-size=131072"]

[target.wasm32-wasip1]
rustflags = ["-C", "link-arg=-zstack-size=131072"]
"#;

const CARGO_TOML: &str = r#"[package]
name = "{crate}"
description = "The {domain} projection component."
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the component; rlib: the native test of the same code.
crate-type = ["cdylib", "rlib"]

[dependencies]
projection-sdk = { path = "{sdk}" }
# Without `std`: the component links no WASI (see projection-sdk).
serde_json = { version = "1", default-features = false, features = ["alloc"] }

[package.metadata.component]
package = "projector:{crate}"

# A workspace of its own, wherever it sits.
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#;

const LIB_RS: &str = r#"//! `{domain}.*` -> `{table}` (soft delete).
//!
//! The table and where each column comes from are declared in [`TABLE`];
//! the host creates the table when it first loads the component, and adds a
//! column you declare later (nullable) when it loads the new version.
//!
//! Build the component with `cargo build --release --target wasm32-wasip2`
//! (or `cargo component build --release`); test it with `projector test .`.
//!
//! On wasm32 the crate is `no_std` (`alloc` only): the component then
//! imports nothing and the host instantiates one core module per event.
//! `projection_sdk::prelude` brings what `std`'s prelude would.

#![cfg_attr(target_arch = "wasm32", no_std)]

use projection_sdk::flatten::SqlType::*;
use projection_sdk::flatten::doc::{Obj, normalize_timestamp};
use projection_sdk::flatten::table::{CREATED_AT, Table, UPDATED_AT, not_null, nullable};
use projection_sdk::flatten::{
    Domain, Envelope, Info, Keyed, ProjectionError, RowOp, Upsert, Value, col, make_info,
};
use projection_sdk::prelude::*;

/// The table this component writes: the one place its columns are defined.
pub const TABLE: Table = Table {
    name: "{table}",
    doc: "One row per {domain}; `{domain}.deleted` sets `deleted_at` (soft delete).",
    columns: &[
        not_null("{domain}_id", Varchar(64), "entity_id"),
        nullable("name", Varchar(255), "data.name"),
        nullable("deleted_at", Datetime, "data.deleted_at; {domain}.deleted sets the event time"),
        CREATED_AT,
        UPDATED_AT,
    ],
    primary_key: &["{domain}_id"],
    unique_keys: &[],
    indexes: &[&["created_at"]],
    parent: None,
};

const HANDLES: [&str; 3] = ["{domain}.created", "{domain}.updated", "{domain}.deleted"];

fn info() -> Info {
    let mut info = make_info("{domain}", &HANDLES, &[&TABLE]);
    info.version = env!("CARGO_PKG_VERSION").into();
    info
}

fn project(env: &Envelope<'_>) -> Result<Vec<RowOp>, ProjectionError> {
    let invalid = |m: String| ProjectionError::InvalidEvent(m);
    if env.entity_id.trim().is_empty() {
        return Err(invalid("entity_id is missing or empty".into()));
    }
    let at = normalize_timestamp(env.timestamp)
        .ok_or_else(|| invalid(format!("timestamp {:?} is not RFC 3339", env.timestamp)))?;
    let key = vec![col("{domain}_id", Value::Text(env.entity_id.to_owned()))];
    match env.event_type {
        "{domain}.created" | "{domain}.updated" => {
            let json: serde_json::Value = serde_json::from_str(env.data)
                .map_err(|e| invalid(format!("data is not valid JSON: {e}")))?;
            let data = Obj::root("data", &json)?;
            let updated_at = match data.timestamp("updated_at")? {
                Value::Null => Value::Timestamp(at),
                t => t,
            };
            Ok(vec![RowOp::Upsert(Upsert {
                table: TABLE.name.into(),
                key,
                values: vec![
                    col("name", data.text("name")?),
                    col("deleted_at", data.timestamp("deleted_at")?),
                    col("created_at", data.timestamp("created_at")?),
                    col("updated_at", updated_at),
                ],
            })])
        }
        "{domain}.deleted" => Ok(vec![RowOp::SoftDelete(Keyed {
            table: TABLE.name.into(),
            key,
        })]),
        other => Err(ProjectionError::Unsupported(format!(
            "the {domain} projection does not handle {other:?}"
        ))),
    }
}

pub const DOMAIN: Domain = Domain {
    name: "{domain}",
    info,
    project,
};

projection_sdk::component!(DOMAIN);
"#;

const TEST_RS: &str = r#"//! Every `fixtures/<name>.json` projects to exactly `fixtures/<name>.ops.json`
//! in the native build. `projector test .` runs the same files through the
//! WASM build in the host's sandbox.

use projection_sdk::flatten::{Envelope, RowOp};

#[test]
fn every_fixture_projects_to_its_golden_operations() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.ends_with(".ops.json") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let data = v["data"].to_string();
        let env = Envelope {
            event_type: v["event_type"].as_str().unwrap(),
            event_id: v["event_id"].as_str().unwrap(),
            timestamp: v["timestamp"].as_str().unwrap(),
            entity_id: v["entity_id"].as_str().unwrap(),
            data: &data,
        };
        let ops = ({crate_ident}::DOMAIN.project)(&env).unwrap_or_else(|e| panic!("{name}: {e}"));
        let golden = path.with_extension("ops.json");
        let expected: Vec<RowOp> =
            serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
        assert_eq!(ops, expected, "{name}");
        checked += 1;
    }
    assert!(checked > 0, "no fixtures in {}", dir.display());
}
"#;

/// The envelope fixtures of a scaffold and their expected operations.
fn fixtures(domain: &str) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    use serde_json::json;
    let id = "65a1f0c2e4b0a1b2c3d4e5f6";
    let key = json!([{"name": format!("{domain}_id"), "value": {"type": "text", "v": id}}]);
    let table = format!("{domain}s");
    let envelope = |event_type: &str, n: u32, data: serde_json::Value| {
        json!({
            "event_type": format!("{domain}.{event_type}"),
            "event_id": format!("0b5f6f0e-1c3a-4d1e-9a1b-00000000000{n}"),
            "timestamp": "2025-01-05T09:30:00.200000Z",
            "entity_id": id,
            "data": data,
        })
    };
    let upsert = |updated_at: &str| {
        json!([{"upsert": {
            "table": table,
            "key": key,
            "values": [
                {"name": "name", "value": {"type": "text", "v": "First"}},
                {"name": "deleted_at", "value": {"type": "null"}},
                {"name": "created_at", "value": {"type": "timestamp", "v": "2025-01-05T09:30:00.123456Z"}},
                {"name": "updated_at", "value": {"type": "timestamp", "v": updated_at}},
            ],
        }}])
    };
    vec![
        (
            format!("{domain}.created"),
            envelope(
                "created",
                1,
                json!({"id": id, "name": "First", "deleted_at": null,
                       "created_at": "2025-01-05T09:30:00.123456", "updated_at": "2025-01-05T09:30:00.123456"}),
            ),
            upsert("2025-01-05T09:30:00.123456Z"),
        ),
        (
            format!("{domain}.updated"),
            envelope(
                "updated",
                2,
                json!({"id": id, "name": "First", "deleted_at": null,
                       "created_at": "2025-01-05T09:30:00.123456"}),
            ),
            upsert("2025-01-05T09:30:00.200000Z"),
        ),
        (
            format!("{domain}.deleted"),
            envelope("deleted", 3, json!({format!("{domain}_id"): id})),
            json!([{"soft_delete": {"table": table, "key": key}}]),
        ),
    ]
}

/// `projector new <domain>`: writes the crate into `dir` (which must not
/// exist or be empty) and returns what it wrote.
pub fn scaffold(domain: &str, dir: &Path, sdk: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let valid = !domain.is_empty()
        && domain.len() <= 32
        && domain.starts_with(|c: char| c.is_ascii_lowercase())
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        bail!(
            "{domain:?} is not a domain name: lower-case letters, digits and _, starting with a letter, at most 32"
        );
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("the projection SDK at {}", sdk.display()))?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!("{} is not the projection-sdk crate", sdk.display());
    }
    let crate_ident = format!("{domain}_projection");
    let mut files = vec![
        (dir.join("Cargo.toml"), fill(CARGO_TOML, domain, &sdk)),
        (dir.join("src/lib.rs"), fill(LIB_RS, domain, &sdk)),
        (
            dir.join("tests/fixtures.rs"),
            TEST_RS.replace("{crate_ident}", &crate_ident),
        ),
        (dir.join(".gitignore"), "/target\n".to_owned()),
        (dir.join(".cargo/config.toml"), CARGO_CONFIG.to_owned()),
    ];
    for (name, envelope, ops) in fixtures(domain) {
        files.push((
            dir.join(format!("fixtures/{name}.json")),
            serde_json::to_string_pretty(&envelope)? + "\n",
        ));
        files.push((
            dir.join(format!("fixtures/{name}.ops.json")),
            serde_json::to_string_pretty(&ops)? + "\n",
        ));
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Runs `cargo ARGS` in `dir`, echoing what it runs.
fn cargo(dir: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    println!("$ cargo {} (in {})", args.join(" "), dir.display());
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .output()
        .context("cargo runs")?;
    if !out.status.success() {
        bail!(
            "cargo {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `projector test [DIR]`: the crate's native test, then its WASM build,
/// loaded as the host would (sandbox, contract, grants) with every fixture
/// of `DIR/fixtures` projected and compared with its golden file. Returns
/// the number of fixtures the WASM build passed.
pub fn test(settings: &Settings, dir: &Path) -> anyhow::Result<usize> {
    if !dir.join("Cargo.toml").is_file() {
        bail!(
            "{} has no Cargo.toml: give the component crate's folder",
            dir.display()
        );
    }
    let fixtures = dir.join("fixtures");
    if !fixtures.is_dir() {
        bail!("{} has no fixtures/ folder", dir.display());
    }
    cargo(dir, &["test", "--quiet"])?;
    println!("native: the fixtures match their golden files");
    let out = cargo(
        dir,
        &[
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format",
            "json",
        ],
    )?;
    let wasm = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .rfind(|f| f.extension().is_some_and(|x| x == "wasm"))
        .context("the build produced no .wasm component")?;
    let runtime = Runtime::from_settings(settings)?;
    let loaded = runtime
        .load_file(&wasm)
        .with_context(|| format!("{} refused", wasm.display()))?;
    if let Err(e) = settings.grants.check(&loaded.info) {
        println!(
            "note: a host with these settings would refuse it: {e} (grant its tables with [grants] in the host's settings)"
        );
    }
    let n = run_selftest(&loaded, &fixtures)?;
    println!(
        "wasm: {} ({}) projects all {n} fixtures to their golden files",
        loaded.label(),
        wasm.display()
    );
    Ok(n)
}
