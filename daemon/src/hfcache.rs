//! Models already on disk in the Hugging Face hub cache, named `hf:ORG/NAME[@REVISION]`.
//!
//! Only reads the cache as `huggingface_hub` lays it out; never downloads. The cache is
//! `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. A repository lives in
//! `models--ORG--NAME/`: `refs/REVISION` holds the commit a branch or tag points at, and
//! `snapshots/COMMIT/` the files of that commit (symbolic links into `blobs/`). A
//! revision is a branch or tag name (default `main`) or a commit hash.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `hf:ORG/NAME[@REVISION]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfRef {
    pub repo: String,
    pub revision: Option<String>,
}

impl HfRef {
    /// `Some` for a string that starts with `hf:`; an error if the rest is not a repository id.
    pub fn parse(text: &str) -> Option<Result<HfRef>> {
        let rest = text.strip_prefix("hf:")?;
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision.to_owned())),
            None => (rest, None),
        };
        let valid_part = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| valid_part(p)) {
            return Some(Err(anyhow::anyhow!("{text:?}: expected hf:ORG/NAME or hf:ORG/NAME@REVISION")));
        }
        if revision.as_deref().is_some_and(|r| r.is_empty() || r.contains("..") || r.starts_with('/')) {
            return Some(Err(anyhow::anyhow!("{text:?}: the revision after @ is not a branch, tag or commit")));
        }
        Some(Ok(HfRef { repo: repo.to_owned(), revision }))
    }

    fn repo_dir(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo.replace('/', "--")))
    }

    /// The snapshot directory in `cache`, or an error that says what is missing and how to
    /// get it (mlxd itself never downloads).
    pub fn resolve_in(&self, cache: &Path) -> Result<PathBuf> {
        let revision = self.revision.as_deref().unwrap_or("main");
        let repo_dir = self.repo_dir(cache);
        let fetch = format!(
            "fetch it first, e.g. `huggingface-cli download {}{}` (mlxd never downloads)",
            self.repo,
            self.revision.as_deref().map(|r| format!(" --revision {r}")).unwrap_or_default()
        );
        if !repo_dir.is_dir() {
            bail!("hf:{} is not in the Hugging Face cache at {}; {fetch}", self.repo, cache.display());
        }
        let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
            // A ref holds a commit hash, nothing else (never a path).
            Ok(commit) if is_commit(commit.trim()) => commit.trim().to_owned(),
            Ok(_) => bail!(
                "hf:{}: {} does not hold a commit hash",
                self.repo,
                repo_dir.join("refs").join(revision).display()
            ),
            // A commit hash names its snapshot directly.
            Err(_) if is_commit(revision) => revision.to_owned(),
            Err(_) => bail!(
                "hf:{}: the cache at {} has no revision {revision:?} (it has: {}); {fetch}",
                self.repo,
                cache.display(),
                revisions(&repo_dir).join(", ")
            ),
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        if !snapshot.join("config.json").is_file() {
            bail!(
                "hf:{}@{revision}: snapshot {} has no config.json (an incomplete download?); {fetch}",
                self.repo,
                snapshot.display()
            );
        }
        Ok(snapshot)
    }
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// The revisions (refs) a cached repository has.
fn revisions(repo_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_dir.join("refs"))
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Where the hub cache is, from the environment as `huggingface_hub` reads it.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let cache =
        var("XDG_CACHE_HOME").unwrap_or_else(|| var("HOME").unwrap_or_else(|| PathBuf::from("/")).join(".cache"));
    cache.join("huggingface").join("hub")
}

/// A model directory given as a path or as `hf:ORG/NAME[@REVISION]`.
pub fn model_path(text: &str) -> Result<PathBuf> {
    match HfRef::parse(text) {
        Some(reference) => reference?.resolve_in(&cache_dir()),
        None => Ok(PathBuf::from(text)),
    }
}

/// One snapshot in the cache.
#[derive(Debug, Clone)]
pub struct Cached {
    /// `hf:ORG/NAME` (with `@REVISION` unless it is `main`).
    pub name: String,
    pub path: PathBuf,
}

/// Every snapshot a ref points at, in the cache at `cache` (models only; datasets and
/// spaces live under other prefixes).
pub fn list_in(cache: &Path) -> Result<Vec<Cached>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(cache) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err).with_context(|| format!("reading {}", cache.display())),
    };
    for entry in entries.flatten() {
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        let Some(repo) = dir_name.strip_prefix("models--").and_then(|r| r.split_once("--")) else { continue };
        let repo = format!("{}/{}", repo.0, repo.1);
        if !matches!(HfRef::parse(&format!("hf:{repo}")), Some(Ok(_))) {
            continue;
        }
        for revision in revisions(&entry.path()) {
            let reference = HfRef { repo: repo.clone(), revision: Some(revision.clone()) };
            if let Ok(path) = reference.resolve_in(cache) {
                let name = if revision == "main" { format!("hf:{repo}") } else { format!("hf:{repo}@{revision}") };
                found.push(Cached { name, path });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_are_refused() {
        assert_eq!(
            HfRef::parse("hf:mlx-community/Qwen3-0.6B-4bit").unwrap().unwrap(),
            HfRef { repo: "mlx-community/Qwen3-0.6B-4bit".into(), revision: None }
        );
        assert_eq!(HfRef::parse("hf:a/b@v1.0").unwrap().unwrap().revision.as_deref(), Some("v1.0"));
        assert!(HfRef::parse("/models/x").is_none());
        for bad in ["hf:", "hf:a", "hf:a/b/c", "hf:../b", "hf:a/b@", "hf:a/b@../../etc"] {
            assert!(HfRef::parse(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshots_resolve_by_branch_and_commit_and_missing_ones_say_so() {
        let cache = std::env::temp_dir().join(format!("mlxd-hf-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = cache.join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        std::fs::write(repo.join("snapshots").join(commit).join("config.json"), "{}").unwrap();
        let main = HfRef::parse("hf:org/tiny").unwrap().unwrap();
        assert_eq!(main.resolve_in(&cache).unwrap(), repo.join("snapshots").join(commit));
        let pinned = HfRef::parse(&format!("hf:org/tiny@{commit}")).unwrap().unwrap();
        assert_eq!(pinned.resolve_in(&cache).unwrap(), repo.join("snapshots").join(commit));
        let missing = HfRef::parse("hf:org/other").unwrap().unwrap().resolve_in(&cache).unwrap_err().to_string();
        assert!(missing.contains("not in the Hugging Face cache") && missing.contains("never downloads"), "{missing}");
        let branch = HfRef::parse("hf:org/tiny@dev").unwrap().unwrap().resolve_in(&cache).unwrap_err().to_string();
        assert!(branch.contains("no revision \"dev\"") && branch.contains("main"), "{branch}");
        // A ref holds a commit, never a path out of the cache.
        std::fs::write(repo.join("refs/evil"), "../../../../etc").unwrap();
        let evil = HfRef::parse("hf:org/tiny@evil").unwrap().unwrap().resolve_in(&cache).unwrap_err().to_string();
        assert!(evil.contains("does not hold a commit hash"), "{evil}");
        let listed = list_in(&cache).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "hf:org/tiny");
        let _ = std::fs::remove_dir_all(&cache);
    }
}
