//! Hot reload of projection components.
//!
//! A new or changed `.wasm` file in the components folder (seen by the folder
//! watcher, or on `POST /projections/reload`) is compiled on a blocking
//! thread, off the consuming path, and validated: it must be a component of
//! a compatible WIT version with the projection exports, declare tables and
//! columns the schema has, claim no event type another domain owns, and pass
//! its self-test fixtures if it ships any. Only then is it swapped into the
//! registry, which the pipeline reads once per batch: the swap happens between
//! batches and a batch never mixes two versions of a domain. A refused
//! component is logged and reported to the [`ReloadObserver`] (the host counts
//! it in `projector_component_reloads_total{outcome="refused"}` and lists it
//! in the status page's recent errors); the old one keeps serving.
//!
//! Self-test fixtures are described in `selftest`.
//!
//! Write components by renaming a finished file into the folder (as
//! `scripts/build-projections` does): a half-written file is refused and
//! retried on the next change. Or send one to a running host
//! ([`Reloader::deploy`], `projector deploy`): it is validated first and
//! written into the folder only once it is accepted, so a refused build
//! never replaces the file in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::Watcher as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::registry::{Admission, Projection, Registry, wasm_files};
use super::runtime::{LoadedComponent, Runtime};
use super::selftest::{run_selftest, selftest_dir};

/// What one reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// `domain@version+digest` of each component swapped in.
    pub loaded: Vec<String>,
    /// Files refused, with the reason.
    pub refused: Vec<Refused>,
    /// Files whose content is already in force.
    pub unchanged: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub file: String,
    pub reason: String,
}

/// What a reload did to one component, as the host's observer sees it.
#[derive(Debug, Clone, Copy)]
pub enum ReloadEvent<'a> {
    /// `label` of `domain` is now in force.
    Loaded { domain: &'a str, label: &'a str },
    /// `file` was refused; the previous component of `domain` keeps serving.
    Refused {
        domain: &'a str,
        file: &'a Path,
        reason: &'a str,
    },
}

