//! The models one server serves: each configured by name and file, the first the default, loaded
//! on first use and unloaded least-recently-used first when more than `max_loaded` are loaded —
//! never while a request holds it, and never the one asked for last.
//!
//! A request takes a [`Lease`] on its model for as long as it uses it (its generation included).
//! Loading runs on a blocking thread, under a per-model gate, so concurrent first requests for
//! one model load it once; a load that fails is reported to the requests waiting for it and
//! tried again by the next one. An engine owns a Tokio runtime, which must not be dropped on an
//! async thread: the registry only ever drops an idle engine, and does so on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;

use super::http::ApiError;
use crate::engine::{Engine, EngineConfig};
use crate::error::ErrorKind;
use crate::model::ModelInfo;

/// One served model: the name requests use in `model`, and how to load it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub config: EngineConfig,
}

impl ModelSpec {
    /// Reads `--model`'s value: `NAME=PATH`, or `PATH` alone, whose name is the file's
    /// `general.name` (else its stem), as a single served model has always been named. A path
    /// containing `=` is taken whole when a file of that name exists.
    pub fn parse(arg: &str, config: &EngineConfig) -> Result<Self, String> {
        let (name, path) = match arg.split_once('=') {
            Some((name, path)) if !Path::new(arg).exists() => {
                if name.is_empty() || path.is_empty() {
                    return Err(format!("--model '{arg}': expected NAME=PATH or PATH"));
                }
                (Some(name.to_string()), PathBuf::from(path))
            }
            _ => (None, PathBuf::from(arg)),
        };
        let name = name.unwrap_or_else(|| file_model_name(&path));
        Ok(Self { name, config: EngineConfig { model_path: path, ..config.clone() } })
    }
}

/// What a model file calls itself (`general.name`), else its stem, as the engine names it.
fn file_model_name(path: &Path) -> String {
    crate::model::gguf::GgufFile::open(path)
        .ok()
        .and_then(|file| file.opt_str("general.name").map(str::to_string))
        .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
}

/// Models kept loaded at once unless `--max-loaded-models` says otherwise.
pub const DEFAULT_MAX_LOADED: usize = 2;

/// How a model stands, for the model lists.
pub(crate) struct Listed {
    pub name: String,
    pub loaded: bool,
    /// Known once the model has been loaded (it stays known after it is unloaded).
    pub info: Option<ModelInfo>,
}

pub struct Models {
    entries: Vec<Arc<Entry>>,
    max_loaded: usize,
    clock: AtomicU64,
}

struct Entry {
    name: String,
    /// `None` for an engine handed over already loaded, which cannot be reloaded, so is never
    /// unloaded.
    config: Option<EngineConfig>,
    /// Held while the model loads: a second request for it waits, then finds it loaded.
    gate: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<EntryState>,
    loads: AtomicU64,
}

#[derive(Default)]
struct EntryState {
    engine: Option<Arc<Engine>>,
    info: Option<ModelInfo>,
    last_used: u64,
    /// Loads tried, and why the last one failed (if it did): requests that waited for a load
    /// that failed get its error rather than trying again one after the other.
    attempts: u64,
    failure: Option<crate::error::Error>,
}

impl Entry {
    fn state(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Models {
    /// The models of `specs` (the first is the default), none loaded yet. Names must be unique.
    pub fn new(specs: Vec<ModelSpec>, max_loaded: usize) -> Result<Self, String> {
        if specs.is_empty() {
            return Err("no model to serve (give --model)".into());
        }
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.name == spec.name) {
                return Err(format!(
                    "two models are named '{}' ('{}' and '{}'); name them with --model NAME=PATH",
                    spec.name,
                    specs[..i].iter().find(|s| s.name == spec.name).unwrap().config.model_path.display(),
                    spec.config.model_path.display()
                ));
            }
        }
        let entries = specs
            .into_iter()
            .map(|spec| {
                Arc::new(Entry {
                    name: spec.name,
                    config: Some(spec.config),
                    gate: Arc::default(),
                    state: Mutex::default(),
                    loads: AtomicU64::new(0),
                })
            })
            .collect();
        Ok(Self { entries, max_loaded: max_loaded.max(1), clock: AtomicU64::new(1) })
    }

