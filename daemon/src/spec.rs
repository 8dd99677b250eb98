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
    /// Never unloaded by keep-alive or eviction (an operator can still unload it).
    pub pinned: bool,
    /// Generation streams decoded together in one batch; more wait in the queue.
    pub max_streams: usize,
    /// Requests admitted (queued or running) before `Busy`.
    pub queue_capacity: usize,
    /// Bytes of KV cache kept for recent prompts (generation models; 0: none).
    pub prompt_cache_bytes: u64,
}

impl ModelSpec {
    pub fn new(name: String, kind: ModelKind, path: PathBuf, source: String) -> ModelSpec {
        let size_bytes = weights_size(&path);
        ModelSpec {
            name,
            kind,
            path,
            source,
            size_bytes,
            keep_alive: DEFAULT_KEEP_ALIVE,
            pinned: false,
            max_streams: DEFAULT_MAX_STREAMS,
            queue_capacity: QUEUE_PER_BATCH * DEFAULT_MAX_STREAMS,
            prompt_cache_bytes: DEFAULT_PROMPT_CACHE_BYTES,
        }
    }
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

/// Reads config.json to tell an embedding encoder from a causal language model.
pub fn detect_kind(dir: &Path) -> Result<ModelKind> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", config_path.display()))?;
    let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or_default();
    match model_type {
        "bert" | "roberta" | "xlm-roberta" | "distilbert" => Ok(ModelKind::Embedding),
        "llama" | "mistral" | "qwen2" | "qwen3" | "gemma" | "gemma2" | "phi3" | "smollm3" => Ok(ModelKind::Generation),
        other => bail!(
            "{}: model_type {other:?} is not supported (embedding: bert-family; generation: llama, mistral, \
             qwen2, qwen3, gemma, gemma2, phi3, smollm3)",
            config_path.display()
        ),
    }
}