/// Told about every component a reload swaps in or refuses.
pub type ReloadObserver = Arc<dyn Fn(ReloadEvent<'_>) + Send + Sync>;

/// Run before every reload so the admission sees the database as it is now
/// (the host re-reads the live schema); an error is logged and the reload
/// goes on against the schema it had.
pub type SchemaRefresh = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Run for every component a reload or deploy is about to admit, with its
/// declaration: the host makes the database hold its declared tables
/// (grant first, additive changes only) and re-reads the schema. An error
/// refuses the component.
pub type Reconcile = Arc<
    dyn Fn(
            flatten::Info,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Reloads components from a folder into a live registry.
pub struct Reloader {
    runtime: Arc<Runtime>,
    admission: Admission,
    dir: PathBuf,
    registry: Arc<watch::Sender<Arc<Registry>>>,
    observer: ReloadObserver,
    refresh: Option<SchemaRefresh>,
    reconcile: Option<Reconcile>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader of `dir` into `registry`; `admission` decides whether a
    /// declaration fits the schema, `observer` hears of every outcome.
    pub fn new(
        runtime: Arc<Runtime>,
        admission: Admission,
        dir: PathBuf,
        registry: Arc<watch::Sender<Arc<Registry>>>,
        observer: ReloadObserver,
    ) -> Reloader {
        Reloader {
            runtime,
            admission,
            dir,
            registry,
            observer,
            refresh: None,
            reconcile: None,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs the schema refresh, if any; on failure the admission checks
    /// against the schema read before.
    async fn refresh_schema(&self) {
        if let Some(refresh) = &self.refresh
            && let Err(e) = refresh().await
        {
            tracing::warn!(error = %e, "could not re-read the schema; checking against the one read before");
        }
    }

    /// Runs `refresh` before every reload and deploy.
    pub fn refreshing(mut self, refresh: SchemaRefresh) -> Reloader {
        self.refresh = Some(refresh);
        self
    }

    /// Runs `reconcile` for every component before it is admitted.
    pub fn reconciling(mut self, reconcile: Reconcile) -> Reloader {
        self.reconcile = Some(reconcile);
        self
    }

    /// The reconciliation of a component's declared tables, if any.
    async fn reconcile(&self, info: &flatten::Info) -> Result<(), String> {
        match &self.reconcile {
            Some(reconcile) => reconcile(info.clone()).await,
            None => Ok(()),
        }
    }

    /// Loads every new or changed component of the folder; each one that
    /// passes validation is swapped in, the others are refused.
    pub async fn reload(&self) -> ReloadReport {
        let _busy = self.busy.lock().await;
        let mut report = ReloadReport::default();
        self.refresh_schema().await;
        let files = match wasm_files(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                report.refused.push(Refused {
                    file: self.dir.display().to_string(),
                    reason: format!("{e:#}"),
                });
                return report;
            }
        };
        for file in files {
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    self.refuse(&mut report, &file, None, format!("cannot read: {e}"));
                    continue;
                }
            };
            let digest = hex::encode(Sha256::digest(&bytes));
            let current = self.registry.borrow().clone();
            let in_force = current.domains().any(|(_, p)| match p {
                Projection::Wasm(c) => c.digest == digest,
                Projection::Native(_) => false,
            });
            if in_force {
                report.unchanged += 1;
                continue;
            }
            let runtime = self.runtime.clone();
            let source = file.display().to_string();
            let selftest = selftest_dir(&file);
            let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<LoadedComponent> {
                let loaded = runtime.load(&bytes, &source)?;
                if let Some(dir) = selftest {
                    run_selftest(&loaded, &dir)?;
                }
                Ok(loaded)
            })
            .await
            .map_err(|e| anyhow::anyhow!("compilation thread failed: {e}"))
            .and_then(|r| r);
            let loaded = match loaded {
                Ok(l) => l,
                Err(e) => {
                    self.refuse(&mut report, &file, None, format!("{e:#}"));
                    continue;
                }
            };
            let domain = loaded.info.domain.clone();
            if let Err(e) = self.reconcile(&loaded.info).await {
                self.refuse(&mut report, &file, Some(&domain), e);
                continue;
            }
            let projection = Projection::Wasm(Arc::new(loaded));
            let label = projection.label();
            match current.with(projection, &*self.admission) {
                Ok(next) => {
                    self.registry.send_replace(Arc::new(next));
                    (self.observer)(ReloadEvent::Loaded {
                        domain: &domain,
                        label: &label,
                    });
                    tracing::info!(component = %label, file = %file.display(), "hot-reloaded projection component");
                    report.loaded.push(label);
                }
                Err(e) => self.refuse(&mut report, &file, Some(&domain), format!("{e:#}")),
            }
        }
        report
    }

    /// Validates a component sent to the host (as a reload would: sandbox,
    /// contract, grants, the live schema read again, the self-test fixtures
    /// beside the file it replaces) and, if it is accepted,
    /// writes it into the folder in place of the file serving its domain
    /// (`<domain>.wasm` for a new domain, renamed into place) and swaps it
    /// in. Returns its label, or why it was refused; a refused component
    /// changes nothing.
    pub async fn deploy(&self, bytes: Vec<u8>) -> Result<String, String> {
        let _busy = self.busy.lock().await;
        self.refresh_schema().await;
        let runtime = self.runtime.clone();
        let loaded =
            tokio::task::spawn_blocking(move || runtime.load(&bytes, "deploy").map(|c| (c, bytes)))
                .await
                .map_err(|e| format!("compilation thread failed: {e}"))?;
        let (mut loaded, bytes) = match loaded {
            Ok(l) => l,
            Err(e) => return Err(self.refused_deploy(None, format!("{e:#}"))),
        };
        let domain = loaded.info.domain.clone();
        let current = self.registry.borrow().clone();
        let serving = current.domains().find_map(|(d, p)| match p {
            Projection::Wasm(c) if *d == domain => Some(PathBuf::from(&c.source)),
            _ => None,
        });
        let path = serving.unwrap_or_else(|| self.dir.join(format!("{domain}.wasm")));
        loaded.source = path.display().to_string();
        let loaded = Arc::new(loaded);
        // The self-test fixtures beside the file it replaces, as a reload
        // of that file would run them.
        if let Some(fixtures) = selftest_dir(&path) {
            let component = loaded.clone();
            tokio::task::spawn_blocking(move || run_selftest(&component, &fixtures))
                .await
                .map_err(|e| format!("self-test thread failed: {e}"))?
                .map_err(|e| self.refused_deploy(Some(&domain), format!("{e:#}")))?;
        }
        self.reconcile(&loaded.info)
            .await
            .map_err(|e| self.refused_deploy(Some(&domain), e))?;
        let projection = Projection::Wasm(loaded);
        let label = projection.label();
        let next = current
            .with(projection, &*self.admission)
            .map_err(|e| self.refused_deploy(Some(&domain), format!("{e:#}")))?;
        // Into the folder first, so a restart loads what is in force.
        let staging = self.dir.join(format!(".{domain}.wasm.deploy"));
        std::fs::write(&staging, &bytes)
            .and_then(|()| std::fs::rename(&staging, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&staging);
                self.refused_deploy(
                    Some(&domain),
                    format!("cannot write {}: {e}", path.display()),
                )
            })?;
        self.registry.send_replace(Arc::new(next));
        (self.observer)(ReloadEvent::Loaded {
            domain: &domain,
            label: &label,
        });
        tracing::info!(component = %label, file = %path.display(), "deployed projection component");
        Ok(label)
    }

    fn refused_deploy(&self, domain: Option<&str>, reason: String) -> String {
        let file = Path::new("deploy");
        tracing::error!(%reason, "deployed component refused; the previous one keeps serving");
        (self.observer)(ReloadEvent::Refused {
            domain: domain.unwrap_or("unknown"),
            file,
            reason: &reason,
        });
        reason
    }

    fn refuse(&self, report: &mut ReloadReport, file: &Path, domain: Option<&str>, reason: String) {
        let domain = domain
            .map(str::to_owned)
            .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        tracing::error!(file = %file.display(), %reason, "component refused; the previous one keeps serving");
        (self.observer)(ReloadEvent::Refused {
            domain: &domain,
            file,
            reason: &reason,
        });
        report.refused.push(Refused {
            file: file.display().to_string(),
            reason,
        });
    }

    /// Watches the folder and reloads after changes settle (250 ms).
    pub async fn watch(self: Arc<Self>) -> anyhow::Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                    && event.paths.iter().any(|p| {
                        p.extension().is_some_and(|x| x == "wasm")
                            || p.ancestors()
                                .any(|a| a.extension().is_some_and(|x| x == "selftest"))
                    })
                {
                    let _ = tx.send(());
                }
            })
            .context("failed to create the components folder watcher")?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::Recursive)
            .with_context(|| format!("failed to watch {}", self.dir.display()))?;
        tracing::info!(dir = %self.dir.display(), "watching the components folder");
        while rx.recv().await.is_some() {
            // Let a burst of events (copy, rename) settle.
            loop {
                match tokio::time::timeout(Duration::from_millis(250), rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return Ok(()),
                    Err(_) => break,
                }
            }
            let report = self.reload().await;
            if !report.loaded.is_empty() || !report.refused.is_empty() {
                tracing::info!(loaded = ?report.loaded, refused = report.refused.len(), "components folder changed");
            }
        }
        drop(watcher);
        Ok(())
    }
}