    /// One engine, already loaded, named as it names itself (the server of a single model).
    pub fn single(engine: Engine) -> Self {
        let info = engine.info().clone();
        let entry = Entry {
            name: info.name.clone(),
            config: None,
            gate: Arc::default(),
            state: Mutex::new(EntryState {
                engine: Some(Arc::new(engine)),
                info: Some(info),
                ..EntryState::default()
            }),
            loads: AtomicU64::new(1),
        };
        Self { entries: vec![Arc::new(entry)], max_loaded: 1, clock: AtomicU64::new(1) }
    }

    /// Loads the default model on this thread (at start-up, so that a bad default fails at once).
    pub fn load_default(self: &Arc<Self>) -> crate::error::Result<()> {
        let entry = &self.entries[0];
        if entry.state().engine.is_some() {
            return Ok(());
        }
        let Some(config) = &entry.config else { return Ok(()) };
        let engine = Engine::load(config, None)?;
        self.install(entry, engine);
        Ok(())
    }

    pub fn default_name(&self) -> &str {
        &self.entries[0].name
    }

    pub fn max_loaded(&self) -> usize {
        self.max_loaded
    }

    pub(crate) fn list(&self) -> Vec<Listed> {
        self.entries
            .iter()
            .map(|e| {
                let state = e.state();
                Listed { name: e.name.clone(), loaded: state.engine.is_some(), info: state.info.clone() }
            })
            .collect()
    }

    /// (name, loaded, times loaded) per model, for the metrics.
    pub(crate) fn load_counts(&self) -> Vec<(String, bool, u64)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.state().engine.is_some(), e.loads.load(Ordering::Relaxed)))
            .collect()
    }

    fn find(&self, name: Option<&str>) -> Result<&Arc<Entry>, ApiError> {
        let Some(name) = name.filter(|n| !n.is_empty()) else { return Ok(&self.entries[0]) };
        self.entries.iter().find(|e| e.name == name).ok_or_else(|| {
            let served: Vec<String> = self.entries.iter().map(|e| format!("'{}'", e.name)).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorKind::InvalidArgument,
                format!("model '{name}' is not served here; this server serves {}", served.join(", ")),
            )
            .with_code("model_not_found", "model")
        })
    }

    /// The model a request names (`None` or empty: the default), loaded if it is not.
    pub(crate) async fn lease(self: &Arc<Self>, name: Option<&str>) -> Result<Lease, ApiError> {
        let entry = self.find(name)?.clone();
        if let Some(lease) = self.current(&entry) {
            return Ok(lease);
        }
        let seen = entry.state().attempts;
        let gate = entry.gate.clone().lock_owned().await;
        if let Some(lease) = self.current(&entry) {
            return Ok(lease);
        }
        {
            let state = entry.state();
            if let Some(failure) = state.failure.as_ref().filter(|_| state.attempts != seen) {
                return Err(self.load_failed(&entry, failure));
            }
        }
        let Some(config) = entry.config.clone() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Backend,
                format!("model '{}' is not loaded and cannot be reloaded", entry.name),
            ));
        };
        // The load finishes and is kept even if this request goes away meanwhile.
        let models = self.clone();
        let loading = entry.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let result = Engine::load(&config, None).map(|engine| models.install(&loading, engine));
            let mut state = loading.state();
            state.attempts += 1;
            state.failure = result.as_ref().err().cloned();
            drop((state, gate));
            result
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
                format!("loading model '{}' failed: {e}", entry.name),
            )
        })?;
        loaded.map_err(|e| self.load_failed(&entry, &e))
    }

    fn load_failed(&self, entry: &Entry, e: &crate::error::Error) -> ApiError {
        let path = entry.config.as_ref().map(|c| c.model_path.display().to_string()).unwrap_or_default();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.kind(),
            format!(
                "model '{}' could not be loaded from '{path}': {} (the next request tries again)",
                entry.name,
                e.message()
            ),
        )
    }

    /// A lease on `entry`'s engine if it is loaded.
    fn current(self: &Arc<Self>, entry: &Entry) -> Option<Lease> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut state = entry.state();
        let engine = state.engine.clone()?;
        state.last_used = now;
        Some(Lease { engine: Some(engine), name: entry.name.clone(), models: self.clone() })
    }

    /// Keeps a freshly loaded engine (on a blocking thread), then unloads what is over the limit.
    fn install(self: &Arc<Self>, entry: &Entry, engine: Engine) -> Lease {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let engine = Arc::new(engine);
        {
            let mut state = entry.state();
            state.info = Some(engine.info().clone());
            state.engine = Some(engine.clone());
            state.last_used = now;
        }
        entry.loads.fetch_add(1, Ordering::Relaxed);
        let lease = Lease { engine: Some(engine), name: entry.name.clone(), models: self.clone() };
        self.unload_over_limit();
        lease
    }

    fn loaded(&self) -> usize {
        self.entries.iter().filter(|e| e.state().engine.is_some()).count()
    }

    /// Unloads idle models, least recently used first, while more than `max_loaded` are loaded;
    /// the most recently used one stays, even when it is idle and the others are busy (else a
    /// model asked for while another streams would be unloaded after each request). So at most
    /// `max_loaded`, or the models in use and one more. Blocks (dropping an engine joins its
    /// threads): call it on a blocking thread.
    fn unload_over_limit(&self) {
        loop {
            if self.loaded() <= self.max_loaded {
                return;
            }
            let used = |e: &Arc<Entry>| {
                let state = e.state();
                state.engine.is_some().then_some(state.last_used)
            };
            let newest = self.entries.iter().filter_map(used).max().unwrap_or(0);
            // An engine no lease holds (the registry's the only reference): no request can take
            // one while its entry is locked, so taking it out here leaves no request without it.
            let mut idle: Option<(u64, &Entry)> = None;
            for entry in &self.entries {
                let state = entry.state();
                let is_idle = entry.config.is_some()
                    && state.last_used != newest
                    && state.engine.as_ref().is_some_and(|engine| Arc::strong_count(engine) == 1);
                if is_idle && idle.is_none_or(|(used, _)| state.last_used < used) {
                    idle = Some((state.last_used, entry));
                }
            }
            let Some((used, entry)) = idle else { return };
            let taken = {
                let mut state = entry.state();
                match &state.engine {
                    Some(engine) if Arc::strong_count(engine) == 1 && state.last_used == used => {
                        state.engine.take()
                    }
                    _ => None,
                }
            };
            drop(taken);
        }
    }
}

