//! The model store, content-addressed:
//!
//! ```text
//! <store>/blobs/sha256/<hex>        every file of every model, once, read-only
//! <store>/models/<name>/            one directory per model: symlinks to its blobs, and
//!         mlxd-manifest.json        its manifest (files → hashes, kind, provenance)
//! ```
//!
//! Importing the same weights under two names stores them once (and the daemon's mmap pool,
//! keyed by inode, maps them once). Writes are atomic: blobs are written to a temporary
//! name, fsynced and renamed; a model directory is assembled under a hidden name and
//! renamed into place, so a crash mid-import never leaves a half model visible.
//! safetensors files are checked and rewritten with 16 KiB-aligned tensors on the way in.
//! `mlxd store verify` re-hashes blobs; `mlxd store gc` removes unreferenced ones.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::spec::{check_name, detect_kind, ModelSpec};
use crate::weights::safetensors;

/// Environment variable naming the store directory.
pub const STORE_ENV: &str = "MLXD_STORE";
pub const MANIFEST_FILE: &str = "mlxd-manifest.json";

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

pub fn models_dir(root: &Path) -> PathBuf {
    root.join("models")
}

pub fn blobs_dir(root: &Path) -> PathBuf {
    root.join("blobs").join("sha256")
}

/// Where a model came from. Two imports are the same when the source's content (SHA-256)
/// and the conversion match, wherever the source file happens to live.
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
        let (source_sha256, source_bytes) = hash_tree(source)?;
        Ok(Provenance { source: source.display().to_string(), source_sha256, source_bytes, dtype: dtype.to_string() })
    }

    pub fn same_import(&self, other: &Provenance) -> bool {
        self.source_sha256 == other.source_sha256 && self.dtype == other.dtype
    }
}

/// A model's manifest: its files by content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kind: String,
    /// Relative path in the model directory → SHA-256 of the blob.
    pub files: BTreeMap<String, String>,
    pub provenance: Provenance,
}

pub fn read_manifest(model_dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(model_dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
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
            let Some(manifest) = read_manifest(&path) else {
                tracing::warn!(model = %name, "skipping {}: no {MANIFEST_FILE} (re-import it)", path.display());
                return None;
            };
            let kind = match detect_kind(&path) {
                Ok(kind) => kind,
                Err(err) => {
                    tracing::warn!(model = %name, "skipping {}: {err:#}", path.display());
                    return None;
                }
            };
            let source = format!("imported from {} ({})", manifest.provenance.source, manifest.provenance.dtype);
            Some(ModelSpec::new(name, kind, path, source))
        })
        .collect();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models
}

