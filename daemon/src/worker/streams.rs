//! Generation streams on the MLX thread: the model's batch engine (continuous batching)
//! or streams run one by one, their credit, pauses and cancels, and what each step sends.

use std::collections::HashMap;

use mlxd_proto::worker::{FromWorker, GenerateJob, Job, JobId, JobOutput};
use mlxd_proto::{
    ErrorCode, FinishReason, GenerationSummary, PromptInput, TokenLogprobs, TopLogprob, WireError, MAX_STREAM_CREDIT,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tokio::sync::mpsc;

use super::handoff::WorkItem;
use super::jobs::run_job;
use super::pyerr::{is_exception, python_error};

/// A generation on the single-stream path, stepped on its own.
pub(super) struct SingleStream {
    pub(super) id: JobId,
    pub(super) stream: Py<PyAny>,
    pub(super) credit: u32,
}

/// The generation streams of this worker: on the batch engine (continuous batching) when
/// the model allows it, else single streams interleaved token by token. Either way a
/// stream runs only while it has credit: a batched stream without credit is paused (out
/// of the batch, its cache kept) until credit comes.
pub(super) struct Streams {
    pub(super) adapter: Py<PyAny>,
    pub(super) max_streams: usize,
    pub(super) prompt_cache_bytes: u64,
    /// `mlxd_runtime.generate.BatchEngine`, or `None` on the single-stream path.
    pub(super) engine: Option<Py<PyAny>>,
    /// Credit of each stream on the engine; 0 = paused.
    pub(super) batched: HashMap<JobId, u32>,
    pub(super) singles: Vec<SingleStream>,
}

impl Streams {
    pub(super) fn runnable(&self) -> bool {
        self.batched.values().any(|&credit| credit > 0) || self.singles.iter().any(|s| s.credit > 0)
    }

    pub(super) fn handle(&mut self, item: WorkItem, out: &mpsc::Sender<FromWorker>) {
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
            // Only a spare worker loads on request; this one has its model.
            WorkItem::Load(model) => eprintln!("mlxd worker: asked to load {} after loading; ignored", model.name),
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
    pub(super) fn step(&mut self, out: &mpsc::Sender<FromWorker>) {
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
        type Event = (JobId, String, i64, Option<String>, Option<PyLogprobs>, Vec<PyToolCall>);
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
        for (id, text, token, finish, logprobs, calls) in events {
            let Some(credit) = self.batched.get_mut(&id) else { continue };
            let token = u32::try_from(token).ok();
            if !text.is_empty() || token.is_some() || !calls.is_empty() {
                *credit = credit.saturating_sub(1);
                let logprobs = logprobs.map(token_logprobs);
                let tool_calls = calls.into_iter().map(tool_call).collect();
                let _ = out.blocking_send(FromWorker::Token { id, text, token, logprobs, tool_calls });
            }
            match finish {
                Some(finish) => {
                    self.batched.remove(&id);
                    let reason = finish_reason(&finish);
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
pub(super) fn batch_engine(
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

type StreamArguments<'py> = (Option<String>, Option<Bound<'py, PyList>>, Bound<'py, PyDict>);

/// A generation job as the Python adapters take it: raw prompt, chat messages (dicts:
/// role, content, and tool_calls as (id, name, arguments), tool_call_id, name), params.
fn stream_arguments(py: Python<'_>, job: GenerateJob) -> PyResult<StreamArguments<'_>> {
    let (raw, messages) = match job.input {
        PromptInput::Raw(text) => (Some(text), None),
        PromptInput::Chat(messages) => {
            let list = PyList::empty(py);
            for m in messages {
                let message = PyDict::new(py);
                message.set_item("role", m.role)?;
                message.set_item("content", m.content)?;
                let calls: Vec<(String, String, String)> =
                    m.tool_calls.into_iter().map(|c| (c.id, c.name, c.arguments)).collect();
                message.set_item("tool_calls", calls)?;
                message.set_item("tool_call_id", m.tool_call_id)?;
                message.set_item("name", m.name)?;
                list.append(message)?;
            }
            (None, Some(list))
        }
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
    params.set_item("logprobs", p.logprobs)?;
    // (kind, text) as mlxd_runtime.constrain takes it.
    let constraint = p.constraint.as_ref().map(|c| match c {
        mlxd_proto::Constraint::JsonSchema(text) => ("json_schema", text.as_str()),
        mlxd_proto::Constraint::JsonObject => ("json_object", ""),
        mlxd_proto::Constraint::Regex(text) => ("regex", text.as_str()),
        mlxd_proto::Constraint::Lark(text) => ("lark", text.as_str()),
    });
    params.set_item("constraint", constraint)?;
    // (name, description, parameters as JSON text), as mlxd_runtime.tools takes them.
    let tools: Vec<(&str, &str, &str)> =
        p.tools.iter().map(|t| (t.name.as_str(), t.description.as_str(), t.parameters.as_str())).collect();
    params.set_item("tools", tools)?;
    let choice = match &p.tool_choice {
        mlxd_proto::ToolChoice::Auto => ("auto", None),
        mlxd_proto::ToolChoice::None => ("none", None),
        mlxd_proto::ToolChoice::Required => ("required", None),
        mlxd_proto::ToolChoice::Function(name) => ("function", Some(name.as_str())),
    };
    params.set_item("tool_choice", choice)?;
    params.set_item("parallel_tool_calls", p.parallel_tool_calls)?;
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
    let stepped = stream
        .stream
        .bind(py)
        .call_method0("step")
        .and_then(|r| r.extract::<(String, i64, Option<String>, Option<PyLogprobs>, Vec<PyToolCall>)>());
    let (text, token, finish, logprobs, calls) = match stepped {
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
    if !text.is_empty() || token.is_some() || !calls.is_empty() {
        stream.credit -= 1;
        let logprobs = logprobs.map(token_logprobs);
        let tool_calls = calls.into_iter().map(tool_call).collect();
        let _ = out.blocking_send(FromWorker::Token { id: stream.id, text, token, logprobs, tool_calls });
    }
    let Some(finish) = finish else { return false };
    let reason = finish_reason(&finish);
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

/// Python's `mlxd_runtime.generate.BadRequest` is the client's fault (its subclass
/// `Unsupported`: what this model cannot do); anything else is ours. The code travels to
/// the client, which matches on it, never on the message.
fn request_error(py: Python<'_>, err: PyErr) -> WireError {
    if is_exception(py, &err, "Unsupported") {
        WireError::new(ErrorCode::Unsupported, err.value(py).to_string())
    } else if is_exception(py, &err, "BadRequest") {
        WireError::bad_request(err.value(py).to_string())
    } else {
        WireError::internal(format!("model error: {}", python_error(py, "starting generation", err)))
    }
}

/// A token's log probabilities as the adapters give them: (its text, its logprob, the
/// alternatives as (token, text, logprob), most likely first).
type PyLogprobs = (String, f32, Vec<(u32, String, f32)>);
/// A tool call as the runtime reports it: (id, name, arguments as JSON text).
type PyToolCall = (String, String, String);

fn tool_call((id, name, arguments): PyToolCall) -> mlxd_proto::ToolCall {
    mlxd_proto::ToolCall { id, name, arguments }
}

/// The runtime's finish reason ("stop", "length", "tool_calls") as the wire's.
fn finish_reason(finish: &str) -> FinishReason {
    match finish {
        "length" => FinishReason::Length,
        "tool_calls" => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn token_logprobs((text, logprob, top): PyLogprobs) -> TokenLogprobs {
    let top = top.into_iter().map(|(token, text, logprob)| TopLogprob { token, text, logprob }).collect();
    TokenLogprobs { text, logprob, top }
}
