//! The sandbox runtime: loads projection components and calls them under
//! limits. Every wasmtime detail of the host lives in this file.
//!
//! - One [`Engine`] and one [`Linker`] for the process; each component is
//!   compiled once into a [`ProjectionPre`] (an `InstancePre`), so making an
//!   instance is cheap.
//! - A [`Session`] owns a fresh [`Store`] with a memory cap and is meant to
//!   live for one batch; every call gets a deadline enforced by epoch
//!   interruption. A trap (deadline, memory cap, guest panic) poisons only
//!   that instance: the session drops it and instantiates again on the next
//!   call.
//! - The only host functions a guest can reach are `wasi:random/*`, with
//!   fixed seeds (Rust's `std` may seed a `HashMap` from them; fixed seeds
//!   keep a projection a pure function of its event). Every other import a
//!   component declares (a guest built with `std` imports clocks, poll,
//!   streams, stdio, environment, filesystem and sockets whether it uses
//!   them or not) is linked to a function that traps: a guest that sleeps,
//!   polls, reads a clock or writes to stderr stops at once with a trap
//!   instead of blocking the host's thread, which no epoch deadline could
//!   interrupt.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flatten::{Info, ProjectionError, RowOp};
use rand_wasi::SeedableRng as _;
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

mod bindings {
    wasmtime::component::bindgen!({
        world: "projection",
        path: "../wit",
    });
}

pub(super) use bindings::projector::projection::types as wit;
use bindings::{Projection, ProjectionPre};

use super::contract::{check_info, check_version, error_from_wit, info_from_wit, op_from_wit};
use crate::settings::SandboxLimits;

/// The WIT package and the major version this host implements.
pub const WIT_PACKAGE: &str = "projector:projection";
/// The contract version this host was built against.
pub const WIT_VERSION: &str = "1.0.0";

/// How often the epoch advances; deadlines are whole multiples of it.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why a component file is refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    #[error("imports something the sandbox does not provide: {0:#}")]
    Imports(wasmtime::Error),
    #[error("does not implement the {WIT_PACKAGE} world: {0:#}")]
    Exports(wasmtime::Error),
    #[error("built against {found}, this host implements {WIT_PACKAGE}@{WIT_VERSION}")]
    Version { found: String },
    #[error("describe() failed: {0}")]
    Describe(String),
    #[error("describe() is not acceptable: {0}")]
    Info(String),
}

/// Why one event could not be projected by a component.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuestFailure {
    /// The component answered with an error.
    #[error("{0}")]
    Rejected(ProjectionError),
    /// The instance trapped: deadline, memory cap or a guest panic.
    #[error("component trapped: {0}")]
    Trap(String),
    /// A new instance could not be created.
    #[error("component could not be instantiated: {0}")]
    Instantiate(String),
    /// The answer is past the output caps (`sandbox.max_rows`,
    /// `sandbox.max_output_bytes`).
    #[error("component answered too much: {0}")]
    Output(String),
}

impl GuestFailure {
    /// A short class for metrics and dead letters.
    pub fn class(&self) -> &'static str {
        match self {
            GuestFailure::Rejected(ProjectionError::InvalidEvent(_)) => "invalid_event",
            GuestFailure::Rejected(ProjectionError::Unsupported(_)) => "unsupported",
            GuestFailure::Rejected(ProjectionError::Internal(_)) => "guest_error",
            GuestFailure::Trap(_) => "guest_trap",
            GuestFailure::Output(_) => "guest_output_too_large",
            GuestFailure::Instantiate(_) => "guest_instantiate",
        }
    }
}

/// Per-store state: the WASI context (only its fixed-seed randomness is
/// reachable) and the limits.
pub struct GuestState {
    wasi: WasiCtx,
    limits: StoreLimits,
}

