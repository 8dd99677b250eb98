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
    /// Bytes of weights as the worker holds them: the weight files' size, or for the
    /// encoders mlxd runs itself (which compute in float32) their elements x 4.
    pub size_bytes: u64,
    /// Generation models: KV cache bytes per token of one stream (layers x KV heads x head
    /// size x keys and values x the weights' float size), and the model's own context.
    pub kv_bytes_per_token: u64,
    pub model_context: u32,
    /// Tokens of context per generation stream: `max_context` as configured; the worker
    /// uses the smaller of this and the model's own.
    pub max_context: u32,
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
    /// Generation models: whether the chat template takes tools.
    pub tools: bool,
}

impl ModelSpec {
    pub fn new(name: String, kind: ModelKind, path: PathBuf, source: String) -> ModelSpec {
        let memory = MemoryFacts::of(&path, kind);
        let (prompts, default_prompt) = if kind == ModelKind::Embedding { prompts(&path) } else { (Vec::new(), None) };
        let tools = kind == ModelKind::Generation && template_takes_tools(&path);
        ModelSpec {
            name,
            kind,
            path,
            source,
            size_bytes: memory.weights_bytes,
            kv_bytes_per_token: memory.kv_bytes_per_token,
            model_context: memory.context,
            max_context: DEFAULT_MAX_CONTEXT,
            keep_alive: DEFAULT_KEEP_ALIVE,
            adaptive_keep_alive: false,
            pinned: false,
            max_streams: DEFAULT_MAX_STREAMS,
            queue_capacity: QUEUE_PER_BATCH * DEFAULT_MAX_STREAMS,
            prompt_cache_bytes: DEFAULT_PROMPT_CACHE_BYTES,
            prompts,
            default_prompt,
            tools,
        }
    }

    /// Tokens of context each generation stream may use.
    pub fn context(&self) -> u32 {
        if self.model_context == 0 {
            self.max_context
        } else {
            self.model_context.min(self.max_context)
        }
    }

    /// The KV cache of `max_streams` streams of [`ModelSpec::context`] tokens, and the
    /// prompt cache (generation models; 0 for the rest).
    pub fn kv_cache_bytes(&self) -> u64 {
        if self.kind != ModelKind::Generation {
            return 0;
        }
        self.kv_bytes_per_token * u64::from(self.context()) * self.max_streams as u64 + self.prompt_cache_bytes
    }

