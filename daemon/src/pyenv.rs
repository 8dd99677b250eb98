//! Finding the Python virtualenv that workers embed, and checking it matches the libpython
//! this binary links. The supervisor only reads files here; it never runs Python.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Environment variable naming the virtualenv (its root directory).
pub const PYTHON_ENV: &str = "MLXD_PYTHON";

/// `major.minor` of the libpython this binary was built against (from build.rs).
pub const LINKED_PYTHON: &str = env!("MLXD_LINKED_PYTHON");

/// A virtualenv with the MLX runtime installed.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    pub root: PathBuf,
    pub site_packages: PathBuf,
    /// `major.minor`, from pyvenv.cfg.
    pub version: String,
}

impl PythonEnv {
    /// Finds the virtualenv: `explicit` (flag or config), else `$MLXD_PYTHON`, else
    /// `$VIRTUAL_ENV`, else a `.venv` beside or above the running executable (a source
    /// checkout after `make setup`), else `$XDG_DATA_HOME/mlxd/venv`.
    pub fn discover(explicit: Option<&Path>) -> Result<PythonEnv> {
        let mut tried = Vec::new();
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(path) = explicit {
            return PythonEnv::open(path);
        }
        if let Some(path) = std::env::var_os(PYTHON_ENV).filter(|v| !v.is_empty()) {
            return PythonEnv::open(Path::new(&path)).with_context(|| format!("${PYTHON_ENV}"));
        }
        if let Some(path) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(path));
        }
        if let Ok(exe) = std::env::current_exe() {
            let exe = exe.canonicalize().unwrap_or(exe);
            for dir in exe.ancestors().skip(1) {
                candidates.push(dir.join(".venv"));
            }
        }
        if let Some(data) = data_home() {
            candidates.push(data.join("mlxd").join("venv"));
        }
        for candidate in candidates {
            if candidate.join("pyvenv.cfg").is_file() {
                return PythonEnv::open(&candidate);
            }
            tried.push(candidate.display().to_string());
        }
        bail!(
            "no Python virtualenv with the MLX runtime found; run `make setup`, or point \
             --python / ${PYTHON_ENV} at one (looked in: {})",
            tried.join(", ")
        )
    }

    /// Opens the virtualenv at `root`, checking its Python matches the linked libpython.
    pub fn open(root: &Path) -> Result<PythonEnv> {
        let cfg_path = root.join("pyvenv.cfg");
        let cfg = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("{} is not a virtualenv (cannot read {})", root.display(), cfg_path.display()))?;
        let version =
            pyvenv_version(&cfg).with_context(|| format!("{} names no Python version", cfg_path.display()))?;
        if version != LINKED_PYTHON {
            bail!(
                "the virtualenv at {} uses Python {version}, but mlxd is linked against \
                 libpython {LINKED_PYTHON}; recreate the virtualenv with python{LINKED_PYTHON} \
                 or rebuild mlxd with PYO3_PYTHON pointing at a Python {version}",
                root.display()
            );
        }
        let site_packages = root.join("lib").join(format!("python{version}")).join("site-packages");
        if !site_packages.is_dir() {
            bail!("{} has no {}", root.display(), site_packages.display());
        }
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let site_packages = site_packages.canonicalize().unwrap_or(site_packages);
        Ok(PythonEnv { root, site_packages, version })
    }
}

/// `major.minor` from a pyvenv.cfg (`version = 3.11.7` or `version_info = 3.11.7.final.0`).
fn pyvenv_version(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        if !matches!(key.trim(), "version" | "version_info") {
            return None;
        }
        let mut parts = value.trim().split('.');
        let (major, minor) = (parts.next()?, parts.next()?);
        Some(format!("{major}.{minor}"))
    })
}

pub(crate) fn data_home() -> Option<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions() {
        assert_eq!(pyvenv_version("home = /x\nversion = 3.11.7\n").as_deref(), Some("3.11"));
        assert_eq!(pyvenv_version("version_info = 3.12.1.final.0").as_deref(), Some("3.12"));
        assert_eq!(pyvenv_version("home = /x"), None);
    }

    #[test]
    fn refuses_mismatched_python() {
        let dir = std::env::temp_dir().join(format!("mlxd-pyenv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pyvenv.cfg"), "version = 2.7.18\n").unwrap();
        let err = PythonEnv::open(&dir).unwrap_err().to_string();
        assert!(err.contains("Python 2.7") && err.contains(LINKED_PYTHON), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
