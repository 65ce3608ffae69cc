//! Time of one `project()` call on the same fixture, natively and through
//! the sandboxed component (warm instance), in one run.
//!
//! scripts/build-projections && cargo run --release -p projector-host --example project_timing

use std::time::Instant;

use projector_host::sandbox::Runtime;
use projector_host::settings::SandboxLimits;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let runtime = Runtime::new(SandboxLimits::default())?;
    const N: u32 = 20_000;
    println!(
        "{:<22} {:>10} {:>12} {:>12} {:>7}",
        "fixture", "wasm bytes", "native µs", "wasm µs", "ratio"
    );
    for event_type in [
        "user.created",
        "supplier.created",
        "product.created",
        "order.created",
        "post.created",
    ] {
        let text = std::fs::read_to_string(
            root.join(format!("guest-projections/fixtures/{event_type}.json")),
        )?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let data = v["data"].to_string();
        let env = flatten::Envelope {
            event_type,
            event_id: v["event_id"].as_str().unwrap_or_default(),
            timestamp: v["timestamp"].as_str().unwrap_or_default(),
            entity_id: v["entity_id"].as_str().unwrap_or_default(),
            data: &data,
        };
        let domain = event_type.split('.').next().unwrap_or_default();
        let native = flatten::domain(domain).ok_or_else(|| anyhow::anyhow!("no domain"))?;
        let path = root.join(format!("build/projections/{domain}.wasm"));
        let component = runtime.load_file(&path)?;
        let mut session = component.session();
        // Warm both paths.
        for _ in 0..200 {
            let _ = (native.project)(&env);
            let _ = session.project(&env);
        }
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box((native.project)(std::hint::black_box(&env)).ok());
        }
        let native_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(session.project(std::hint::black_box(&env)).ok());
        }
        let wasm_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let bytes = std::fs::metadata(&path)?.len();
        println!(
            "{event_type:<22} {bytes:>10} {native_us:>12.2} {wasm_us:>12.2} {:>6.1}x",
            wasm_us / native_us
        );
    }
    Ok(())
}