/// A request's hold on its model: the model stays loaded while the lease lives. Move it into
/// the blocking task that uses the engine, so that the work ends before it is given back.
pub(crate) struct Lease {
    engine: Option<Arc<Engine>>,
    name: String,
    models: Arc<Models>,
}

impl Lease {
    /// The name requests use for the model (with `--model NAME=PATH`, NAME).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for Lease {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        self.engine.as_ref().expect("a lease holds its engine until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Never the last reference: the registry keeps a loaded engine, and unloads only idle ones.
        drop(self.engine.take());
        // Models that were busy when another one loaded may be unloaded now.
        if self.models.loaded() > self.models.max_loaded {
            let models = self.models.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || models.unload_over_limit())),
                Err(_) => models.unload_over_limit(),
            }
        }
    }
}

#[cfg(all(test, feature = "testing"))]
pub(crate) mod tests {
    use super::*;
    use crate::testing::TinyModel;

    /// Tiny model files that last as long as the value (removed on drop).
    pub(crate) struct TinyFiles(pub Vec<PathBuf>);

    impl TinyFiles {
        pub(crate) fn new(n: usize) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let files = (0..n)
                .map(|_| {
                    let k = NEXT.fetch_add(1, Ordering::Relaxed);
                    let path = std::env::temp_dir()
                        .join(format!("maze-server-models-{}-{k}.gguf", std::process::id()));
                    TinyModel::default().write(&path).unwrap();
                    path
                })
                .collect();
            Self(files)
        }