/// Links `wasi:random/*` (fixed seeds, from the store's `WasiCtx`) and
/// nothing else.
fn link_random(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::random;
    use wasmtime_wasi::random::WasiRandom;
    random::random::add_to_linker::<GuestState, WasiRandom>(linker, |s| s.wasi.random())?;
    random::insecure::add_to_linker::<GuestState, WasiRandom>(linker, |s| s.wasi.random())?;
    random::insecure_seed::add_to_linker::<GuestState, WasiRandom>(linker, |s| s.wasi.random())?;
    Ok(())
}

/// The process-wide engine and linker.
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    limits: SandboxLimits,
    _ticker: Arc<()>,
}

impl Runtime {
    pub fn new(limits: SandboxLimits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("failed to create the wasmtime engine: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        link_random(&mut linker).map_err(|e| anyhow::anyhow!("failed to link WASI: {e:#}"))?;

        // The epoch ticker stops when the runtime is dropped (the weak
        // reference can no longer be upgraded).
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while weak.upgrade().is_some() {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .context("failed to start the epoch thread")?;

        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            limits,
            _ticker: alive,
        })
    }

    pub fn limits(&self) -> SandboxLimits {
        self.limits
    }

    /// Compiles and validates a component file.
    pub fn load_file(&self, path: &Path) -> Result<LoadedComponent, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes, &path.display().to_string())
    }

    /// Compiles and validates a component: it must be a component, import
    /// nothing the sandbox lacks, export the projection world of a compatible
    /// version, and answer `describe()` sensibly.
    pub fn load(&self, bytes: &[u8], source: &str) -> Result<LoadedComponent, LoadError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        check_version(&component, &self.engine)?;
        // Whatever else the component imports traps when called.
        let mut linker = (*self.linker).clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(LoadError::Imports)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(LoadError::Imports)?;
        let pre = ProjectionPre::new(instance_pre).map_err(LoadError::Exports)?;
        let mut loaded = LoadedComponent {
            info: Info {
                domain: String::new(),
                version: String::new(),
                handles: vec![],
                writes: vec![],
            },
            digest,
            source: source.to_owned(),
            pre,
            engine: self.engine.clone(),
            limits: self.limits,
        };
        let info = loaded
            .session()
            .describe()
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        check_info(&info).map_err(LoadError::Info)?;
        loaded.info = info;
        Ok(loaded)
    }
}

/// A compiled, validated component, ready to instantiate.
pub struct LoadedComponent {
    /// What the component declared.
    pub info: Info,
    /// SHA-256 of the component bytes, hex.
    pub digest: String,
    /// Where it was loaded from.
    pub source: String,
    pre: ProjectionPre<GuestState>,
    engine: Engine,
    limits: SandboxLimits,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("domain", &self.info.domain)
            .field("version", &self.info.version)
            .field("digest", &self.digest)
            .field("source", &self.source)
            .finish()
    }
}

impl LoadedComponent {
    /// A session: instances made on demand in a fresh store.
    pub fn session(&self) -> Session<'_> {
        Session {
            component: self,
            live: None,
        }
    }

    /// `domain@version` for logs and bookkeeping.
    pub fn label(&self) -> String {
        format!("{}@{}", self.info.domain, self.info.version)
    }

    fn new_store(&self) -> Store<GuestState> {
        // Only its randomness is linked (see the module's header).
        let wasi = WasiCtxBuilder::new()
            .secure_random(rand_wasi::rngs::StdRng::seed_from_u64(0))
            .insecure_random(rand_wasi::rngs::StdRng::seed_from_u64(0))
            .insecure_random_seed(0)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes())
            .instances(self.limits.max_instances)
            .tables(self.limits.max_tables)
            .memories(self.limits.max_memories)
            .table_elements(self.limits.max_table_elements)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, GuestState { wasi, limits });
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store
    }
}

/// Instances of one component for the duration of a batch.
pub struct Session<'c> {
    component: &'c LoadedComponent,
    live: Option<(Store<GuestState>, Projection)>,
}

