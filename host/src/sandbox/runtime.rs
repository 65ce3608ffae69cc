//! The sandbox runtime: loads projection components and calls them under
//! limits. Every wasmtime detail of the host lives in this file.
//!
//! - One [`Engine`] and one [`Linker`] for the process; each component is
//!   compiled once into a [`ProjectionPre`] (an `InstancePre`), so making an
//!   instance is cheap.
//! - **Every call gets a fresh instance** in a fresh [`Store`], dropped when
//!   the call returns: a guest cannot carry state from one event to the
//!   next (statics, its heap, a cache), so a projection is a function of
//!   its event alone, and a trap poisons nothing. Instances come from
//!   wasmtime's pooling allocator: slots are reserved once, a returned
//!   memory keeps its first `sandbox.keep_resident_bytes` resident and is
//!   reset in place (only its dirty pages, found with Linux's
//!   `PAGEMAP_SCAN` where the kernel has it), the rest is handed back to
//!   the kernel. That makes a fresh instance cost about 10 µs instead of
//!   about 60 µs with fresh mappings (`scripts/bench` measures it).
//! - Each call runs under a deadline enforced by epoch interruption and
//!   the store's caps (memory, instances, tables, table elements).
//! - The only host functions a guest can reach are `wasi:random/*`, with
//!   fixed seeds (Rust's `std` may seed a `HashMap` from them; fixed seeds
//!   keep a projection a pure function of its event) and at most
//!   `sandbox.max_host_call_bytes` per call, so no host call does
//!   unbounded work between two deadline checks. Every other import a
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

mod bindings {
    wasmtime::component::bindgen!({
        // describe and project: what every 1.x component exports; `tables`
        // (1.1.0) is looked up by name, since a 1.0 component lacks it.
        world: "projection-core",
        path: "../wit",
    });
}

pub(super) use bindings::projector::projection::types as wit;
use bindings::{ProjectionCore as Projection, ProjectionCorePre as ProjectionPre};

use super::contract::{
    check_info, check_version, error_from_wit, info_from_wit, op_from_wit, tables_from_wit,
};
use crate::settings::SandboxLimits;

/// The WIT package and the major version this host implements.
pub const WIT_PACKAGE: &str = "projector:projection";
/// The contract version this host was built against.
pub const WIT_VERSION: &str = "1.1.0";

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
    /// It declares more than the sandbox's caps allow up front (a table's
    /// minimum size past `sandbox.max_table_elements`, a memory's past
    /// `sandbox.memory_mb`, more memories or tables than allowed).
    #[error("needs more than the sandbox allows: {0:#}")]
    Limits(wasmtime::Error),
    #[error("imports something the sandbox does not provide: {0:#}")]
    Imports(wasmtime::Error),
    #[error("does not implement the {WIT_PACKAGE} world: {0:#}")]
    Exports(wasmtime::Error),
    #[error("built against {found}, this host implements {WIT_PACKAGE}@{WIT_VERSION}")]
    Version { found: String },
    #[error("describe() failed: {0}")]
    Describe(String),
    #[error("tables() failed: {0}")]
    Tables(String),
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

/// Per-store state: the guest's randomness (all it can reach) and the
/// limits.
pub struct GuestState {
    random: FixedRandom,
    limits: StoreLimits,
}

/// `wasi:random/*` with fixed seeds, so a projection stays a pure function
/// of its event (Rust's `std` seeds its `HashMap`s from it), and at most
/// `max_bytes` per call. Made for every call, so it is two seeded
/// generators and nothing else (a whole `WasiCtx` per call cost more than
/// the rest of the store).
struct FixedRandom {
    secure: rand_wasi::rngs::StdRng,
    insecure: rand_wasi::rngs::StdRng,
    max_bytes: u64,
}

impl FixedRandom {
    fn new(max_bytes: u64) -> Self {
        FixedRandom {
            secure: rand_wasi::rngs::StdRng::seed_from_u64(0),
            insecure: rand_wasi::rngs::StdRng::seed_from_u64(0),
            max_bytes,
        }
    }

    /// The same bytes `wasmtime-wasi`'s own context gives for a seed, so
    /// what a component computes from them did not change with this type.
    fn bytes(rng: &mut rand_wasi::rngs::StdRng, len: u64, max: u64) -> wasmtime::Result<Vec<u8>> {
        use rand_wasi::RngExt as _;
        if len > max {
            wasmtime::bail!("requested len {len:?} exceeds limit {max}");
        }
        Ok(rng.random_iter().take(len as usize).collect())
    }
}

