//! The model store: imported models, one directory each under `<store>/models/<name>/`,
//! written atomically (staged in a hidden sibling, fsynced, renamed into place) so a crash
//! mid-import never leaves a half model visible. Each holds `mlxd-source.json` saying where
//! it came from. (Content addressing and deduplication of blobs build on this layout.)

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mlxd_proto::ModelKind;
use serde::{Deserialize, Serialize};

use crate::config::ModelSpec;

/// Environment variable naming the store directory.
pub const STORE_ENV: &str = "MLXD_STORE";

/// `explicit`, else `$MLXD_STORE`, else `$XDG_DATA_HOME/mlxd`, else `~/.local/share/mlxd`.
pub fn store_root(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os(STORE_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    crate::pyenv::data_home().unwrap_or_else(|| PathBuf::from("/var/lib")).join("mlxd")
}

/// Where a model came from; written by import, shown by `mlxctl models`. Two imports are
/// the same when the source's content (SHA-256) and the conversion match, wherever the
/// source file happens to live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    pub source: String,
    pub source_sha256: String,
    pub source_bytes: u64,
    /// "quantized" (kept as in the source), "float16", "float32", or "copied".
    pub dtype: String,
}

impl Provenance {
    pub fn of(source: &Path, dtype: &str) -> Result<Provenance> {
        let (source_sha256, source_bytes) = hash_source(source)?;
        Ok(Provenance { source: source.display().to_string(), source_sha256, source_bytes, dtype: dtype.to_string() })
    }

    pub fn same_import(&self, other: &Provenance) -> bool {
        self.source_sha256 == other.source_sha256 && self.dtype == other.dtype
    }
}

/// SHA-256 of a file, or of a directory's files (relative path and content, sorted).
fn hash_source(source: &Path) -> Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let files = if source.is_dir() {
        let mut files = walk(source)?;
        files.sort();
        files
    } else {
        vec![source.to_path_buf()]
    };
    for file in files {
        if source.is_dir() {
            hasher.update(file.strip_prefix(source).unwrap_or(&file).to_string_lossy().as_bytes());
            hasher.update([0]);
        }
        let mut reader = std::fs::File::open(&file).with_context(|| format!("reading {}", file.display()))?;
        total += std::io::copy(&mut reader, &mut hasher)?;
    }
    let digest = hasher.finalize();
    Ok((digest.iter().map(|b| format!("{b:02x}")).collect(), total))
}

pub const PROVENANCE_FILE: &str = "mlxd-source.json";

pub fn models_dir(root: &Path) -> PathBuf {
    root.join("models")
}

pub fn read_provenance(model_dir: &Path) -> Option<Provenance> {
    let text = std::fs::read_to_string(model_dir.join(PROVENANCE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

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

/// The models in the store.
pub fn list(root: &Path) -> Vec<ModelSpec> {
    let Ok(entries) = std::fs::read_dir(models_dir(root)) else { return Vec::new() };
    let mut models: Vec<ModelSpec> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if check_name(&name).is_err() {
                return None; // staging directories and strays
            }
            let path = entry.path();
            let kind = match detect_kind(&path) {
                Ok(kind) => kind,
                Err(err) => {
                    tracing::warn!(model = %name, "skipping {}: {err:#}", path.display());
                    return None;
                }
            };
            let source = match read_provenance(&path) {
                Some(p) => format!("imported from {} ({})", p.source, p.dtype),
                None => path.display().to_string(),
            };
            Some(ModelSpec::new(name, kind, path, source))
        })
        .collect();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models
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

/// A hidden staging directory beside the final one; renamed into place when complete.
#[derive(Debug)]
pub struct Staging {
    pub path: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Staging {
    pub fn new(root: &Path, name: &str) -> Result<Staging> {
        let models = models_dir(root);
        std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
        let path = models.join(format!(".{name}.importing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Ok(Staging { path, target: models.join(name), done: false })
    }

    /// fsyncs every file, then renames the staging directory to the model's name,
    /// replacing an existing model only when `replace` is set.
    pub fn commit(mut self, replace: bool) -> Result<PathBuf> {
        for entry in walk(&self.path)? {
            std::fs::File::open(&entry)?.sync_all()?;
        }
        if self.target.exists() {
            if !replace {
                bail!("{} exists; pass --force to replace it", self.target.display());
            }
            let old = self.target.with_file_name(format!(
                ".{}.replaced-{}",
                self.target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                std::process::id()
            ));
            std::fs::rename(&self.target, &old)?;
            std::fs::rename(&self.path, &self.target)?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.path, &self.target)?;
        }
        if let Some(parent) = self.target.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        self.done = true;
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            files.extend(walk(&entry.path())?);
        } else {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// Copies a model directory's files (not hidden ones) into `to`.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
