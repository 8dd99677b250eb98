//! What a servable model is (its [`ModelSpec`]: name, kind, files, and how it is served),
//! how long it stays loaded when idle ([`KeepAlive`]), and the rules for model names and
//! kinds shared by the store, the catalog and the registry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mlxd_proto::ModelKind;

use crate::units::parse_duration;

/// How long an idle model stays loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    After(Duration),
    Never,
}

impl KeepAlive {
    /// The protocol's milliseconds: negative = never.
    pub fn from_millis(ms: i64) -> KeepAlive {
        u64::try_from(ms).map_or(KeepAlive::Never, |ms| KeepAlive::After(Duration::from_millis(ms)))
    }

    /// "0", "250ms", "30s", "5m", "2h", a number of seconds, or "never" / "-1".
    pub fn parse(text: &str) -> Result<KeepAlive> {
        let text = text.trim();
        if matches!(text, "never" | "-1" | "forever") {
            return Ok(KeepAlive::Never);
        }
        Ok(KeepAlive::After(parse_duration(text)?))
    }
}

/// A model the daemon can serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub kind: ModelKind,
    /// The model directory handed to the worker.
    pub path: PathBuf,
    /// Human description of where it came from, shown in `mlxctl models`.
    pub source: String,
    /// Bytes of weights on disk: the budget's estimate of what loading it costs.
    pub size_bytes: u64,
    pub keep_alive: KeepAlive,
    /// Lengthen the keep-alive of a model that is wanted back soon after its keep-alive
    /// unloaded it (opt-in, `adaptive_keep_alive`).
    pub adaptive_keep_alive: bool,
    /// Never unloaded by keep-alive or eviction (an operator can still unload it).
    pub pinned: bool,
    /// Generation streams decoded together in one batch; more wait in the queue.
    pub max_streams: usize,
    /// Requests admitted (queued or running) before `Busy`.
    pub queue_capacity: usize,
    /// Bytes of KV cache kept for recent prompts (generation models; 0: none).
    pub prompt_cache_bytes: u64,
    /// Embedding models: the names of the prompts sentence-transformers puts before a text
    /// (`config_sentence_transformers.json`), sorted, and the one used by default.
    pub prompts: Vec<String>,
    pub default_prompt: Option<String>,
}

impl ModelSpec {
    pub fn new(name: String, kind: ModelKind, path: PathBuf, source: String) -> ModelSpec {
        let size_bytes = weights_size(&path);
        let (prompts, default_prompt) = if kind == ModelKind::Embedding { prompts(&path) } else { (Vec::new(), None) };
        ModelSpec {
            name,
            kind,
            path,
            source,
            size_bytes,
            keep_alive: DEFAULT_KEEP_ALIVE,
            adaptive_keep_alive: false,
            pinned: false,
            max_streams: DEFAULT_MAX_STREAMS,
            queue_capacity: QUEUE_PER_BATCH * DEFAULT_MAX_STREAMS,
            prompt_cache_bytes: DEFAULT_PROMPT_CACHE_BYTES,
            prompts,
            default_prompt,
        }
    }

    /// Which named prompt an embedding request gets: its own (`""`: none), else the
    /// model's default; a name the model lacks is a clear error listing the names it has.
    pub fn resolve_prompt(&self, asked: Option<&str>) -> Result<String, String> {
        match asked {
            None => Ok(self.default_prompt.clone().unwrap_or_default()),
            Some("") => Ok(String::new()),
            Some(name) if self.prompts.iter().any(|p| p == name) => Ok(name.to_owned()),
            Some(name) if self.prompts.is_empty() => {
                Err(format!("model {} has no named prompts, so prompt {name:?} cannot be used", self.name))
            }
            Some(name) => Err(format!(
                "model {} has no prompt {name:?}; its prompts are {}",
                self.name,
                self.prompts.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// The named prompts of a sentence-transformers model directory
/// (`config_sentence_transformers.json`: `prompts`, `default_prompt_name`), sorted. A file
/// that cannot be read gives none: the worker refuses such a model when it loads it.
fn prompts(dir: &Path) -> (Vec<String>, Option<String>) {
    let Ok(text) = std::fs::read_to_string(dir.join("config_sentence_transformers.json")) else {
        return (Vec::new(), None);
    };
    let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else { return (Vec::new(), None) };
    let mut names: Vec<String> = config
        .get("prompts")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().filter(|k| !k.is_empty()).cloned().collect())
        .unwrap_or_default();
    names.sort();
    let default = config
        .get("default_prompt_name")
        .and_then(|d| d.as_str())
        .filter(|d| names.iter().any(|n| n == d))
        .map(str::to_owned);
    (names, default)
}

/// Bytes of weight files (safetensors, GGUF, npz) in a model directory.
fn weights_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".safetensors") || name.ends_with(".gguf") || name.ends_with(".npz")
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| m.len())
        .sum()
}

pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::After(Duration::from_secs(300));

/// Generation streams per model decoded together, unless configured.
pub const DEFAULT_MAX_STREAMS: usize = 8;
/// KV cache kept per generation model for recent prompts: 256 MiB.
pub const DEFAULT_PROMPT_CACHE_BYTES: u64 = 256 << 20;
/// A model's default queue capacity is this many batches.
pub const QUEUE_PER_BATCH: usize = 4;

/// Checks a model name is safe as a directory name and a protocol string.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !ok {
        bail!("model name {name:?} must be 1-128 characters of [A-Za-z0-9-_.:], not starting with '.'");
    }
    Ok(())
}