mod random_host {
    use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};

    use super::FixedRandom;

    impl random::Host for FixedRandom {
        fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
            FixedRandom::bytes(&mut self.secure, len, self.max_bytes)
        }

        fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
            use rand_wasi::RngExt as _;
            Ok(self.secure.random())
        }
    }

    impl insecure::Host for FixedRandom {
        fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
            FixedRandom::bytes(&mut self.insecure, len, self.max_bytes)
        }

        fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
            use rand_wasi::RngExt as _;
            Ok(self.insecure.random())
        }
    }

    impl insecure_seed::Host for FixedRandom {
        fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
            Ok((0, 0))
        }
    }
}

/// Selects [`FixedRandom`] as the host of the `wasi:random` bindings.
struct Fixed;

impl wasmtime::component::HasData for Fixed {
    type Data<'a> = &'a mut FixedRandom;
}

/// Links `wasi:random/*` (fixed seeds, [`FixedRandom`]) and nothing else.
fn link_random(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::random;
    random::random::add_to_linker::<GuestState, Fixed>(linker, |s| &mut s.random)?;
    random::insecure::add_to_linker::<GuestState, Fixed>(linker, |s| &mut s.random)?;
    random::insecure_seed::add_to_linker::<GuestState, Fixed>(linker, |s| &mut s.random)?;
    Ok(())
}

/// The pooling allocator's slots, sized from the limits. Memories and
/// tables are taken from shared pools (a component instance of a Rust guest
/// uses one core instance without `std`, about seventeen with it, and one
/// memory), so the totals bound the
/// instances alive at once, not what one instance may use: that is the
/// store's limiter.
fn pool(limits: &SandboxLimits) -> wasmtime::PoolingAllocationConfig {
    let slots = limits.instance_pool.max(1);
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(limits.max_instances as u32))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(limits.max_tables as u32))
        .max_memories_per_component(limits.max_memories as u32)
        .max_memories_per_module(limits.max_memories as u32)
        .max_tables_per_component(limits.max_tables as u32)
        .max_tables_per_module(limits.max_tables as u32)
        .max_memory_size(limits.memory_bytes())
        .table_elements(limits.max_table_elements)
        .linear_memory_keep_resident(limits.keep_resident_bytes)
        .table_keep_resident(limits.keep_resident_bytes.min(64 << 10))
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

/// The process-wide engine and linker.
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    limits: SandboxLimits,
    /// Compiled components kept between starts (see [`Runtime::with_cache`]).
    cache: Option<CompiledCache>,
    _ticker: Arc<()>,
}

/// A folder of compiled components: `<digest>-<engine and limits>.cwasm`.
struct CompiledCache {
    dir: std::path::PathBuf,
    /// What else decides whether a compiled file fits this process: the
    /// engine's configuration (wasmtime version, target, features) and the
    /// sandbox limits the pooling allocator checked at compile time.
    fingerprint: String,
}

impl Runtime {
    pub fn new(limits: SandboxLimits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool(&limits)));
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
            cache: None,
            _ticker: alive,
        })
    }

    /// The runtime of a host's settings: its sandbox limits and, if set,
    /// its compiled-component cache.
    pub fn from_settings(settings: &crate::settings::Settings) -> anyhow::Result<Self> {
        let runtime = Runtime::new(settings.sandbox)?;
        Ok(match &settings.components.compiled_cache {
            Some(dir) if !dir.as_os_str().is_empty() => runtime.with_cache(dir),
            _ => runtime,
        })
    }

    /// Keeps compiled components in `dir` (made with mode 0700 if missing),
    /// so a start or a reload of a component compiled before skips
    /// compilation (about 0.5 s per component here). A file that does not
    /// load is removed and the component compiled again.
    pub fn with_cache(mut self, dir: &Path) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:?}", self.limits).hash(&mut hasher);
        self.cache = Some(CompiledCache {
            dir: dir.to_owned(),
            fingerprint: format!("{:016x}", hasher.finish()),
        });
        self
    }

    /// Compiles `bytes`, or loads the compiled form from the cache.
    fn compile(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<Component> {
        let Some(cache) = &self.cache else {
            return Component::new(&self.engine, bytes);
        };
        let path = cache
            .dir
            .join(format!("{digest}-{}.cwasm", cache.fingerprint));
        // Read into memory rather than mapped: a file changed on disk
        // under a mapping would crash the process.
        if let Ok(compiled) = std::fs::read(&path) {
            // SAFETY: the bytes were written by `Component::serialize` of an
            // engine with this configuration (the file's name holds the
            // digest of the component and the engine's compatibility hash),
            // in a folder only this user writes; wasmtime checks their
            // header and the engine's compatibility again before using them.
            match unsafe { Component::deserialize(&self.engine, &compiled) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "a cached compiled component does not load; compiling again");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        if let Err(e) = store_compiled(&cache.dir, &path, &component) {
            tracing::warn!(dir = %cache.dir.display(), error = %format!("{e:#}"), "could not cache a compiled component");
        }
        Ok(component)
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
        let component = self.compile(bytes, &digest).map_err(|e| {
            // The pooling allocator checks a component's declared minimums
            // against its slots when it is compiled.
            if format!("{e:#}").contains("pooling allocator") {
                LoadError::Limits(e)
            } else {
                LoadError::Compile(e)
            }
        })?;
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
                tables: vec![],
            },
            digest,
            source: source.to_owned(),
            pre,
            engine: self.engine.clone(),
            limits: self.limits,
        };
        let mut info = loaded
            .session()
            .describe()
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        if component.get_export_index(None, "tables").is_some() {
            info.tables = loaded
                .session()
                .tables()
                .map_err(|e| LoadError::Tables(e.to_string()))?;
        }
        check_info(&info).map_err(LoadError::Info)?;
        loaded.info = info;
        Ok(loaded)
    }
}

