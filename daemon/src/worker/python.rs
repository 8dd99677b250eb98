//! The MLX thread: the embedded interpreter, the model adapter from `mlxd_runtime`, and
//! the job loop. Everything that touches Python or MLX runs on this one thread.

use std::path::Path;

use mlxd_proto::worker::{FromWorker, Job, JobId, JobOutput, WorkerReady};
use mlxd_proto::{ErrorCode, LoadStage, ModelKind, WireError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use tokio::sync::mpsc;

use super::WorkerArgs;
use crate::pyenv::PythonEnv;

pub fn run(
    args: &WorkerArgs,
    mut jobs: mpsc::Receiver<(JobId, Job)>,
    out: mpsc::Sender<FromWorker>,
) {
    let _ = out.blocking_send(FromWorker::Progress {
        stage: LoadStage::Starting,
        done: 0,
        total: 1,
    });
    let loaded = PythonEnv::open(&args.python)
        .map_err(|err| format!("{err:#}"))
        .and_then(|env| Python::attach(|py| load(py, &env, args, &out)));
    let (adapter, ready) = match loaded {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("mlxd worker ({}): {message}", args.name);
            let _ = out.blocking_send(FromWorker::LoadFailed { message });
            return;
        }
    };
    if out.blocking_send(FromWorker::Ready(ready)).is_err() {
        return;
    }
    while let Some((id, job)) = jobs.blocking_recv() {
        let result = Python::attach(|py| run_job(py, &adapter, job));
        if out.blocking_send(FromWorker::Done { id, result }).is_err() {
            break;
        }
    }
}

fn load(
    py: Python<'_>,
    env: &PythonEnv,
    args: &WorkerArgs,
    out: &mpsc::Sender<FromWorker>,
) -> Result<(Py<PyAny>, WorkerReady), String> {
    let (major, minor) = {
        let v = py.version_info();
        (v.major, v.minor)
    };
    if format!("{major}.{minor}") != env.version {
        return Err(format!(
            "the embedded interpreter is Python {major}.{minor} but the virtualenv {} is Python {}; \
             they must match (rebuild mlxd against the virtualenv's Python)",
            env.root.display(),
            env.version
        ));
    }
    use_virtualenv(py, &env.site_packages)
        .map_err(|err| python_error(py, "setting up the virtualenv", err))?;
    let _ = out.blocking_send(FromWorker::Progress {
        stage: LoadStage::Weights,
        done: 0,
        total: 1,
    });
    let runtime = py
        .import("mlxd_runtime")
        .map_err(|err| python_error(py, "importing mlxd_runtime", err))?;
    let kind = crate::supervise::kind_arg(args.kind);
    let path = args.path.to_string_lossy().into_owned();
    let adapter = runtime
        .call_method1("load", (kind, path))
        .map_err(|err| python_error(py, &format!("loading {}", args.path.display()), err))?;
    let info = adapter
        .call_method0("info")
        .map_err(|err| python_error(py, "reading model info", err))?;
    let get_u32 = |key: &str| -> u32 {
        info.get_item(key)
            .ok()
            .and_then(|v| v.extract::<u32>().ok())
            .unwrap_or(0)
    };
    let backend = info
        .get_item("backend")
        .ok()
        .and_then(|v| v.extract::<String>().ok())
        .unwrap_or_else(|| "unknown".into());
    let _ = out.blocking_send(FromWorker::Progress {
        stage: LoadStage::Weights,
        done: 1,
        total: 1,
    });
    let ready = WorkerReady {
        pid: std::process::id(),
        kind: args.kind,
        dim: get_u32("dim"),
        max_seq_len: get_u32("max_seq_len"),
        backend,
        python_version: Python::version_str()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    if args.kind == ModelKind::Embedding && ready.dim == 0 {
        return Err("the embedding adapter reported no dimension".into());
    }
    Ok((adapter.unbind(), ready))
}

/// Makes the interpreter see the virtualenv as `python -m venv` would: its site-packages
/// (with .pth files, for the editable mlxd_runtime) and not the base installation's.
fn use_virtualenv(py: Python<'_>, site_packages: &Path) -> PyResult<()> {
    let sys = py.import("sys")?;
    sys.setattr("argv", vec!["mlxd-worker"])?;
    let path = sys.getattr("path")?;
    let kept: Vec<String> = path
        .extract::<Vec<String>>()?
        .into_iter()
        .filter(|p| !(p.ends_with("site-packages") || p.ends_with("dist-packages")))
        .collect();
    sys.setattr("path", kept)?;
    py.import("site")?.call_method1(
        "addsitedir",
        (site_packages.to_string_lossy().into_owned(),),
    )?;
    Ok(())
}

fn run_job(py: Python<'_>, adapter: &Py<PyAny>, job: Job) -> Result<JobOutput, WireError> {
    let adapter = adapter.bind(py);
    let model_error = |err: PyErr| {
        WireError::new(
            ErrorCode::Internal,
            format!("model error: {}", python_error(py, "running a job", err)),
        )
    };
    match job {
        Job::Embed { texts, normalize } => {
            let result = adapter
                .call_method1("embed", (texts, normalize))
                .map_err(model_error)?;
            embeddings_from(&result).map_err(model_error)
        }
        Job::Tokenize {
            text,
            add_special_tokens,
        } => {
            let tokens = adapter
                .call_method1("tokenize", (text, add_special_tokens))
                .map_err(model_error)?;
            Ok(JobOutput::Tokens(tokens.extract().map_err(model_error)?))
        }
        Job::Detokenize { tokens } => {
            let text = adapter
                .call_method1("detokenize", (tokens,))
                .map_err(model_error)?;
            Ok(JobOutput::Text(text.extract().map_err(model_error)?))
        }
    }
}

/// `(bytes, count, dim, tokens)` from the adapter into row-major f32 vectors.
fn embeddings_from(result: &Bound<'_, PyAny>) -> PyResult<JobOutput> {
    let tuple = result.cast::<PyTuple>()?;
    let raw = tuple.get_item(0)?;
    let raw = raw.cast::<PyBytes>()?.as_bytes();
    let count: u32 = tuple.get_item(1)?.extract()?;
    let dim: u32 = tuple.get_item(2)?.extract()?;
    let tokens: u64 = tuple.get_item(3)?.extract()?;
    if raw.len() != count as usize * dim as usize * 4 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "adapter returned {} bytes for {count} x {dim} float32 values",
            raw.len()
        )));
    }
    let vectors = raw
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(JobOutput::Embeddings {
        count,
        dim,
        vectors,
        tokens,
    })
}

/// One line for the wire; the full traceback goes to the worker's stderr (the daemon log).
fn python_error(py: Python<'_>, doing: &str, err: PyErr) -> String {
    err.display(py);
    format!("{doing}: {err}")
}