        pub(crate) fn specs(&self, names: &[&str]) -> Vec<ModelSpec> {
            names
                .iter()
                .zip(&self.0)
                .map(|(name, path)| {
                    ModelSpec::parse(&format!("{name}={}", path.display()), &EngineConfig::default()).unwrap()
                })
                .collect()
        }
    }

    impl Drop for TinyFiles {
        fn drop(&mut self) {
            for path in &self.0 {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    fn loaded(models: &Models) -> Vec<&str> {
        models.entries.iter().filter(|e| e.state().engine.is_some()).map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn names_come_from_the_argument_or_the_file() {
        let files = TinyFiles::new(1);
        let path = files.0[0].display().to_string();
        let named = ModelSpec::parse(&format!("tiny={path}"), &EngineConfig::default()).unwrap();
        assert_eq!((named.name.as_str(), named.config.model_path.as_path()), ("tiny", files.0[0].as_path()));
        // A bare path is named as the engine names it: general.name, else the stem.
        let bare = ModelSpec::parse(&path, &EngineConfig::default()).unwrap();
        let engine = Engine::load(&bare.config, None).unwrap();
        assert_eq!(bare.name, engine.info().name);
        let missing = ModelSpec::parse("/no/such/model-x.gguf", &EngineConfig::default()).unwrap();
        assert_eq!(missing.name, "model-x");
        assert!(ModelSpec::parse("=x.gguf", &EngineConfig::default()).is_err());
        let twice = Models::new(files.specs(&["a"]).into_iter().chain(files.specs(&["a"])).collect(), 1);
        assert!(twice.err().unwrap().contains("two models are named 'a'"));
    }

    #[test]
    fn models_load_on_first_use_and_the_least_recently_used_idle_one_goes() {
        let files = TinyFiles::new(3);
        let models = Arc::new(Models::new(files.specs(&["a", "b", "c"]), 2).unwrap());
        let rt = runtime();
        assert!(loaded(&models).is_empty());
        let a = rt.block_on(models.lease(None)).unwrap();
        assert_eq!((a.name(), loaded(&models)), ("a", vec!["a"]));
        let b = rt.block_on(models.lease(Some("b"))).unwrap();
        drop(b);
        assert_eq!(loaded(&models), vec!["a", "b"]);
        // Over the limit: `a` is the least recently used, but a request holds it, so `b` goes.
        let c = rt.block_on(models.lease(Some("c"))).unwrap();
        assert_eq!(loaded(&models), vec!["a", "c"]);
        // Every model in use: a load goes over the limit, and the first one given back goes.
        let b = rt.block_on(models.lease(Some("b"))).unwrap();
        assert_eq!(loaded(&models), vec!["a", "b", "c"]);
        assert!(a.tokenize("hi", false, false).is_ok(), "the lease's engine still serves");
        drop(a);
        assert_eq!(loaded(&models), vec!["b", "c"]);
        drop((b, c));

        // One may stay loaded. While `a` streams, `b` is asked for: both stay (`b`, the last one
        // asked for, is not unloaded after each request), and `a` goes when it is given back.
        let models1 = Arc::new(Models::new(files.specs(&["a", "b"]), 1).unwrap());
        let a1 = rt.block_on(models1.lease(None)).unwrap();
        drop(rt.block_on(models1.lease(Some("b"))).unwrap());
        assert_eq!(loaded(&models1), vec!["a", "b"]);
        drop(a1);
        assert_eq!(loaded(&models1), vec!["b"]);

        let counts: Vec<u64> = models.load_counts().iter().map(|(_, _, n)| *n).collect();
        assert_eq!(counts, vec![1, 2, 1]);
        // An unknown name is a 404 naming what is served.
        let e = rt.block_on(models.lease(Some("zz"))).err().unwrap();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert!(e.message().contains("'a', 'b', 'c'"), "{}", e.message());
    }

    #[test]
    fn concurrent_first_requests_load_once_and_a_failed_load_is_retried() {
        let files = TinyFiles::new(1);
        let missing = std::env::temp_dir().join(format!("maze-server-late-{}.gguf", std::process::id()));
        let mut specs = files.specs(&["a"]);
        specs.push(
            ModelSpec::parse(&format!("late={}", missing.display()), &EngineConfig::default()).unwrap(),
        );
        let models = Arc::new(Models::new(specs, 2).unwrap());
        let rt = runtime();
        let leases = rt.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let models = models.clone();
                    tokio::spawn(async move { models.lease(Some("a")).await.map(|l| l.name().to_string()) })
                })
                .collect();
            let mut names = Vec::new();
            for task in tasks {
                names.push(task.await.unwrap().ok().unwrap());
            }
            names
        });
        assert_eq!(leases, vec!["a"; 8]);
        assert_eq!(models.load_counts()[0].2, 1);

        // Requests waiting for a load that fails share its error (one attempt, not one each).
        let errors = rt.block_on(async {
            // Held while they queue, so that all four wait for the one load.
            let held = models.entries[1].gate.clone().lock_owned().await;
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let models = models.clone();
                    tokio::spawn(async move { models.lease(Some("late")).await.err().unwrap() })
                })
                .collect();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            drop(held);
            let mut errors = Vec::new();
            for task in tasks {
                errors.push(task.await.unwrap());
            }
            errors
        });
        for e in &errors {
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(e.message().contains(&missing.display().to_string()), "{}", e.message());
        }
        assert_eq!(models.entries[1].state().attempts, 1, "one load for 4 requests at once");
        TinyModel::default().write(&missing).unwrap();
        let late = rt.block_on(models.lease(Some("late")));
        let _ = std::fs::remove_file(&missing);
        assert_eq!(late.ok().unwrap().name(), "late");
    }
}