/// Encoder families mlxd runs itself (`mlxd_runtime`): embedding models, and rerankers
/// when config.json's architecture is `...ForSequenceClassification` with one label.
/// Every other architecture is run by mlx-lm: a causal LM, or an embedding model when the
/// directory is a sentence-transformers one (`modules.json` with a Pooling module).
pub const ENCODERS: &[&str] = &["bert", "roberta", "xlm-roberta", "distilbert"];

fn config_json(dir: &Path) -> Result<serde_json::Value> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", config_path.display()))
}

/// `model_type` from a model directory's config.json.
fn model_type(dir: &Path) -> Result<String> {
    match config_json(dir)?.get("model_type").and_then(|v| v.as_str()) {
        Some(model_type) if !model_type.is_empty() => Ok(model_type.to_owned()),
        _ => bail!("{}: no model_type, so the architecture is unknown", dir.join("config.json").display()),
    }
}

/// Whether `modules.json` (a sentence-transformers directory) has a Pooling module.
fn has_pooling_module(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("modules.json")) else { return false };
    let Ok(modules) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    modules.as_array().is_some_and(|modules| {
        modules.iter().any(|m| {
            // `sentence_transformers.models.Pooling` (2.x-5.x), or
            // `sentence_transformers.sentence_transformer.modules.pooling.Pooling` (6.x).
            m.get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.starts_with("sentence_transformers.") && t.rsplit('.').next() == Some("Pooling"))
        })
    })
}

/// Reads config.json (and modules.json) to tell an embedding model, a reranker and a
/// causal language model apart.
pub fn detect_kind(dir: &Path) -> Result<ModelKind> {
    let config = config_json(dir)?;
    let model_type = model_type(dir)?;
    let encoder = ENCODERS.contains(&model_type.as_str());
    let classifier = config
        .get("architectures")
        .and_then(|a| a.as_array())
        .is_some_and(|a| a.iter().any(|name| name.as_str().is_some_and(|n| n.ends_with("ForSequenceClassification"))));
    if encoder && classifier {
        let labels = config
            .get("id2label")
            .and_then(|l| l.as_object())
            .map(|l| l.len() as u64)
            .or_else(|| config.get("num_labels").and_then(|n| n.as_u64()))
            .unwrap_or(1);
        if labels != 1 {
            bail!(
                "{}: a sequence classifier with {labels} labels is not a reranker (mlxd serves one-label \
                 cross-encoders)",
                dir.display()
            );
        }
        return Ok(ModelKind::Rerank);
    }
    Ok(if encoder || has_pooling_module(dir) { ModelKind::Embedding } else { ModelKind::Generation })
}

