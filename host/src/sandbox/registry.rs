//! Which projection handles which event type.
//!
//! A registry is built once from a components folder (or from the native
//! flattening, for comparison runs) and never changes; a reload builds a new
//! registry and swaps it in between batches.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use flatten::{Domain, Info};

use super::runtime::{LoadedComponent, Runtime};

/// Whether a projection's declaration may be admitted: the host checks it
/// against the live schema (the sandbox itself never reads the database).
pub type Admission = Arc<dyn Fn(&Info) -> Result<(), String> + Send + Sync>;

/// One domain's projection: a sandboxed component, or the same flattening
/// compiled into the host (no sandbox; for benchmarks and comparisons).
#[derive(Debug, Clone)]
pub enum Projection {
    Wasm(Arc<LoadedComponent>),
    Native(NativeProjection),
}

#[derive(Clone)]
pub struct NativeProjection {
    pub domain: Domain,
    pub info: Info,
}

impl std::fmt::Debug for NativeProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NativeProjection({})", self.domain.name)
    }
}

impl Projection {
    pub fn info(&self) -> &Info {
        match self {
            Projection::Wasm(c) => &c.info,
            Projection::Native(n) => &n.info,
        }
    }

    /// `domain@version+digest12`, recorded in `processed_events` with every
    /// event the projection applies (the digest tells apart two builds that
    /// carry one version).
    pub fn label(&self) -> String {
        match self {
            Projection::Wasm(c) => format!("{}+{}", c.label(), &c.digest[..12]),
            Projection::Native(n) => format!("{}@{}-native", n.info.domain, n.info.version),
        }
    }

    /// SHA-256 of the component, or `native`.
    pub fn digest(&self) -> &str {
        match self {
            Projection::Wasm(c) => &c.digest,
            Projection::Native(_) => "native",
        }
    }
}

/// The projections in force, routed by event type.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_domain: BTreeMap<String, Projection>,
    by_type: HashMap<String, String>,
}

impl Registry {
    /// Builds a registry from projections, refusing two that claim one event
    /// type or one domain, and any whose declared writes the schema lacks.
    pub fn new(
        projections: Vec<Projection>,
        admit: &dyn Fn(&Info) -> Result<(), String>,
    ) -> anyhow::Result<Registry> {
        let mut registry = Registry::default();
        for p in projections {
            registry.insert(p, admit)?;
        }
        Ok(registry)
    }

    fn insert(
        &mut self,
        p: Projection,
        admit: &dyn Fn(&Info) -> Result<(), String>,
    ) -> anyhow::Result<()> {
        let info = p.info().clone();
        admit(&info).map_err(|e| anyhow::anyhow!("projection {} refused: {e}", p.label()))?;
        if let Some(existing) = self.by_domain.get(&info.domain) {
            anyhow::bail!(
                "two projections for domain {:?}: {} and {}",
                info.domain,
                existing.label(),
                p.label()
            );
        }
        for t in &info.handles {
            if let Some(other) = self.by_type.get(t) {
                anyhow::bail!(
                    "event type {t:?} is claimed by both {other} and {}",
                    info.domain
                );
            }
        }
        for t in &info.handles {
            self.by_type.insert(t.clone(), info.domain.clone());
        }
        self.by_domain.insert(info.domain.clone(), p);
        Ok(())
    }

    /// Loads every `*.wasm` file of `dir` (sorted by name) and admits them.
    pub fn load_dir(
        runtime: &Runtime,
        dir: &Path,
        admit: &dyn Fn(&Info) -> Result<(), String>,
    ) -> anyhow::Result<Registry> {
        Registry::new(Registry::load_files(runtime, dir)?, admit)
    }

    /// Loads every `*.wasm` file of `dir` (sorted by name), not admitted yet.
    pub fn load_files(runtime: &Runtime, dir: &Path) -> anyhow::Result<Vec<Projection>> {
        let files = wasm_files(dir)?;
        if files.is_empty() {
            anyhow::bail!("no .wasm component in {}", dir.display());
        }
        let mut projections = Vec::new();
        for file in files {
            let loaded = runtime
                .load_file(&file)
                .with_context(|| format!("component {} refused", file.display()))?;
            tracing::info!(component = %loaded.label(), file = %file.display(), digest = %&loaded.digest[..12], "loaded projection component");
            projections.push(Projection::Wasm(Arc::new(loaded)));
        }
        Ok(projections)
    }

    /// The built-in flattening compiled into the host, for every domain.
    pub fn native(admit: &dyn Fn(&Info) -> Result<(), String>) -> anyhow::Result<Registry> {
        Registry::new(Registry::native_projections(), admit)
    }