/// Writes a compiled component into the cache: to a temporary name, then
/// renamed, so a concurrent start never reads half a file.
fn store_compiled(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("serialising: {e:#}"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
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
    /// A handle to call the component; every call gets a fresh instance.
    pub fn session(&self) -> Session<'_> {
        Session { component: self }
    }

    /// `domain@version` for logs and bookkeeping.
    pub fn label(&self) -> String {
        format!("{}@{}", self.info.domain, self.info.version)
    }

    fn new_store(&self) -> Store<GuestState> {
        // Only its randomness is linked (see the module's header).
        let random = FixedRandom::new(self.limits.max_host_call_bytes);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes())
            .instances(self.limits.max_instances)
            .tables(self.limits.max_tables)
            .memories(self.limits.max_memories)
            .table_elements(self.limits.max_table_elements)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, GuestState { random, limits });
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store
    }
}

/// Calls into one component. Each call instantiates it in a fresh store
/// and drops both when it returns (see the module's header).
pub struct Session<'c> {
    component: &'c LoadedComponent,
}

/// How long a call waits in all for a free instance slot when every one is
/// taken (each taken slot is freed within one call deadline).
const SLOT_WAIT: Duration = Duration::from_secs(10);

impl Session<'_> {
    fn instantiate(&self) -> Result<(Store<GuestState>, Projection), GuestFailure> {
        self.instantiate_with(|store| self.component.pre.instantiate(store))
    }

    /// A fresh store under a fresh deadline, and `make` of an instance in it.
    fn instantiate_with<I>(
        &self,
        make: impl Fn(&mut Store<GuestState>) -> wasmtime::Result<I>,
    ) -> Result<(Store<GuestState>, I), GuestFailure> {
        let waited = std::time::Instant::now();
        loop {
            let mut store = self.component.new_store();
            store.set_epoch_deadline(self.ticks());
            match make(&mut store) {
                Ok(instance) => return Ok((store, instance)),
                // A host-side shortage, not the guest's fault: wait for a
                // slot rather than fail the event.
                Err(e)
                    if e.is::<wasmtime::PoolConcurrencyLimitError>()
                        && waited.elapsed() < SLOT_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(GuestFailure::Instantiate(format!("{e:#}"))),
            }
        }
    }

    fn ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        (self.component.limits.call_deadline.as_micros() / tick).max(1) as u64 + 1
    }

    /// Runs `f` against a fresh instance under a fresh deadline.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<GuestState>, &Projection) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFailure> {
        let (mut store, instance) = self.instantiate()?;
        f(&mut store, &instance).map_err(|e| GuestFailure::Trap(describe_trap(&e)))
    }

    /// `describe()`.
    pub fn describe(&mut self) -> Result<Info, GuestFailure> {
        self.call(|store, p| p.call_describe(store))
            .map(info_from_wit)
    }

    /// `tables()`, which a 1.1 component exports.
    pub fn tables(&mut self) -> Result<Vec<flatten::TableDef>, GuestFailure> {
        let (mut store, instance) =
            self.instantiate_with(|store| self.component.pre.instance_pre().instantiate(store))?;
        let tables = instance
            .get_typed_func::<(), (Vec<wit::TableDef>,)>(&mut store, "tables")
            .and_then(|f| f.call(&mut store, ()))
            .map_err(|e| GuestFailure::Trap(describe_trap(&e)))?;
        Ok(tables_from_wit(tables.0))
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
