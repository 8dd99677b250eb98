//! The MLX thread: the embedded interpreter, the model adapter from `mlxd_runtime`, and
//! the job loop. Everything that touches Python or MLX runs on this one thread.

use std::collections::HashMap;
use std::path::Path;

use mlxd_proto::worker::{FromWorker, GenerateJob, Job, JobId, JobOutput, WorkerReady};
use mlxd_proto::{ErrorCode, FinishReason, GenerationSummary, LoadStage, ModelKind, PromptInput, WireError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use tokio::sync::mpsc;

use super::handoff::{Pulse, WorkItem, WorkerArgs};
use crate::pyenv::PythonEnv;

use mlxd_proto::MAX_STREAM_CREDIT;

/// A generation on the single-stream path, stepped on its own.
struct SingleStream {
    id: JobId,
    stream: Py<PyAny>,
    credit: u32,
}

/// The generation streams of this worker: on the batch engine (continuous batching) when
/// the model allows it, else single streams interleaved token by token. Either way a
/// stream runs only while it has credit: a batched stream without credit is paused (out
/// of the batch, its cache kept) until credit comes.
struct Streams {
    adapter: Py<PyAny>,
    max_streams: usize,
    prompt_cache_bytes: u64,
    /// `mlxd_runtime.generate.BatchEngine`, or `None` on the single-stream path.
    engine: Option<Py<PyAny>>,
    /// Credit of each stream on the engine; 0 = paused.
    batched: HashMap<JobId, u32>,
    singles: Vec<SingleStream>,
}

pub fn run(
    args: &WorkerArgs,
    mut items: mpsc::Receiver<WorkItem>,
    out: mpsc::Sender<FromWorker>,
    pulse: &std::sync::Arc<Pulse>,
) {
    let _ = out.blocking_send(FromWorker::Progress { stage: LoadStage::Starting, done: 0, total: 1 });
    pulse.progress();
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

impl Streams {
    fn runnable(&self) -> bool {
        self.batched.values().any(|&credit| credit > 0) || self.singles.iter().any(|s| s.credit > 0)
    }

    fn handle(&mut self, item: WorkItem, out: &mpsc::Sender<FromWorker>) {
        match item {
            WorkItem::Job(id, Job::Generate(job)) => {
                let credit = job.credit.min(MAX_STREAM_CREDIT);
                let started = Python::attach(|py| match &self.engine {
                    Some(engine) => start_batched(py, engine, id, job, credit > 0).map(|()| None),
                    None => start_stream(py, &self.adapter, job).map(Some),
                });
                match started {
                    Ok(None) => {
                        self.batched.insert(id, credit);
                    }
                    Ok(Some(stream)) => self.singles.push(SingleStream { id, stream, credit }),
                    Err(error) => {
                        let _ = out.blocking_send(FromWorker::Done { id, result: Err(error) });
                    }
                }
            }
            WorkItem::Job(id, job) => {
                let result = Python::attach(|py| run_job(py, &self.adapter, job));
                let _ = out.blocking_send(FromWorker::Done { id, result });
            }
            WorkItem::Credit(id, events) => {
                if let Some(credit) = self.batched.get_mut(&id) {
                    let paused = *credit == 0;
                    *credit = credit.saturating_add(events).min(MAX_STREAM_CREDIT);
                    if paused && *credit > 0 {
                        self.engine_call("resume", id, out);
                    }
                } else if let Some(stream) = self.singles.iter_mut().find(|s| s.id == id) {
                    stream.credit = stream.credit.saturating_add(events).min(MAX_STREAM_CREDIT);
                }
            }
            WorkItem::Cancel(id) => {
                if self.batched.remove(&id).is_some() {
                    let result = Python::attach(|py| {
                        let engine = self.engine.as_ref().ok_or_else(|| WireError::internal("no batch engine"))?;
                        let summary = engine
                            .bind(py)
                            .call_method1("cancel", (id,))
                            .map_err(|err| WireError::internal(python_error(py, "cancelling a stream", err)))?;
                        summary_from(py, &summary, FinishReason::Cancelled)
                    });
                    let _ = out.blocking_send(FromWorker::Done { id, result });
                } else if let Some(index) = self.singles.iter().position(|s| s.id == id) {
                    let stream = self.singles.swap_remove(index);
                    let result = Python::attach(|py| {
                        let _ = stream.stream.bind(py).call_method0("close");
                        summary(py, &stream.stream, FinishReason::Cancelled)
                    });
                    let _ = out.blocking_send(FromWorker::Done { id, result });
                }
            }
        }
    }

    /// Calls `method(id)` on the engine (pause, resume); a failure fails that stream.
    fn engine_call(&mut self, method: &str, id: JobId, out: &mpsc::Sender<FromWorker>) {
        let Some(engine) = &self.engine else { return };
        let failed = Python::attach(|py| {
            engine
                .bind(py)
                .call_method1(method, (id,))
                .err()
                .map(|err| WireError::internal(python_error(py, &format!("{method} of a stream"), err)))
        });
        if let Some(error) = failed {
            self.batched.remove(&id);
            let _ = out.blocking_send(FromWorker::Done { id, result: Err(error) });
        }
    }

    /// One decoding step: one batched step of the engine's streams, then one token of
    /// each single stream with credit.
    fn step(&mut self, out: &mpsc::Sender<FromWorker>) {
        if self.batched.values().any(|&credit| credit > 0) {
            self.step_batch(out);
        }
        let mut index = 0;
        while index < self.singles.len() {
            if self.singles[index].credit == 0 {
                index += 1;
                continue;
            }
            let finished = Python::attach(|py| step(py, &mut self.singles[index], out));
            if finished {
                self.singles.swap_remove(index);
            } else {
                index += 1;
            }
        }
    }

    fn step_batch(&mut self, out: &mpsc::Sender<FromWorker>) {
        let Some(engine) = self.engine.as_ref().map(|e| Python::attach(|py| e.clone_ref(py))) else { return };
        type Event = (JobId, String, i64, Option<String>);
        let stepped = Python::attach(|py| {
            engine
                .bind(py)
                .call_method0("step")
                .and_then(|events| events.extract::<Vec<Event>>())
                .map_err(|err| python_error(py, "decoding a batch", err))
        });
        let events = match stepped {
            Ok(events) => events,
            Err(message) => return self.fail_batch(message, out),
        };
        for (id, text, token, finish) in events {
            let Some(credit) = self.batched.get_mut(&id) else { continue };
            let token = u32::try_from(token).ok();
            if !text.is_empty() || token.is_some() {
                *credit = credit.saturating_sub(1);
                let _ = out.blocking_send(FromWorker::Token { id, text, token });
            }
            match finish {
                Some(finish) => {
                    self.batched.remove(&id);
                    let reason = if finish == "length" { FinishReason::Length } else { FinishReason::Stop };
                    let result = Python::attach(|py| match engine.bind(py).call_method1("summary", (id,)) {
                        Ok(summary) => summary_from(py, &summary, reason),
                        Err(err) => Err(WireError::internal(python_error(py, "reading the summary", err))),
                    });
                    let _ = out.blocking_send(FromWorker::Done { id, result });
                }
                None if *credit == 0 => self.engine_call("pause", id, out),
                None => {}
            }
        }
    }

    /// A batched step raised: every stream on the engine fails (its state is unknown), and
    /// a fresh engine takes the next streams.
    fn fail_batch(&mut self, message: String, out: &mpsc::Sender<FromWorker>) {
        let error = WireError::internal(format!("generation failed: {message}"));
        for (id, _) in self.batched.drain() {
            let _ = out.blocking_send(FromWorker::Done { id, result: Err(error.clone()) });
        }
        self.engine = Python::attach(|py| {
            match batch_engine(py, self.adapter.bind(py), self.max_streams, self.prompt_cache_bytes) {
                Ok((engine, _)) => engine,
                Err(err) => {
                    eprintln!("mlxd worker: cannot restart the batch engine, streams run one by one now: {err}");
                    None
                }
            }
        });
    }
}

/// The model's batch engine, or why it cannot have one (its caches cannot batch).
fn batch_engine(
    py: Python<'_>,
    adapter: &Bound<'_, PyAny>,
    max_streams: usize,
    prompt_cache_bytes: u64,
) -> Result<(Option<Py<PyAny>>, Option<String>), String> {
    let engine = adapter
        .call_method1("batch_engine", (max_streams, prompt_cache_bytes))
        .map_err(|err| python_error(py, "starting the batch engine", err))?;
    match engine.extract::<String>() {
        Ok(reason) => Ok((None, Some(reason))),
        Err(_) => Ok((Some(engine.unbind()), None)),
    }
}

fn start_batched(
    py: Python<'_>,
    engine: &Py<PyAny>,
    id: JobId,
    job: GenerateJob,
    active: bool,
) -> Result<(), WireError> {
    let (raw, messages, params) = stream_arguments(py, job).map_err(|err| request_error(py, err))?;
    engine
        .bind(py)
        .call_method1("start", (id, raw, messages, params, active))
        .map(|_| ())
        .map_err(|err| request_error(py, err))
}

type StreamArguments<'py> = (Option<String>, Option<Vec<(String, String)>>, Bound<'py, PyDict>);

/// A generation job as the Python adapters take it: raw prompt, chat messages, params.
fn stream_arguments(py: Python<'_>, job: GenerateJob) -> PyResult<StreamArguments<'_>> {
    let (raw, messages): (Option<String>, Option<Vec<(String, String)>>) = match job.input {
        PromptInput::Raw(text) => (Some(text), None),
        PromptInput::Chat(messages) => (None, Some(messages.into_iter().map(|m| (m.role, m.content)).collect())),
    };
    let params = PyDict::new(py);
    let p = &job.params;
    // Checked UTF-8 by the daemon; lossy only as a last line of defence.
    let stop: Vec<String> = p.stop.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    params.set_item("max_tokens", p.max_tokens)?;
    params.set_item("temperature", p.temperature)?;
    params.set_item("top_p", p.top_p)?;
    params.set_item("top_k", p.top_k)?;
    params.set_item("min_p", p.min_p)?;
    params.set_item("repetition_penalty", p.repetition_penalty)?;
    params.set_item("seed", p.seed)?;
    params.set_item("stop", stop)?;
    params.set_item("cache_partition", job.cache_partition)?;
    Ok((raw, messages, params))
}

fn start_stream(py: Python<'_>, adapter: &Py<PyAny>, job: GenerateJob) -> Result<Py<PyAny>, WireError> {
    let (raw, messages, params) = stream_arguments(py, job).map_err(|err| request_error(py, err))?;
    adapter
        .bind(py)
        .call_method1("start", (raw, messages, params))
        .map(Bound::unbind)
        .map_err(|err| request_error(py, err))
}

/// Decodes one token of `stream`; true when the stream has finished (and `Done` was sent).
fn step(py: Python<'_>, stream: &mut SingleStream, out: &mpsc::Sender<FromWorker>) -> bool {
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
    match stream.bind(py).call_method0("summary") {
        Ok(summary) => summary_from(py, &summary, finish_reason),
        Err(err) => Err(WireError::internal(python_error(py, "reading the summary", err))),
    }
}

/// A stream's summary dict as the wire's `GenerationSummary`.
fn summary_from(
    py: Python<'_>,
    summary: &Bound<'_, PyAny>,
    finish_reason: FinishReason,
) -> Result<JobOutput, WireError> {
    let read = || -> PyResult<GenerationSummary> {
        Ok(GenerationSummary {
            finish_reason,
            prompt_tokens: summary.get_item("prompt_tokens")?.extract()?,
            completion_tokens: summary.get_item("completion_tokens")?.extract()?,
            prompt_tokens_per_s: summary.get_item("prompt_tps")?.extract()?,
            generation_tokens_per_s: summary.get_item("generation_tps")?.extract()?,
            cached_prompt_tokens: match summary.get_item("cached_tokens") {
                Ok(cached) => cached.extract()?,
                Err(_) => 0, // adapters without a prompt cache
            },
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
    let adapter = runtime
        .call_method1("load", (kind, path))
        .map_err(|err| python_error(py, &format!("loading {}", args.path.display()), err))?;
    let info = adapter.call_method0("info").map_err(|err| python_error(py, "reading model info", err))?;
    let get_u32 = |key: &str| -> u32 { info.get_item(key).ok().and_then(|v| v.extract::<u32>().ok()).unwrap_or(0) };
    let backend =
        info.get_item("backend").ok().and_then(|v| v.extract::<String>().ok()).unwrap_or_else(|| "unknown".into());
    let (engine, single_stream) = match args.kind {
        ModelKind::Generation => batch_engine(py, &adapter, args.max_streams, args.prompt_cache_bytes)?,
        ModelKind::Embedding => (None, None),
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