    /// The built-in projections, not admitted yet.
    pub fn native_projections() -> Vec<Projection> {
        flatten::DOMAINS
            .into_iter()
            .map(|domain| {
                Projection::Native(NativeProjection {
                    domain,
                    info: (domain.info)(),
                })
            })
            .collect()
    }

    /// The projection of an event type.
    pub fn route(&self, event_type: &str) -> Option<&Projection> {
        self.by_type
            .get(event_type)
            .and_then(|d| self.by_domain.get(d))
    }

    pub fn domains(&self) -> impl Iterator<Item = (&String, &Projection)> {
        self.by_domain.iter()
    }

    /// A copy with one domain's projection replaced (hot reload).
    pub fn with(
        &self,
        p: Projection,
        admit: &dyn Fn(&Info) -> Result<(), String>,
    ) -> anyhow::Result<Registry> {
        let mut next = Registry::default();
        let domain = p.info().domain.clone();
        for (d, existing) in &self.by_domain {
            if *d != domain {
                next.insert(existing.clone(), admit)?;
            }
        }
        next.insert(p, admit)?;
        Ok(next)
    }
}

/// The `*.wasm` files of a components folder, sorted by name.
pub fn wasm_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the components folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The `.wasm` file of `dir` whose component projects `domain`.
pub fn component_file(
    runtime: &Runtime,
    dir: &Path,
    domain: &str,
) -> anyhow::Result<std::path::PathBuf> {
    for file in wasm_files(dir)? {
        if let Ok(c) = runtime.load_file(&file)
            && c.info.domain == domain
        {
            return Ok(file);
        }
    }
    anyhow::bail!("no component for domain {domain:?} in {}", dir.display())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::sink::schema::{Ident, Schema, TableInfo};

    fn admit(schema: &Schema) -> impl Fn(&Info) -> Result<(), String> + '_ {
        move |info| schema.check_declaration(info)
    }

    fn schema_with(tables: &[(&str, &[&str])]) -> Schema {
        let mut schema = Schema::default();
        for (name, cols) in tables {
            let mut columns: BTreeSet<String> = cols.iter().map(|c| (*c).to_owned()).collect();
            columns.extend(["event_id".to_owned(), "event_timestamp".to_owned()]);
            schema.tables.insert(
                (*name).to_owned(),
                TableInfo {
                    name: Ident::parse(name).unwrap(),
                    columns,
                    types: Default::default(),
                    primary_key: vec![cols[0].to_owned()],
                    unique_keys: vec![],
                    parent: None,
                    stamped: true,
                },
            );
        }
        schema
    }

    fn native(domain: Domain) -> Projection {
        Projection::Native(NativeProjection {
            domain,
            info: (domain.info)(),
        })
    }

    fn user_schema() -> Schema {
        let users = (flatten::USER.info)().writes[0].columns.clone();
        let cols: Vec<&str> = users.iter().map(String::as_str).collect();
        schema_with(&[("users", &cols)])
    }

    #[test]
    fn routes_every_declared_event_type_to_its_projection() {
        let registry = Registry::new(vec![native(flatten::USER)], &admit(&user_schema())).unwrap();
        assert_eq!(
            registry.route("user.deleted").unwrap().info().domain,
            "user"
        );
        assert!(registry.route("order.created").is_none());
    }

    #[test]
    fn two_projections_claiming_one_event_type_is_an_error() {
        let err = Registry::new(
            vec![native(flatten::USER), native(flatten::USER)],
            &admit(&user_schema()),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("two projections for domain \"user\""),
            "{err}"
        );
        let mut impostor = (flatten::USER.info)();
        impostor.domain = "people".into();
        let err = Registry::new(
            vec![
                native(flatten::USER),
                Projection::Native(NativeProjection {
                    domain: flatten::USER,
                    info: impostor,
                }),
            ],
            &admit(&user_schema()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("claimed by both"), "{err}");
    }

    #[test]
    fn a_projection_declaring_what_the_schema_lacks_is_refused() {
        let schema = schema_with(&[("users", &["user_id", "email"])]);
        let err = Registry::new(vec![native(flatten::USER)], &admit(&schema)).unwrap_err();
        assert!(err.to_string().contains("users.phone"), "{err}");
        let err = Registry::new(vec![native(flatten::ORDER)], &admit(&schema)).unwrap_err();
        assert!(err.to_string().contains("\"orders\""), "{err}");
    }
}