/// A hidden working directory under `models/`, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(root: &Path, name: &str, purpose: &str) -> Result<Scratch> {
        let models = models_dir(root);
        std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
        let path = models.join(format!(".{name}.{purpose}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Moves the files of `staged` (a complete model directory) into the store as model
/// `name`: safetensors checked and aligned, every file stored once as a blob, then the
/// model directory of symlinks and its manifest renamed into place.
pub fn ingest(root: &Path, staged: &Path, name: &str, provenance: Provenance, replace: bool) -> Result<PathBuf> {
    let kind = detect_kind(staged)?;
    let blobs = blobs_dir(root);
    std::fs::create_dir_all(&blobs)?;
    let mut files = BTreeMap::new();
    for file in walk(staged)? {
        let relative = file.strip_prefix(staged).unwrap_or(&file).to_string_lossy().into_owned();
        if relative == MANIFEST_FILE {
            continue;
        }
        let hash = store_blob(&blobs, &file).with_context(|| format!("storing {relative}"))?;
        files.insert(relative, hash);
    }
    let manifest = Manifest { name: name.to_string(), kind: format!("{kind:?}").to_lowercase(), files, provenance };

    let view = Scratch::new(root, name, "view")?;
    std::fs::create_dir_all(&view.path)?;
    for (relative, hash) in &manifest.files {
        let link = view.path.join(relative);
        let depth = Path::new(relative).components().count(); // models/<name>/<relative>
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut target = PathBuf::new();
        for _ in 0..depth + 1 {
            target.push("..");
        }
        target.push("blobs/sha256");
        target.push(hash);
        std::os::unix::fs::symlink(&target, &link)?;
    }
    let manifest_path = view.path.join(MANIFEST_FILE);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::File::open(&manifest_path)?.sync_all()?;
    sync_dir(&view.path)?;

    let target = models_dir(root).join(name);
    if target.exists() {
        if !replace {
            bail!("{} exists; pass --force to replace it", target.display());
        }
        let old = Scratch::new(root, name, "replaced")?;
        std::fs::rename(&target, &old.path)?;
        std::fs::rename(&view.path, &target)?;
    } else {
        std::fs::rename(&view.path, &target)?;
    }
    sync_dir(&models_dir(root))?;
    Ok(target)
}

/// Stores one file as a blob (safetensors aligned first) and returns its hash. The file
/// is written once into the blobs directory (aligned, or copied) and renamed into place.
fn store_blob(blobs: &Path, file: &Path) -> Result<String> {
    let temp = tempfile_in(blobs)?;
    let mut aligned = false;
    if file.extension().is_some_and(|e| e == "safetensors") {
        let bytes = std::fs::File::open(file)?;
        // SAFETY: a read-only mapping of a source file; it is only read while mapped.
        let map = unsafe { memmap2::Mmap::map(&bytes)? };
        let header = safetensors::parse(&map).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if !header.is_aligned() {
            safetensors::write_aligned(&map, &header, &temp)?;
            aligned = true;
        }
    }
    if !aligned {
        std::fs::copy(file, &temp)?;
    }
    let (hash, _) = hash_tree(&temp)?;
    let blob = blobs.join(&hash);
    if blob.exists() {
        std::fs::remove_file(&temp)?;
        return Ok(hash);
    }
    let handle = std::fs::File::open(&temp)?;
    handle.sync_all()?;
    let mut permissions = handle.metadata()?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&temp, permissions)?;
    std::fs::rename(&temp, &blob)?;
    Ok(hash)
}

fn tempfile_in(dir: &Path) -> Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(dir.join(format!(".tmp-{}-{n}", std::process::id())))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// SHA-256 of a file, or of a directory's files (relative path and content, sorted).
pub fn hash_tree(source: &Path) -> Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let is_dir = source.is_dir();
    let files = if is_dir { walk(source)? } else { vec![source.to_path_buf()] };
    for file in files {
        if is_dir {
            hasher.update(file.strip_prefix(source).unwrap_or(&file).to_string_lossy().as_bytes());
            hasher.update([0]);
        }
        let mut reader = std::fs::File::open(&file).with_context(|| format!("reading {}", file.display()))?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            total += n as u64;
        }
    }
    let digest = hasher.finalize();
    Ok((digest.iter().map(|b| format!("{b:02x}")).collect(), total))
}

/// Files under `dir`, recursively, sorted; hidden entries skipped.
pub fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `mlxd store verify`: re-hashes every blob and checks every manifest's files exist.
/// Returns the problems found (empty when the store is sound).
pub fn verify(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let blobs = blobs_dir(root);
    if blobs.is_dir() {
        for blob in walk(&blobs)? {
            let name = blob.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let (hash, _) = hash_tree(&blob)?;
            if hash != name {
                problems.push(format!("blob {name} is corrupt: its content hashes to {hash}"));
            }
        }
    }
    for (name, manifest) in manifests(root)? {
        for (relative, hash) in &manifest.files {
            if !blobs.join(hash).is_file() {
                problems.push(format!("model {name}: {relative} refers to missing blob {hash}"));
            }
        }
    }
    Ok(problems)
}

/// `mlxd store gc`: removes blobs no manifest refers to, and leftovers of interrupted
/// imports. Returns (files removed, bytes freed).
pub fn gc(root: &Path) -> Result<(usize, u64)> {
    let referenced: BTreeSet<String> = manifests(root)?.into_iter().flat_map(|(_, m)| m.files.into_values()).collect();
    let (mut removed, mut freed) = (0, 0);
    let blobs = blobs_dir(root);
    if let Ok(entries) = std::fs::read_dir(&blobs) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if referenced.contains(&name) || (name.starts_with(".tmp-") && pid_alive(&name)) {
                continue;
            }
            freed += entry.metadata().map_or(0, |m| m.len());
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if let Ok(entries) = std::fs::read_dir(models_dir(root)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && !pid_alive(&name) {
                std::fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok((removed, freed))
}

/// Whether the pid in a scratch name (`.x.purpose-PID` or `.tmp-PID-N`) is still running.
fn pid_alive(name: &str) -> bool {
    let pid = match name.strip_prefix(".tmp-") {
        Some(rest) => rest.split('-').next().and_then(|p| p.parse::<i32>().ok()),
        None => name.rsplit('-').next().and_then(|p| p.parse::<i32>().ok()),
    };
    // SAFETY: kill with signal 0 only checks for existence.
    pid.is_some_and(|pid| pid > 0 && unsafe { libc::kill(pid, 0) } == 0)
}

fn manifests(root: &Path) -> Result<Vec<(String, Manifest)>> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(models_dir(root)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Some(manifest) = read_manifest(&entry.path()) {
                out.push((name, manifest));
            }
        }
    }
    Ok(out)
}