    /// What the memory budget counts for the model when it is loaded: its weights as
    /// served and its KV caches at their largest.
    pub fn estimated_bytes(&self) -> u64 {
        self.size_bytes + self.kv_cache_bytes()
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

/// Whether a model directory's chat template uses a `tools` variable (the rule the worker
/// applies, `mlxd_runtime.tools.takes_tools`): the template in `tokenizer_config.json`
/// (a string, or named templates), `chat_template.jinja` or `chat_template.json`, where
/// transformers keeps it.
fn template_takes_tools(dir: &Path) -> bool {
    let json = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|config| config.get("chat_template").cloned())
    };
    let mut templates: Vec<String> = Vec::new();
    for template in [json("tokenizer_config.json"), json("chat_template.json")].into_iter().flatten() {
        match template {
            serde_json::Value::String(text) => templates.push(text),
            serde_json::Value::Array(named) => {
                templates.extend(named.iter().filter_map(|t| t.get("template")?.as_str().map(str::to_owned)))
            }
            _ => {}
        }
    }
    templates.extend(std::fs::read_to_string(dir.join("chat_template.jinja")));
    templates.iter().any(|text| mentions_word(text, "tools"))
}

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn a_template_takes_tools_where_transformers_keeps_it() {
        let dir = std::env::temp_dir().join(format!("mlxd-spec-tools-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        assert!(!template_takes_tools(&dir), "no template");
        write("tokenizer_config.json", r#"{"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}"#);
        assert!(!template_takes_tools(&dir));
        write("tokenizer_config.json", r#"{"chat_template": "{% if tools_in_use or mytools %}{% endif %}"}"#);
        assert!(!template_takes_tools(&dir), "only the word itself");
        write("tokenizer_config.json", r#"{"chat_template": "{% if tools %}{{ tools | tojson }}{% endif %}"}"#);
        assert!(template_takes_tools(&dir));
        write(
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "default", "template": "x"}, {"name": "tool_use", "template": "{{ tools }}"}]}"#,
        );
        assert!(template_takes_tools(&dir), "named templates");
        write("tokenizer_config.json", "{}");
        write("chat_template.jinja", "{%- if tools %}<tools>{% endif %}");
        assert!(template_takes_tools(&dir), "chat_template.jinja");
        std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
        write("chat_template.json", r#"{"chat_template": "{{ tools }}"}"#);
        assert!(template_takes_tools(&dir), "chat_template.json");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Whether `word` occurs in `text` with no word character (`\w`) on either side.
fn mentions_word(text: &str, word: &str) -> bool {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(word)
        .any(|(at, _)| !is_word(text[..at].chars().next_back()) && !is_word(text[at + word.len()..].chars().next()))
}

/// What a model directory says about the memory its model takes.
#[derive(Debug, Default, PartialEq, Eq)]
struct MemoryFacts {
    weights_bytes: u64,
    kv_bytes_per_token: u64,
    context: u32,
}

impl MemoryFacts {
    /// Read from the weight files (sizes, safetensors headers) and config.json; what cannot
    /// be read counts as 0 (the worker refuses such a model when it loads it).
    fn of(dir: &Path, kind: ModelKind) -> MemoryFacts {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        name.ends_with(".safetensors") || name.ends_with(".gguf") || name.ends_with(".npz")
                    })
                    .collect()
            })
            .unwrap_or_default();
        let file_bytes: u64 = files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        let headers: Vec<Vec<(String, u64)>> = files.iter().filter_map(|p| safetensors_tensors(p)).collect();
        let (mut float32, mut float16) = (0u64, 0u64);
        for (dtype, elements) in headers.iter().flatten() {
            match dtype.as_str() {
                "F32" => float32 += elements,
                "F16" | "BF16" => float16 += elements,
                _ => {}
            }
        }
        let config = config_json(dir).unwrap_or_default();
        let encoder = config.get("model_type").and_then(|t| t.as_str()).is_some_and(|t| ENCODERS.contains(&t));
        // mlxd's own encoders compute in float32 whatever the files hold.
        let weights_bytes = if encoder && kind != ModelKind::Generation && !headers.is_empty() {
            (float32 + float16) * 4
        } else {
            file_bytes
        };
        if kind != ModelKind::Generation {
            return MemoryFacts { weights_bytes, kv_bytes_per_token: 0, context: 0 };
        }
        // Multimodal configs keep the language model's numbers in `text_config`.
        let text = config.get("text_config").filter(|t| t.is_object()).unwrap_or(&config);
        let number = |keys: &[&str]| -> Option<u64> {
            keys.iter().find_map(|k| text.get(*k).or_else(|| config.get(*k)).and_then(serde_json::Value::as_u64))
        };
        let layers = number(&["num_hidden_layers", "n_layer", "num_layers"]).unwrap_or(0);
        let heads = number(&["num_attention_heads", "n_head"]).unwrap_or(0);
        let kv_heads = number(&["num_key_value_heads", "num_kv_heads"]).unwrap_or(heads);
        let hidden = number(&["hidden_size", "n_embd", "d_model"]).unwrap_or(0);
        let head_dim = number(&["head_dim"]).unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        // The cache holds activations in the weights' float type (MLX-quantized weights
        // keep float16 scales: 2 bytes).
        let float_size = if float32 > float16 { 4 } else { 2 };
        let context = number(&["max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"])
            .map_or(0, |c| c.min(u64::from(u32::MAX)) as u32);
        MemoryFacts { weights_bytes, kv_bytes_per_token: layers * kv_heads * head_dim * 2 * float_size, context }
    }
}

