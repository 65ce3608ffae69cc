//! The compiled projection components, run in the host's sandbox.
//!
//! Needs the components built by `scripts/build-projections` (scripts/test
//! does it); `PROJECTOR_COMPONENTS_DIR` points elsewhere if needed.

use std::path::PathBuf;
use std::time::Duration;

use flatten::{DOMAINS, Envelope, ProjectionError, RowOp};
use projector_host::sandbox::{GuestFailure, LoadError, Runtime};
use projector_host::settings::SandboxLimits;
use proptest::prelude::*;

fn repo() -> PathBuf {
    manifest_dir().join("..")
}

fn components_dir() -> PathBuf {
    std::env::var_os("PROJECTOR_COMPONENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/projections"))
}

fn component_path(name: &str) -> PathBuf {
    let path = components_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-projections first",
        path.display()
    );
    path
}

fn chaos_path() -> PathBuf {
    test_component_path("chaos")
}

fn test_component_path(name: &str) -> PathBuf {
    let path = components_dir().join(format!("../test-projections/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-projections first",
        path.display()
    );
    path
}

/// A runtime whose deadline no good event gets near, even on a loaded runner.
fn runtime() -> Runtime {
    runtime_with_deadline(Duration::from_secs(2))
}

fn runtime_with_deadline(call_deadline: Duration) -> Runtime {
    Runtime::new(SandboxLimits {
        call_deadline,
        memory_mb: 32,
        ..SandboxLimits::default()
    })
    .unwrap()
}

fn fixture(event_type: &str) -> (serde_json::Value, String) {
    let path = repo().join(format!("guest-projections/fixtures/{event_type}.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let data = v["data"].to_string();
    (v, data)
}

fn envelope<'a>(v: &'a serde_json::Value, data: &'a str) -> Envelope<'a> {
    Envelope {
        event_type: v["event_type"].as_str().unwrap(),
        event_id: v["event_id"].as_str().unwrap(),
        timestamp: v["timestamp"].as_str().unwrap(),
        entity_id: v["entity_id"].as_str().unwrap(),
        data,
    }
}

#[test]
fn every_component_describes_itself_like_its_native_twin() {
    let rt = runtime();
    for d in DOMAINS {
        let loaded = rt.load_file(&component_path(d.name)).unwrap();
        // The version is the component crate's own (its Cargo.toml).
        let manifest = std::fs::read_to_string(
            repo().join(format!("guest-projections/{}/Cargo.toml", d.name)),
        )
        .unwrap();
        assert!(
            manifest.contains(&format!("\nversion = \"{}\"\n", loaded.info.version)),
            "{}: {}",
            d.name,
            loaded.info.version
        );
        let mut native = (d.info)();
        native.version = loaded.info.version.clone();
        assert_eq!(loaded.info, native, "{}", d.name);
        assert_eq!(loaded.digest.len(), 64);
    }
}

#[test]
fn the_golden_fixtures_give_identical_ops_through_wasm_and_natively() {
    let rt = runtime();
    let mut checked = 0;
    for d in DOMAINS {
        let loaded = rt.load_file(&component_path(d.name)).unwrap();
        let mut session = loaded.session();
        for event_type in (d.info)().handles {
            let (v, data) = fixture(&event_type);
            let env = envelope(&v, &data);
            let through_wasm = session.project(&env).unwrap();
            let native = (d.project)(&env).unwrap();
            let golden: Vec<RowOp> = serde_json::from_str(
                &std::fs::read_to_string(
                    repo().join(format!("guest-projections/fixtures/{event_type}.ops.json")),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(through_wasm, native, "{event_type}");
            assert_eq!(through_wasm, golden, "{event_type}");
            checked += 1;
        }
    }
    // Every event type of the shared contract, and only those.
    assert_eq!(checked, events::EventType::ALL.len());
}

#[test]
fn events_past_the_guest_heap_arena_project_like_natively() {
    // A component's heap starts in a 256 KiB arena of its initial memory
    // and grows the memory past it: events below, around and far past the
    // arena (4 MiB, half the default output cap) give the native ops.
    let rt = runtime();
    let loaded = rt.load_file(&component_path("user")).unwrap();
    let (v, _) = fixture("user.created");
    for kib in [1, 200, 300, 1 << 10, 4 << 10] {
        let mut v = v.clone();
        v["data"]["profile"]["bio"] = serde_json::Value::String("é".repeat(kib << 9));
        let data = v["data"].to_string();
        let env = envelope(&v, &data);
        let through_wasm = loaded.session().project(&env).unwrap();
        assert_eq!(
            through_wasm,
            (flatten::USER.project)(&env).unwrap(),
            "{kib} KiB"
        );
    }
}

#[test]
fn documents_nested_to_the_parsers_limit_and_past_it_project_like_natively() {
    // A component's stack is small (its linear memory is reset after every
    // event, so every page counts): the deepest document the JSON parser
    // accepts must still parse, serialise (a JSON column) and drop inside
    // it, and a deeper one must be refused as it is natively, not trap.
    const PLACE: &str = "@nested@";
    let rt = runtime();
    let nested = |depth: usize| {
        let mut s = String::new();
        for i in 0..depth {
            s.push_str(if i % 2 == 0 { "{\"a\":" } else { "[" });
        }
        s.push('1');
        for i in (0..depth).rev() {
            s.push(if i % 2 == 0 { '}' } else { ']' });
        }
        s
    };
    for domain in DOMAINS {
        let loaded = rt.load_file(&component_path(domain.name)).unwrap();
        let (v, _) = fixture(&format!("{}.created", domain.name));
        for depth in [1, 64, 120, 126, 127, 128, 129, 200, 10_000] {
            // The document goes in as text: past serde_json's own limit it
            // cannot be a `Value` of this test either.
            let mut v = v.clone();
            v["data"]["nested"] = serde_json::Value::from(PLACE);
            if let Some(variants) = v["data"]["variants"].as_array_mut() {
                variants[0]["attributes"] = serde_json::Value::from(PLACE);
            }
            let data = v["data"]
                .to_string()
                .replace(&format!("\"{PLACE}\""), &nested(depth));
            let env = envelope(&v, &data);
            let native = (domain.project)(&env);
            let through_wasm = loaded.session().project(&env);
            match (&through_wasm, &native) {
                (Ok(wasm), Ok(native)) => assert_eq!(wasm, native, "{} depth {depth}", domain.name),
                (Err(GuestFailure::Rejected(wasm)), Err(native)) => {
                    assert_eq!(wasm, native, "{} depth {depth}", domain.name)
                }
                _ => panic!(
                    "{} depth {depth}: WASM gave {through_wasm:?}, natively {native:?}",
                    domain.name
                ),
            }
        }
    }
}

#[test]
fn errors_cross_the_boundary_with_their_kind() {
    let rt = runtime();
    let loaded = rt.load_file(&component_path("order")).unwrap();
    let mut session = loaded.session();
    let env = Envelope {
        event_type: "order.created",
        event_id: "e",
        timestamp: "2025-01-01T00:00:00Z",
        entity_id: "o1",
        data: r#"{"customer": 7}"#,
    };
    assert_eq!(
        session.project(&env),
        Err(GuestFailure::Rejected(ProjectionError::InvalidEvent(
            "data.customer: expected an object, found number".into()
        )))
    );
    let env = Envelope {
        event_type: "order.refunded",
        ..env
    };
    assert!(matches!(
        session.project(&env),
        Err(GuestFailure::Rejected(ProjectionError::Unsupported(_)))
    ));
}

#[test]
fn a_looping_guest_hits_the_deadline_and_the_next_call_gets_a_fresh_instance() {
    let rt = runtime_with_deadline(Duration::from_millis(100));
    let loaded = rt.load_file(&chaos_path()).unwrap();
    let mut session = loaded.session();
    let (v, _) = fixture("user.created");
    let looping = envelope(&v, r#"{"chaos": "loop"}"#);
    let err = session.project(&looping).unwrap_err();
    assert_eq!(
        err,
        GuestFailure::Trap("deadline exceeded (epoch interruption)".into())
    );
    assert_eq!(err.class(), "guest_trap");
    let (v, data) = fixture("user.created");
    assert!(
        session.project(&envelope(&v, &data)).is_ok(),
        "the session recovers after a trap"
    );
}

#[test]
fn a_hoarding_guest_hits_the_memory_cap() {
    let rt = runtime();
    let loaded = rt.load_file(&chaos_path()).unwrap();
    let mut session = loaded.session();
    let (v, _) = fixture("user.created");
    let err = session
        .project(&envelope(&v, r#"{"chaos": "alloc"}"#))
        .unwrap_err();
    assert!(
        matches!(&err, GuestFailure::Trap(m) if m.contains("memory")),
        "{err:?}"
    );
    let err = session
        .project(&envelope(&v, r#"{"chaos": "panic"}"#))
        .unwrap_err();
    assert!(matches!(err, GuestFailure::Trap(_)), "{err:?}");
    let (v, data) = fixture("user.created");
    assert!(session.project(&envelope(&v, &data)).is_ok());
}

/// Runs `f` on a thread of its own and fails the test if it has not
/// returned within `limit` (a guest that hangs the host's thread would
/// otherwise hang the test run).
fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the guest call did not return within {limit:?}"))
}

#[test]
fn sleeping_clock_reading_and_recursing_guests_trap_and_the_session_goes_on() {
    let loaded = std::sync::Arc::new(runtime().load_file(&chaos_path()).unwrap());
    for chaos in ["sleep", "clock", "recurse"] {
        let loaded = loaded.clone();
        let (err, recovered) = within(Duration::from_secs(20), move || {
            let mut session = loaded.session();
            let (v, data) = fixture("user.created");
            let err = session
                .project(&envelope(&v, &format!(r#"{{"chaos": "{chaos}"}}"#)))
                .unwrap_err();
            (err, session.project(&envelope(&v, &data)).is_ok())
        });
        // A trap, not an answer: the guest reached no clock and no poll.
        assert!(matches!(&err, GuestFailure::Trap(_)), "{chaos}: {err:?}");
        assert_eq!(err.class(), "guest_trap");
        assert!(recovered, "{chaos}: the next event projects");
    }
}

/// The display name the chaos component's "remember" answer carries: the
/// entity id of the event its instance saw before, if it saw one.
fn remembered(ops: &[RowOp]) -> String {
    match ops {
        [RowOp::Upsert(u)] => match &u.values[0].value {
            flatten::Value::Text(s) => s.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_guest_cannot_observe_an_earlier_event() {
    let rt = runtime();
    let loaded = rt.load_file(&chaos_path()).unwrap();
    let (v, _) = fixture("user.created");
    let mut first = v.clone();
    first["entity_id"] = "65a1f0c2e4b0a1b2c3d40001".into();
    let mut second = v.clone();
    second["entity_id"] = "65a1f0c2e4b0a1b2c3d40002".into();
    let data = r#"{"chaos": "remember"}"#;
    // The guest keeps the last entity id in a static: within one session
    // (as a batch calls it) and across sessions, it never sees one.
    let mut session = loaded.session();
    for e in [&first, &second, &first] {
        let ops = session.project(&envelope(e, data)).unwrap();
        assert_eq!(remembered(&ops), "nothing before");
    }
    let ops = loaded.session().project(&envelope(&second, data)).unwrap();
    assert_eq!(remembered(&ops), "nothing before");
}

#[test]
fn a_host_call_past_its_byte_cap_traps() {
    let (v, _) = fixture("user.created");
    let entropy = envelope(&v, r#"{"chaos": "entropy"}"#);
    // 32 MiB of random bytes in one call, against the default cap of 4 KiB.
    let err = runtime()
        .load_file(&chaos_path())
        .unwrap()
        .session()
        .project(&entropy)
        .unwrap_err();
    assert_eq!(err.class(), "guest_trap", "{err}");
    assert!(err.to_string().contains("exceeds limit 4096"), "{err}");
    // Under a cap it fits (and a memory it fits in) the guest gets them.
    let err = Runtime::new(SandboxLimits {
        max_host_call_bytes: 64 << 20,
        memory_mb: 256,
        call_deadline: Duration::from_secs(30),
        ..SandboxLimits::default()
    })
    .unwrap()
    .load_file(&chaos_path())
    .unwrap()
    .session()
    .project(&entropy)
    .unwrap_err();
    assert_eq!(
        err,
        GuestFailure::Rejected(ProjectionError::Internal(
            "the host handed over 33554432 random bytes".into()
        ))
    );
}

#[test]
fn an_answer_past_the_output_caps_is_refused() {
    let (v, _) = fixture("user.created");
    let flood = envelope(&v, r#"{"chaos": "flood"}"#);
    let flood_under = |limits: SandboxLimits| {
        Runtime::new(limits)
            .unwrap()
            .load_file(&chaos_path())
            .unwrap()
            .session()
            .project(&flood)
    };
    // 5000 rows against the default cap of 1000.
    let err = flood_under(SandboxLimits::default()).unwrap_err();
    assert_eq!(err.class(), "guest_output_too_large", "{err}");
    assert!(err.to_string().contains("5000 rows"), "{err}");
    // The same answer under a byte cap it does not fit.
    let err = flood_under(SandboxLimits {
        max_rows: 10_000,
        max_output_bytes: 4096,
        ..SandboxLimits::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("sandbox.max_output_bytes"),
        "{err}"
    );
    // And within generous caps it is an answer.
    let ops = flood_under(SandboxLimits {
        max_rows: 10_000,
        ..SandboxLimits::default()
    })
    .unwrap();
    assert_eq!(ops.len(), 5000);
}

#[test]
fn the_table_and_instance_caps_are_the_settings() {
    // A guest's function table has more than one element, and a guest
    // built with `std` (the chaos component) is several core instances (its
    // module, the WASI adapter, the shims that tie them): caps this low make
    // instantiation fail, the defaults do not.
    let (v, data) = fixture("user.created");
    let event = envelope(&v, &data);
    let one_element = SandboxLimits {
        max_table_elements: 1,
        ..SandboxLimits::default()
    };
    let one_instance = SandboxLimits {
        max_instances: 1,
        ..SandboxLimits::default()
    };
    for (name, limits, path) in [
        ("max_table_elements", one_element, component_path("user")),
        ("max_instances", one_instance, test_component_path("chaos")),
    ] {
        let rt = Runtime::new(limits).unwrap();
        let failed = match rt.load_file(&path) {
            // Refused at load when the component's declared minimum is
            // past the cap, or stopped when it instantiates or grows.
            Err(LoadError::Describe(_) | LoadError::Limits(_)) => true,
            Err(e) => panic!("{name}: {e}"),
            Ok(c) => c.session().project(&event).is_err(),
        };
        assert!(failed, "{name} = 1 stops the guest");
    }
    let rt = Runtime::new(SandboxLimits::default()).unwrap();
    let loaded = rt.load_file(&component_path("user")).unwrap();
    assert!(loaded.session().project(&event).is_ok());
}

#[test]
fn the_domain_components_are_one_core_instance_each() {
    // Built without `std` (projection-sdk), a domain component imports
    // nothing and is one core module: it runs with one core instance, so
    // every event instantiates one module instead of about seventeen.
    let rt = Runtime::new(SandboxLimits {
        max_instances: 1,
        ..SandboxLimits::default()
    })
    .unwrap();
    for domain in ["user", "supplier", "product", "order", "post"] {
        let (v, data) = fixture(&format!("{domain}.created"));
        let loaded = rt.load_file(&component_path(domain)).unwrap();
        let ops = loaded.session().project(&envelope(&v, &data));
        assert!(ops.is_ok(), "{domain}: {ops:?}");
    }
}

#[test]
fn garbage_and_core_modules_are_refused_with_a_reason() {
    let rt = runtime();
    let err = rt.load(b"not wasm at all", "garbage.wasm").unwrap_err();
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
    // A core module (no component wrapper).
    let err = rt.load(b"\0asm\x01\0\0\0", "core.wasm").unwrap_err();
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
    // A component that exports nothing.
    let err = rt
        .load(b"\0asm\x0d\0\x01\0", "empty-component.wasm")
        .unwrap_err();
    assert!(matches!(err, LoadError::Exports(_)), "{err}");
}

#[test]
fn a_component_whose_label_cannot_be_recorded_is_refused_at_load() {
    // Its version is 71 characters: `processed_events.component` could not
    // hold `user@<version>+<digest>`, so every event would be refused.
    let err = runtime()
        .load_file(&test_component_path("user-long-version"))
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Info(m) if m.contains("1 to 64 visible ASCII")),
        "{err}"
    );
}

fn arb_data() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("y".repeat(200_000))),
    ];
    let keys = prop_oneof![
        Just("contact_info"),
        Just("profile"),
        Just("variants"),
        Just("items"),
        Just("customer"),
        Just("stats"),
        Just("author"),
        Just("media"),
        Just("created_at"),
        Just("status"),
        Just("business_info"),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
    .prop_map(|v| v.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_traps_a_component_nor_leaves_its_tables(data in arb_data(), domain in 0usize..5, ty in 0usize..7) {
        thread_local! {
            static LOADED: Vec<projector_host::sandbox::LoadedComponent> = {
                let rt = Box::leak(Box::new(runtime()));
                DOMAINS.iter().map(|d| rt.load_file(&component_path(d.name)).unwrap()).collect()
            };
        }
        LOADED.with(|loaded| {
            let component = &loaded[domain];
            let handles = &component.info.handles;
            let env = Envelope { event_type: &handles[ty % handles.len()], event_id: "e", timestamp: "2025-01-01T00:00:00Z", entity_id: "x1", data: &data };
            match component.session().project(&env) {
                Ok(ops) => for op in &ops { prop_assert!(component.info.allows(op), "{op:?}"); },
                Err(GuestFailure::Rejected(_)) => {}
                Err(other) => prop_assert!(false, "{other}"),
            }
            Ok(())
        })?;
    }
}

// The checkout the tests run in (cargo sets CARGO_MANIFEST_DIR when it runs
// them), not the one they were compiled in: a shared target folder may hold
// a binary built from another clone of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

#[test]
fn a_compiled_component_is_kept_and_reused_and_a_damaged_one_is_compiled_again() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("compiled");
    let source = component_path("user");
    let (v, data) = fixture("user.created");
    let event = envelope(&v, &data);
    let cached_files = || {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    };

    // The first load compiles and keeps the result.
    let first = Runtime::new(SandboxLimits::default())
        .unwrap()
        .with_cache(&dir);
    let loaded = first.load_file(&source).unwrap();
    let expected = loaded.session().project(&event).unwrap();
    let files = cached_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&loaded.digest) && name.ends_with(".cwasm"),
        "{name}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only this user may write the cache");
    }

    // Another process (a new runtime) loads the kept file and projects the same.
    let again = Runtime::new(SandboxLimits::default())
        .unwrap()
        .with_cache(&dir);
    let reloaded = again.load_file(&source).unwrap();
    assert_eq!(reloaded.session().project(&event).unwrap(), expected);
    assert_eq!(cached_files(), files, "nothing compiled anew");

    // Other limits are another entry: the pooling allocator checked the
    // component against the limits it was compiled under.
    let other = Runtime::new(SandboxLimits {
        memory_mb: 32,
        ..SandboxLimits::default()
    })
    .unwrap()
    .with_cache(&dir);
    other.load_file(&source).unwrap();
    assert_eq!(cached_files().len(), 2);

    // A damaged file is not trusted: it is compiled again and replaced.
    std::fs::write(&files[0], b"not a compiled component").unwrap();
    let repaired = Runtime::new(SandboxLimits::default())
        .unwrap()
        .with_cache(&dir);
    let loaded = repaired.load_file(&source).unwrap();
    assert_eq!(loaded.session().project(&event).unwrap(), expected);
    assert!(
        std::fs::metadata(&files[0]).unwrap().len() > 1000,
        "replaced by a compiled component"
    );
}
