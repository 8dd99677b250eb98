//! The MLX thread: the embedded interpreter, the model adapter from `mlxd_runtime`, and
//! the job loop. Everything that touches Python or MLX runs on this one thread.

use std::collections::HashMap;
use std::path::Path;

use mlxd_proto::worker::{FromWorker, WorkerReady};
use mlxd_proto::{LoadStage, ModelKind};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::mpsc;

use super::handoff::{Pulse, WorkItem, WorkerArgs};
use super::pyerr::python_error;
use super::streams::{batch_engine, Streams};
use crate::pyenv::PythonEnv;

pub fn run(
    args: Option<WorkerArgs>,
    python: &Path,
    mut items: mpsc::Receiver<WorkItem>,
    out: mpsc::Sender<FromWorker>,
    pulse: &std::sync::Arc<Pulse>,
) {
    let _ = out.blocking_send(FromWorker::Progress { stage: LoadStage::Starting, done: 0, total: 1 });
    pulse.progress();
    let args = match args {
        Some(args) => args,
        None => match spare(python, &mut items, &out, pulse) {
            Some(args) => args,
            None => return,
        },
    };
    let args = &args;
    let loaded = PythonEnv::open(&args.python)
        .map_err(|err| format!("{err:#}"))
        .and_then(|env| Python::attach(|py| load(py, &env, args, &out, pulse)));
    let (adapter, engine, ready) = match loaded {
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
    let mut streams = Streams {
        adapter,
        max_streams: args.max_streams,
        prompt_cache_bytes: args.prompt_cache_bytes,
        engine,
        batched: HashMap::new(),
        singles: Vec::new(),
    };
    loop {
        // Wait only when no stream can make progress; otherwise take what has arrived and
        // go on decoding, so new work joins between steps.
        if !streams.runnable() {
            pulse.set_busy(false);
            let item = items.blocking_recv();
            pulse.set_busy(true);
            match item {
                Some(item) => streams.handle(item, &out),
                None => break,
            }
            pulse.progress();
        }
        while let Ok(item) = items.try_recv() {
            streams.handle(item, &out);
            pulse.progress();
        }
        streams.step(&out);
        pulse.progress();
    }
    Python::attach(|py| {
        for stream in streams.singles.drain(..) {
            let _ = stream.stream.bind(py).call_method0("close");
        }
    });
}

/// A spare worker: the interpreter, the virtualenv and every library a load imports (MLX,
/// mlx-lm, tokenizers, transformers) are made ready before any model is known; then it
/// waits, idle, for the `Load` that names its model. `None` if the link closed first (or
/// the environment is broken, which is reported as `LoadFailed`).
fn spare(
    python: &Path,
    items: &mut mpsc::Receiver<WorkItem>,
    out: &mpsc::Sender<FromWorker>,
    pulse: &std::sync::Arc<Pulse>,
) -> Option<WorkerArgs> {
    let warmed = PythonEnv::open(python).map_err(|err| format!("{err:#}")).and_then(|env| {
        Python::attach(|py| -> Result<(), String> {
            use_virtualenv(py, &env.site_packages).map_err(|err| python_error(py, "setting up the virtualenv", err))?;
            let runtime = py.import("mlxd_runtime").map_err(|err| python_error(py, "importing mlxd_runtime", err))?;
            runtime.call_method0("prewarm").map_err(|err| python_error(py, "importing the model libraries", err))?;
            Ok(())
        })
    });
    if let Err(message) = warmed {
        eprintln!("mlxd worker (spare): {message}");
        let _ = out.blocking_send(FromWorker::LoadFailed { message });
        return None;
    }
    // Ready to be adopted: the supervisor hands out only spares that have said so.
    let _ = out.blocking_send(FromWorker::Progress { stage: LoadStage::Starting, done: 1, total: 1 });
    pulse.progress();
    pulse.set_busy(false);
    loop {
        match items.blocking_recv()? {
            WorkItem::Load(model) => {
                pulse.set_busy(true);
                return Some(WorkerArgs::from_load(model, python.to_path_buf()));
            }
            other => eprintln!("mlxd worker (spare): {other:?} before Load; ignored"),
        }
    }
}

type Loaded = (Py<PyAny>, Option<Py<PyAny>>, WorkerReady);

fn load(
    py: Python<'_>,
    env: &PythonEnv,
    args: &WorkerArgs,
    out: &mpsc::Sender<FromWorker>,
    pulse: &std::sync::Arc<Pulse>,
) -> Result<Loaded, String> {
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
    use_virtualenv(py, &env.site_packages).map_err(|err| python_error(py, "setting up the virtualenv", err))?;
    let _ = out.blocking_send(FromWorker::Progress { stage: LoadStage::Weights, done: 0, total: 1 });
    let runtime = py.import("mlxd_runtime").map_err(|err| python_error(py, "importing mlxd_runtime", err))?;
    pulse.progress();
    // Long Python work (a batch's passes, a load's stages) reports progress through this.
    let beat = pulse.clone();
    // Weak: the module keeps this hook for the worker's life, and a strong sender would
    // keep the link's writer (and so the process) alive after the job loop ends.
    let load_progress = out.downgrade();
    let hook = pyo3::types::PyCFunction::new_closure(
        py,
        Some(c"progress"),
        Some(c"Tells the supervisor's watchdog that the work in hand moved forward; (done, total) while loading."),
        move |args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| {
            beat.progress();
            if let (Ok((done, total)), Some(out)) = (args.extract::<(u64, u64)>(), load_progress.upgrade()) {
                // Dropped rather than waited for if the link is backed up: progress is advisory.
                let _ = out.try_send(FromWorker::Progress { stage: LoadStage::Weights, done, total });
            }
        },
    )
    .map_err(|err| python_error(py, "making the progress hook", err))?;
    runtime
        .call_method1("set_progress_hook", (hook,))
        .map_err(|err| python_error(py, "installing the progress hook", err))?;
    let kind = mlxd_proto::worker::kind_name(args.kind);
    let path = args.path.to_string_lossy().into_owned();
    let options = pyo3::types::PyDict::new(py);
    if args.kind == ModelKind::Generation {
        options.set_item("max_context", args.max_context).map_err(|err| python_error(py, "load options", err))?;
    }
    let adapter = runtime
        .call_method1("load", (kind, path, options))
        .map_err(|err| python_error(py, &format!("loading {}", args.path.display()), err))?;
    let info = adapter.call_method0("info").map_err(|err| python_error(py, "reading model info", err))?;
    let get_u32 = |key: &str| -> u32 { info.get_item(key).ok().and_then(|v| v.extract::<u32>().ok()).unwrap_or(0) };
    let backend =
        info.get_item("backend").ok().and_then(|v| v.extract::<String>().ok()).unwrap_or_else(|| "unknown".into());
    let (engine, single_stream) = match args.kind {
        ModelKind::Generation => batch_engine(py, &adapter, args.max_streams, args.prompt_cache_bytes)?,
        ModelKind::Embedding | ModelKind::Rerank => (None, None),
    };
    if let Some(reason) = &single_stream {
        eprintln!("mlxd worker ({}): streams run one by one, not batched: {reason}", args.name);
    }
    let _ = out.blocking_send(FromWorker::Progress { stage: LoadStage::Weights, done: 1, total: 1 });
    let ready = WorkerReady {
        pid: std::process::id(),
        kind: args.kind,
        dim: get_u32("dim"),
        max_seq_len: get_u32("max_seq_len"),
        backend,
        python_version: Python::version_str().split_whitespace().next().unwrap_or_default().to_string(),
        single_stream,
    };
    if args.kind == ModelKind::Embedding && ready.dim == 0 {
        return Err("the embedding adapter reported no dimension".into());
    }
    Ok((adapter.unbind(), engine, ready))
}

/// Makes the interpreter see the virtualenv as `python -m venv` would: its site-packages
/// (with .pth files, for the editable mlxd_runtime) and not the base installation's.
pub(crate) fn use_virtualenv(py: Python<'_>, site_packages: &Path) -> PyResult<()> {
    let sys = py.import("sys")?;
    sys.setattr("argv", vec!["mlxd-worker"])?;
    let path = sys.getattr("path")?;
    let kept: Vec<String> = path
        .extract::<Vec<String>>()?
        .into_iter()
        .filter(|p| !(p.ends_with("site-packages") || p.ends_with("dist-packages")))
        .collect();
    sys.setattr("path", kept)?;
    py.import("site")?.call_method1("addsitedir", (site_packages.to_string_lossy().into_owned(),))?;
    Ok(())
}
