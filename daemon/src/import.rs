//! `mlxd import PATH --name NAME`: brings a model into the store.
//!
//! - A GGUF file is converted to an MLX model directory by `mlxd_runtime.gguf` (run here,
//!   in this short-lived command, never in the supervisor): tensors renamed to mlx-lm's
//!   names, quantization kept (or dequantized with `--dtype`), tokenizer rebuilt from the
//!   GGUF metadata.
//! - A model directory (config.json, *.safetensors, tokenizer files) is copied: any
//!   architecture the installed mlx-lm implements (float or MLX-quantized), or a BERT-family
//!   encoder; anything else is refused naming its architecture. `hf:ORG/NAME[@REVISION]`
//!   names a snapshot already in the Hugging Face cache ([`crate::hfcache`]).
//!
//! Re-importing the same content with the same options is a no-op (even with `--force`),
//! so set-up can run it every time.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pyo3::prelude::*;

use crate::pyenv::PythonEnv;
use crate::store::{self, Provenance, Scratch};
use crate::worker::pyerr::{is_exception, python_error};
use crate::worker::python::use_virtualenv;

#[derive(Debug, Clone)]
pub struct ImportArgs {
    pub path: PathBuf,
    pub name: String,
    /// For GGUF: keep the quantization (None) or convert to "float16"/"float32"/"bfloat16".
    pub dtype: Option<String>,
    pub store: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub force: bool,
}

pub fn run(args: ImportArgs) -> Result<()> {
    crate::spec::check_name(&args.name)?;
    let given = crate::hfcache::model_path(&args.path.to_string_lossy())?;
    let source = given.canonicalize().with_context(|| format!("{}", args.path.display()))?;
    let root = store::store_root(args.store.as_deref());
    let target = store::models_dir(&root).join(&args.name);
    let gguf = is_gguf(&source)?;
    if let Some(dtype) = &args.dtype {
        if !gguf {
            bail!("--dtype applies to GGUF imports; {} is a model directory", source.display());
        }
        if !matches!(dtype.as_str(), "float16" | "float32" | "bfloat16") {
            bail!("--dtype must be float16, float32 or bfloat16, not {dtype:?}");
        }
    }
    let label = if gguf { args.dtype.clone().unwrap_or_else(|| "quantized".into()) } else { "copied".into() };
    let provenance = Provenance::of(&source, &label)?;
    if store::read_manifest(&target).is_some_and(|existing| existing.provenance.same_import(&provenance)) {
        println!("{} is already imported from this content ({label}); nothing to do", args.name);
        return Ok(());
    }
    if target.exists() && !args.force {
        bail!("a different model named {} exists in {}; pass --force to replace it", args.name, root.display());
    }

    // A GGUF is converted into a scratch directory; a model directory is ingested as it is
    // (its files are copied once, straight into blobs).
    let staging = Scratch::new(&root, &args.name, "importing")?;
    let (staged, summary) = if gguf {
        let summary = convert_gguf(&source, &staging.path, args.dtype.as_deref(), args.python.as_deref())?;
        (staging.path.clone(), summary)
    } else {
        if !source.join("config.json").is_file() {
            bail!("{} is neither a GGUF file nor a model directory with config.json", source.display());
        }
        (source.clone(), format!("copied {}", source.display()))
    };
    let kind = match PythonEnv::discover(args.python.as_deref()) {
        Ok(env) => crate::spec::check_servable(&staged, &env.site_packages)?,
        Err(_) => crate::spec::detect_kind(&staged)?,
    };
    let path = store::ingest(&root, &staged, &args.name, provenance, args.force)?;
    println!("imported {} ({kind:?}) into {}: {summary}", args.name, path.display());
    Ok(())
}

fn is_gguf(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

fn convert_gguf(source: &Path, out: &Path, dtype: Option<&str>, python: Option<&Path>) -> Result<String> {
    let env = PythonEnv::discover(python)?;
    Python::attach(|py| -> Result<String> {
        use_virtualenv(py, &env.site_packages).map_err(|err| anyhow::anyhow!(python_error(py, "virtualenv", err)))?;
        let gguf = py
            .import("mlxd_runtime.gguf")
            .map_err(|err| anyhow::anyhow!(python_error(py, "importing mlxd_runtime.gguf", err)))?;
        let summary = gguf
            .call_method1("convert", (source.to_string_lossy().into_owned(), out.to_string_lossy().into_owned(), dtype))
            .map_err(|err| {
                // An unsupported file is the user's answer, not a crash: say it in one line.
                if is_exception(py, &err, "UnsupportedModel") {
                    anyhow::anyhow!("{}", err.value(py))
                } else {
                    anyhow::anyhow!(python_error(py, &format!("converting {}", source.display()), err))
                }
            })?;
        Ok(summary.str().map(|s| s.to_string()).unwrap_or_default())
    })
}