/// [`detect_kind`], and for a causal LM, that the mlx-lm in `site_packages` implements its
/// architecture (a module `mlx_lm/models/TYPE.py`, or one its `MODEL_REMAPPING` names) —
/// so an unsupported model is refused when it is imported or configured, naming the
/// architecture, not when a client first asks for it.
pub fn check_servable(dir: &Path, site_packages: &Path) -> Result<ModelKind> {
    let kind = detect_kind(dir)?;
    let model_type = model_type(dir)?;
    if ENCODERS.contains(&model_type.as_str()) {
        return Ok(kind);
    }
    if !model_type.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
        bail!("{}: model_type {model_type:?} is not an architecture name", dir.display());
    }
    let mlx_lm = site_packages.join("mlx_lm");
    if !mlx_lm.is_dir() {
        // No mlx-lm to ask (a daemon whose virtualenv is elsewhere): the worker will say.
        return Ok(kind);
    }
    // As mlx-lm's `_get_classes` imports it: `mlx_lm.models.<type>` (names as written,
    // some have hyphens), or the module its remapping tables name.
    let remapped = mlx_lm_remapping(&mlx_lm).into_iter().find(|(from, _)| *from == model_type).map(|(_, to)| to);
    let module = remapped.as_deref().unwrap_or(&model_type);
    if mlx_lm.join("models").join(format!("{module}.py")).is_file() {
        return Ok(kind);
    }
    bail!(
        "{}: architecture {model_type:?} is not supported by the installed mlx-lm ({}); \
         encoders must be one of {}",
        dir.display(),
        mlx_lm.display(),
        ENCODERS.join(", ")
    )
}

/// mlx-lm's remapping tables (model types served by another type's module), read from
/// its source, `mlx_lm/utils.py`: `MODEL_REMAPPING`'s `"from": "to",` lines, and
/// `MODEL_ARCHITECTURE_REMAPPING`'s `("from", "Architecture"): "to",` lines (taken as
/// "from is served", whatever the architecture: the worker has the last word).
fn mlx_lm_remapping(mlx_lm: &Path) -> Vec<(String, String)> {
    let Ok(source) = std::fs::read_to_string(mlx_lm.join("utils.py")) else { return Vec::new() };
    let unquote = |s: &str| s.trim().trim_matches('"').trim_matches('\'').to_owned();
    let table = |name: &str| -> Vec<String> {
        let Some(start) = source.find(&format!("{name} = {{")) else { return Vec::new() };
        source[start..]
            .lines()
            .skip(1)
            .take_while(|line| !line.trim_start().starts_with('}'))
            .filter_map(|line| line.split('#').next().map(|l| l.trim().trim_end_matches(',').to_owned()))
            .filter(|line| !line.is_empty())
            .collect()
    };
    let mut pairs: Vec<(String, String)> = table("MODEL_REMAPPING")
        .iter()
        .filter_map(|line| line.split_once(':').map(|(from, to)| (unquote(from), unquote(to))))
        .collect();
    pairs.extend(table("MODEL_ARCHITECTURE_REMAPPING").iter().filter_map(|line| {
        let (key, to) = line.rsplit_once(':')?;
        let from = key.trim().trim_start_matches('(').split(',').next()?;
        Some((unquote(from), unquote(to)))
    }));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_are_checked_against_the_installed_mlx_lm_as_it_imports_them() {
        let root = std::env::temp_dir().join(format!("mlxd-spec-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let site = root.join("site-packages");
        std::fs::create_dir_all(site.join("mlx_lm/models")).unwrap();
        for module in ["llama", "nemotron-nas", "bailing_moe_v3"] {
            std::fs::write(site.join(format!("mlx_lm/models/{module}.py")), "").unwrap();
        }
        std::fs::write(
            site.join("mlx_lm/utils.py"),
            "MODEL_REMAPPING = {\n    \"mistral\": \"llama\",  # same code\n}\n\
             MODEL_ARCHITECTURE_REMAPPING = {\n    (\"bailing_hybrid\", \"BailingMoeV3ForCausalLM\"): \"bailing_moe_v3\",\n}\n",
        )
        .unwrap();
        let model = |model_type: &str| {
            let dir = root.join(model_type.replace('/', "_"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.json"), format!("{{\"model_type\": {model_type:?}}}")).unwrap();
            check_servable(&dir, &site)
        };
        for served in ["llama", "mistral", "nemotron-nas", "bailing_hybrid", "bert"] {
            assert!(model(served).is_ok(), "{served}: {:?}", model(served));
        }
        let refused = model("no_such_arch").unwrap_err().to_string();
        assert!(refused.contains("\"no_such_arch\" is not supported"), "{refused}");
        assert!(model("../utils").unwrap_err().to_string().contains("not an architecture name"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
