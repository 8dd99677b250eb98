//! The mmap pool: each weight file mapped read-only once, however many models (or names)
//! use it, and its header checked before any worker sees the file.
//!
//! Files are keyed by (device, inode), so a blob that two imported models share through
//! their store directories is one mapping. Before a worker loads a model, the pool maps and
//! checks its safetensors files and asks the kernel to read them ahead (`MADV_WILLNEED`),
//! so a reload after an idle unload reads from the page cache. A mapping lives as long as
//! some loaded model holds it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use memmap2::{Advice, Mmap};
use mlxd_proto::{ErrorCode, WireError};

use super::safetensors::{self, Header};

/// One mapped, checked weight file.
#[derive(Debug)]
pub struct Mapped {
    pub path: PathBuf,
    pub header: Header,
    mmap: Mmap,
}

impl Mapped {
    pub fn len(&self) -> u64 {
        self.mmap.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }
}

/// What a loaded model holds of the pool.
#[derive(Debug, Default)]
pub struct Pinned {
    pub files: Vec<Arc<Mapped>>,
}

#[derive(Debug, Default)]
pub struct WeightPool {
    maps: Mutex<HashMap<(u64, u64), Weak<Mapped>>>,
}

impl WeightPool {
    /// Maps and checks every `*.safetensors` file of the model directory `dir` (following
    /// symlinks into the store), warming their pages.
    pub fn prepare(&self, model: &str, dir: &Path) -> Result<Pinned, WireError> {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| refuse(model, dir, &e.to_string()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        for path in paths {
            files.push(self.map(model, &path)?);
        }
        Ok(Pinned { files })
    }

    fn map(&self, model: &str, path: &Path) -> Result<Arc<Mapped>, WireError> {
        let file = std::fs::File::open(path).map_err(|e| refuse(model, path, &e.to_string()))?;
        let meta = file.metadata().map_err(|e| refuse(model, path, &e.to_string()))?;
        let key = (meta.dev(), meta.ino());
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = maps.get(&key).and_then(Weak::upgrade) {
            let _ = existing.mmap.advise(Advice::WillNeed);
            return Ok(existing);
        }
        // SAFETY: the mapping is read-only; files in the store are written once (to a
        // temporary name, then renamed) and never modified in place. A file changed under
        // us by someone else could show torn data to the header check, which then fails;
        // it cannot make this process write anywhere.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| refuse(model, path, &e.to_string()))?;
        let header = safetensors::parse(&mmap).map_err(|e| refuse(model, path, &e.to_string()))?;
        let _ = mmap.advise(Advice::WillNeed);
        let mapped =
            Arc::new(Mapped { path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()), header, mmap });
        maps.retain(|_, weak| weak.strong_count() > 0);
        maps.insert(key, Arc::downgrade(&mapped));
        Ok(mapped)
    }

    /// The mappings alive now.
    pub fn mapped(&self) -> Vec<Arc<Mapped>> {
        let maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<Arc<Mapped>> = maps.values().filter_map(Weak::upgrade).collect();
        live.sort_by(|a, b| a.path.cmp(&b.path));
        live
    }
}

fn refuse(model: &str, path: &Path, problem: &str) -> WireError {
    WireError::new(ErrorCode::BadRequest, format!("model {model}: weight file {} refused: {problem}", path.display()))
}