/// Each tensor's dtype and element count, from a safetensors file's header (`None` for a
/// file that is not one or whose header cannot be read).
fn safetensors_tensors(path: &Path) -> Option<Vec<(String, u64)>> {
    use std::io::Read;
    if path.extension().is_none_or(|e| e != "safetensors") {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).ok()?;
    let len = u64::from_le_bytes(prefix);
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    Some(
        header
            .iter()
            .filter(|(name, _)| *name != "__metadata__")
            .filter_map(|(_, tensor)| {
                let dtype = tensor.get("dtype")?.as_str()?.to_owned();
                let shape = tensor.get("shape")?.as_array()?;
                Some((dtype, shape.iter().map(|d| d.as_u64().unwrap_or(0)).product()))
            })
            .collect(),
    )
}

pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::After(Duration::from_secs(300));

/// Generation streams per model decoded together, unless configured.
pub const DEFAULT_MAX_STREAMS: usize = 8;
/// Tokens of context per generation stream, unless configured (at most the model's own).
pub const DEFAULT_MAX_CONTEXT: u32 = 8192;
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

    /// A safetensors file with these (name, dtype, shape) tensors, zero-filled.
    fn safetensors(path: &Path, tensors: &[(&str, &str, &[u64])]) {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for (name, dtype, shape) in tensors {
            let size = if *dtype == "F32" || *dtype == "U32" { 4 } else { 2 };
            let bytes = shape.iter().product::<u64>() * size;
            header.insert(
                (*name).to_owned(),
                serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes] }),
            );
            offset += bytes;
        }
        let header = serde_json::Value::Object(header).to_string();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.resize(file.len() + offset as usize, 0);
        std::fs::write(path, file).unwrap();
    }

    #[test]
    fn the_budget_counts_weights_as_served_and_the_kv_cache_at_the_allowed_context() {
        let root = std::env::temp_dir().join(format!("mlxd-spec-memory-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // A causal LM in float16: 4 layers, 8 heads of 16 (2 KV heads), context 4096.
        let lm = root.join("lm");
        std::fs::create_dir_all(&lm).unwrap();
        std::fs::write(
            lm.join("config.json"),
            r#"{"model_type": "llama", "num_hidden_layers": 4, "num_attention_heads": 8,
                "num_key_value_heads": 2, "hidden_size": 128, "max_position_embeddings": 4096}"#,
        )
        .unwrap();
        safetensors(&lm.join("model.safetensors"), &[("w", "F16", &[128, 128]), ("e", "F16", &[100, 128])]);
        let mut spec = ModelSpec::new("lm".into(), ModelKind::Generation, lm.clone(), "test".into());
        let file = std::fs::metadata(lm.join("model.safetensors")).unwrap().len();
        assert_eq!(spec.size_bytes, file, "an mlx-lm model is held as its files are");
        // keys and values: 4 layers x 2 KV heads x 16 x 2 x 2 bytes
        assert_eq!(spec.kv_bytes_per_token, 4 * 2 * 16 * 2 * 2);
        assert_eq!(spec.model_context, 4096);
        spec.max_streams = 3;
        spec.prompt_cache_bytes = 1000;
        assert_eq!(spec.context(), 4096, "the default max_context (8192) is above the model's own");
        assert_eq!(spec.estimated_bytes(), file + 512 * 4096 * 3 + 1000);
        spec.max_context = 1024;
        assert_eq!(spec.estimated_bytes(), file + 512 * 1024 * 3 + 1000);

        // An encoder stored in float16 is computed in float32: twice its files' tensors.
        let encoder = root.join("enc");
        std::fs::create_dir_all(&encoder).unwrap();
        std::fs::write(encoder.join("config.json"), r#"{"model_type": "bert", "max_position_embeddings": 512}"#)
            .unwrap();
        safetensors(&encoder.join("model.safetensors"), &[("w", "F16", &[64, 32]), ("b", "F32", &[32])]);
        let spec = ModelSpec::new("enc".into(), ModelKind::Embedding, encoder, "test".into());
        assert_eq!(spec.size_bytes, (64 * 32 + 32) * 4);
        assert_eq!(spec.estimated_bytes(), spec.size_bytes, "no KV cache for an encoder");
        let _ = std::fs::remove_dir_all(&root);
    }
}