impl Session<'_> {
    fn instance(&mut self) -> Result<&mut (Store<GuestState>, Projection), GuestFailure> {
        if self.live.is_none() {
            let mut store = self.component.new_store();
            store.set_epoch_deadline(self.ticks());
            let instance = self
                .component
                .pre
                .instantiate(&mut store)
                .map_err(|e| GuestFailure::Instantiate(format!("{e:#}")))?;
            self.live = Some((store, instance));
        }
        // Just filled in above.
        Ok(self.live.as_mut().expect("instance present"))
    }

    fn ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        (self.component.limits.call_deadline.as_micros() / tick).max(1) as u64 + 1
    }

    /// Runs `f` against the instance under a fresh deadline; a trap discards
    /// the instance so the next call starts clean.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<GuestState>, &Projection) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFailure> {
        let ticks = self.ticks();
        let (store, instance) = self.instance()?;
        store.set_epoch_deadline(ticks);
        match f(store, instance) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.live = None;
                Err(GuestFailure::Trap(describe_trap(&e)))
            }
        }
    }

    /// `describe()`.
    pub fn describe(&mut self) -> Result<Info, GuestFailure> {
        self.call(|store, p| p.call_describe(store))
            .map(info_from_wit)
    }

    /// `project(envelope)`.
    pub fn project(&mut self, env: &flatten::Envelope<'_>) -> Result<Vec<RowOp>, GuestFailure> {
        let envelope = wit::Envelope {
            event_type: env.event_type.to_owned(),
            event_id: env.event_id.to_owned(),
            timestamp: env.timestamp.to_owned(),
            entity_id: env.entity_id.to_owned(),
            data: env.data.to_owned(),
        };
        match self.call(|store, p| p.call_project(store, &envelope))? {
            Ok(ops) => {
                let ops: Vec<RowOp> = ops.into_iter().map(op_from_wit).collect();
                check_output(&ops, &self.component.limits)?;
                Ok(ops)
            }
            Err(e) => Err(GuestFailure::Rejected(error_from_wit(e))),
        }
    }
}

/// Refuses an answer past `sandbox.max_rows` or `sandbox.max_output_bytes`:
/// one event must not turn into an unbounded amount of database work.
fn check_output(ops: &[RowOp], limits: &SandboxLimits) -> Result<(), GuestFailure> {
    fn value_bytes(v: &flatten::Value) -> usize {
        match v {
            flatten::Value::Text(s) | flatten::Value::Timestamp(s) | flatten::Value::Json(s) => {
                s.len()
            }
            _ => 8,
        }
    }
    fn cols_bytes(cols: &[flatten::Column]) -> usize {
        cols.iter()
            .map(|c| c.name.len() + value_bytes(&c.value))
            .sum()
    }
    let (mut rows, mut bytes) = (0usize, 0usize);
    for op in ops {
        bytes += op.table().len();
        match op {
            RowOp::Upsert(u) | RowOp::Update(u) => {
                rows += 1;
                bytes += cols_bytes(&u.key) + cols_bytes(&u.values);
            }
            RowOp::Replace(r) => {
                rows += r.rows.len().max(1);
                bytes +=
                    cols_bytes(&r.parent) + r.rows.iter().map(|c| cols_bytes(c)).sum::<usize>();
            }
            RowOp::SoftDelete(k) | RowOp::Delete(k) => {
                rows += 1;
                bytes += cols_bytes(&k.key);
            }
        }
    }
    if rows > limits.max_rows {
        return Err(GuestFailure::Output(format!(
            "{rows} rows in one answer, more than sandbox.max_rows ({})",
            limits.max_rows
        )));
    }
    if bytes > limits.max_output_bytes {
        return Err(GuestFailure::Output(format!(
            "{bytes} bytes in one answer, more than sandbox.max_output_bytes ({})",
            limits.max_output_bytes
        )));
    }
    Ok(())
}

fn describe_trap(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "deadline exceeded (epoch interruption)".to_owned(),
        Some(trap) => format!("{trap}"),
        None if format!("{e:#}").contains("forcing trap when growing memory") => {
            "memory limit exceeded".to_owned()
        }
        None => format!("{e:#}"),
    }
}
