//! The MLX thread: the embedded interpreter, the model adapter from `mlxd_runtime`, and
//! the job loop. Everything that touches Python or MLX runs on this one thread.

use std::path::Path;

use mlxd_proto::worker::{FromWorker, GenerateJob, Job, JobId, JobOutput, WorkerReady};
use mlxd_proto::{ErrorCode, FinishReason, GenerationSummary, LoadStage, ModelKind, PromptInput, WireError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use tokio::sync::mpsc;

use super::{WorkItem, WorkerArgs};
use crate::pyenv::PythonEnv;

use mlxd_proto::MAX_STREAM_CREDIT;

/// A generation in progress on this thread.
struct ActiveStream {
    id: JobId,
    stream: Py<PyAny>,
    credit: u32,
}

pub fn run(args: &WorkerArgs, mut items: mpsc::Receiver<WorkItem>, out: mpsc::Sender<FromWorker>) {
    let _ = out.blocking_send(FromWorker::Progress { stage: LoadStage::Starting, done: 0, total: 1 });
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
    let mut streams: Vec<ActiveStream> = Vec::new();
    loop {
        // Wait only when no stream can make progress; otherwise take what has arrived and
        // go on decoding, so new work joins between steps.
        if !streams.iter().any(|s| s.credit > 0) {
            match items.blocking_recv() {
                Some(item) => handle(&adapter, &mut streams, item, &out),
                None => break,
            }
        }
        while let Ok(item) = items.try_recv() {
            handle(&adapter, &mut streams, item, &out);
        }
        // One step of every stream that has credit; a stream without credit (its client is
        // not reading) costs nothing until credit arrives.
        let mut index = 0;
        while index < streams.len() {
            if streams[index].credit == 0 {
                index += 1;
                continue;
            }
            let finished = Python::attach(|py| step(py, &mut streams[index], &out));
            if finished {
                streams.swap_remove(index);
            } else {
                index += 1;
            }
        }
    }
    Python::attach(|py| {
        for stream in streams.drain(..) {
            let _ = stream.stream.bind(py).call_method0("close");
        }
    });
}

fn handle(adapter: &Py<PyAny>, streams: &mut Vec<ActiveStream>, item: WorkItem, out: &mpsc::Sender<FromWorker>) {
    match item {
        WorkItem::Job(id, Job::Generate(job)) => {
            let credit = job.credit.min(MAX_STREAM_CREDIT);
            match Python::attach(|py| start_stream(py, adapter, job)) {
                Ok(stream) => streams.push(ActiveStream { id, stream, credit }),
                Err(error) => {
                    let _ = out.blocking_send(FromWorker::Done { id, result: Err(error) });
                }
            }
        }
        WorkItem::Job(id, job) => {
            let result = Python::attach(|py| run_job(py, adapter, job));
            let _ = out.blocking_send(FromWorker::Done { id, result });
        }
        WorkItem::Credit(id, events) => {
            if let Some(stream) = streams.iter_mut().find(|s| s.id == id) {
                stream.credit = stream.credit.saturating_add(events).min(MAX_STREAM_CREDIT);
            }
        }
        WorkItem::Cancel(id) => {
            if let Some(index) = streams.iter().position(|s| s.id == id) {
                let stream = streams.swap_remove(index);
                let result = Python::attach(|py| {
                    let _ = stream.stream.bind(py).call_method0("close");
                    summary(py, &stream.stream, FinishReason::Cancelled)
                });
                let _ = out.blocking_send(FromWorker::Done { id, result });
            }
        }
    }
}

fn start_stream(py: Python<'_>, adapter: &Py<PyAny>, job: GenerateJob) -> Result<Py<PyAny>, WireError> {
    let (raw, messages): (Option<String>, Option<Vec<(String, String)>>) = match job.input {
        PromptInput::Raw(text) => (Some(text), None),
        PromptInput::Chat(messages) => (None, Some(messages.into_iter().map(|m| (m.role, m.content)).collect())),
    };
    let params = PyDict::new(py);
    let set = |key: &str, value: Bound<'_, PyAny>| params.set_item(key, value);
    let result = (|| -> PyResult<Py<PyAny>> {
        let p = &job.params;
        // Checked UTF-8 by the daemon; lossy only as a last line of defence.
        let stop: Vec<String> = p.stop.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect();
        set("max_tokens", p.max_tokens.into_pyobject(py)?.into_any())?;
        set("temperature", p.temperature.into_pyobject(py)?.into_any())?;
        set("top_p", p.top_p.into_pyobject(py)?.into_any())?;
        set("top_k", p.top_k.into_pyobject(py)?.into_any())?;
        set("min_p", p.min_p.into_pyobject(py)?.into_any())?;
        set("repetition_penalty", p.repetition_penalty.into_pyobject(py)?.into_any())?;
        set("seed", p.seed.into_pyobject(py)?.into_any())?;
        set("stop", stop.into_pyobject(py)?.into_any())?;
        Ok(adapter.bind(py).call_method1("start", (raw, messages, &params))?.unbind())
    })();
    result.map_err(|err| request_error(py, err))
}

/// Decodes one token of `stream`; true when the stream has finished (and `Done` was sent).
fn step(py: Python<'_>, stream: &mut ActiveStream, out: &mpsc::Sender<FromWorker>) -> bool {
    let stepped =
        stream.stream.bind(py).call_method0("step").and_then(|r| r.extract::<(String, i64, Option<String>)>());
    let (text, token, finish) = match stepped {
        Ok(step) => step,
        Err(err) => {
            let error = WireError::new(
                ErrorCode::Internal,
                format!("generation failed: {}", python_error(py, "decoding", err)),
            );
            let _ = stream.stream.bind(py).call_method0("close");
            let _ = out.blocking_send(FromWorker::Done { id: stream.id, result: Err(error) });
            return true;
        }
    };
    let token = u32::try_from(token).ok();
    if !text.is_empty() || token.is_some() {
        stream.credit -= 1;
        let _ = out.blocking_send(FromWorker::Token { id: stream.id, text, token });
    }
    let Some(finish) = finish else { return false };
    let reason = if finish == "length" { FinishReason::Length } else { FinishReason::Stop };
    let result = summary(py, &stream.stream, reason);
    let _ = out.blocking_send(FromWorker::Done { id: stream.id, result });
    true
}

fn summary(py: Python<'_>, stream: &Py<PyAny>, finish_reason: FinishReason) -> Result<JobOutput, WireError> {
    let read = || -> PyResult<GenerationSummary> {
        let summary = stream.bind(py).call_method0("summary")?;
        Ok(GenerationSummary {
            finish_reason,
            prompt_tokens: summary.get_item("prompt_tokens")?.extract()?,
            completion_tokens: summary.get_item("completion_tokens")?.extract()?,
            prompt_tokens_per_s: summary.get_item("prompt_tps")?.extract()?,
            generation_tokens_per_s: summary.get_item("generation_tps")?.extract()?,
        })
    };
    read().map(JobOutput::Generated).map_err(|err| WireError::internal(python_error(py, "reading the summary", err)))
}

/// Python's `mlxd_runtime.generate.BadRequest` is the client's fault; anything else is ours.
fn request_error(py: Python<'_>, err: PyErr) -> WireError {
    if is_exception(py, &err, "BadRequest") {
        WireError::bad_request(err.value(py).to_string())
    } else {
        WireError::internal(format!("model error: {}", python_error(py, "starting generation", err)))
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
    use_virtualenv(py, &env.site_packages).map_err(|err| python_error(py, "setting up the virtualenv", err))?;
    let _ = out.blocking_send(FromWorker::Progress { stage: LoadStage::Weights, done: 0, total: 1 });
    let runtime = py.import("mlxd_runtime").map_err(|err| python_error(py, "importing mlxd_runtime", err))?;
    let kind = crate::supervise::kind_arg(args.kind);
    let path = args.path.to_string_lossy().into_owned();
    let adapter = runtime
        .call_method1("load", (kind, path))
        .map_err(|err| python_error(py, &format!("loading {}", args.path.display()), err))?;
    let info = adapter.call_method0("info").map_err(|err| python_error(py, "reading model info", err))?;
    let get_u32 = |key: &str| -> u32 { info.get_item(key).ok().and_then(|v| v.extract::<u32>().ok()).unwrap_or(0) };
    let backend =
        info.get_item("backend").ok().and_then(|v| v.extract::<String>().ok()).unwrap_or_else(|| "unknown".into());
    let _ = out.blocking_send(FromWorker::Progress { stage: LoadStage::Weights, done: 1, total: 1 });
    let ready = WorkerReady {
        pid: std::process::id(),
        kind: args.kind,
        dim: get_u32("dim"),
        max_seq_len: get_u32("max_seq_len"),
        backend,
        python_version: Python::version_str().split_whitespace().next().unwrap_or_default().to_string(),
    };
    if args.kind == ModelKind::Embedding && ready.dim == 0 {
        return Err("the embedding adapter reported no dimension".into());
    }
    Ok((adapter.unbind(), ready))
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

fn run_job(py: Python<'_>, adapter: &Py<PyAny>, job: Job) -> Result<JobOutput, WireError> {
    let adapter = adapter.bind(py);
    let model_error = |err: PyErr| {
        WireError::new(ErrorCode::Internal, format!("model error: {}", python_error(py, "running a job", err)))
    };
    match job {
        Job::Embed { texts, normalize } => {
            let result = adapter.call_method1("embed", (texts, normalize)).map_err(model_error)?;
            embeddings_from(&result).map_err(model_error)
        }
        Job::Tokenize { text, add_special_tokens } => {
            let tokens = adapter.call_method1("tokenize", (text, add_special_tokens)).map_err(model_error)?;
            Ok(JobOutput::Tokens(tokens.extract().map_err(model_error)?))
        }
        Job::Detokenize { tokens } => {
            let text = adapter.call_method1("detokenize", (tokens,)).map_err(model_error)?;
            Ok(JobOutput::Text(text.extract().map_err(model_error)?))
        }
        Job::Generate(_) => Err(WireError::internal("a generation reached the one-shot job path")),
    }
}

/// `(bytes, count, dim, tokens)` from the adapter into row-major f32 vectors.
fn embeddings_from(result: &Bound<'_, PyAny>) -> PyResult<JobOutput> {
    let tuple = result.cast::<PyTuple>()?;
    let raw = tuple.get_item(0)?;
    let raw = raw.cast::<PyBytes>()?.as_bytes();
    let count: u32 = tuple.get_item(1)?.extract()?;
    let dim: u32 = tuple.get_item(2)?.extract()?;
    let tokens: Vec<u32> = tuple.get_item(3)?.extract()?;
    if raw.len() != count as usize * dim as usize * 4 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "adapter returned {} bytes for {count} x {dim} float32 values",
            raw.len()
        )));
    }
    let vectors = raw.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(JobOutput::Embeddings { count, dim, vectors, tokens })
}

/// Whether `err` is an exception of the class named `class` (mlxd_runtime's own types).
pub(crate) fn is_exception(py: Python<'_>, err: &PyErr, class: &str) -> bool {
    err.get_type(py).name().is_ok_and(|name| name == class)
}

/// One line for the wire; the full traceback goes to the worker's stderr (the daemon log).
pub(crate) fn python_error(py: Python<'_>, doing: &str, err: PyErr) -> String {
    err.display(py);
    format!("{doing}: {err}")
}
