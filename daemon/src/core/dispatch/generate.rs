//! Generation streams. The request is validated here (ranges, UTF-8 stop strings, limits),
//! admitted to the model's queue, and run on the worker as a stream.
//!
//! Flow control: the worker may produce only as many tokens as the client has granted
//! (the request's initial credit, then `Credit` frames). This task passes grants on as they
//! arrive, at most `MAX_STREAM_CREDIT` outstanding, so the daemon never holds more
//! undelivered events for a stream than its credit; a client that stops reading stalls its
//! own stream only (the worker skips a stream without credit). A Cancel, or the client
//! going away, stops the stream at the worker's next step.

use std::sync::Arc;

use mlxd_proto::worker::{GenerateJob, Job, JobOutput};
use mlxd_proto::{
    Constraint, ErrorCode, Event, FinishReason, GenerateRequest, GenerationSummary, Limits, ModelKind, PromptInput,
    RequestId, Response, ToolChoice, WireError, MAX_STREAM_CREDIT,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ticket::{resolve, Ticket};
use crate::core::caller::Caller;
use crate::core::events::EventSink;
use crate::core::flow::Control;
use crate::sched::{self, Pending};
use crate::supervise::WorkerHandle;

const MAX_STOP_STRINGS: usize = mlxd_proto::bounds::MAX_STOP_STRINGS as usize;
const MAX_STOP_BYTES: usize = mlxd_proto::bounds::MAX_STOP_BYTES as usize;

/// Validation, the model, and a place in its queue (or `Busy`), without waiting.
pub fn admit(session: &Caller, request: &GenerateRequest) -> Result<(Ticket, GenerateJob), WireError> {
    let mut job = validate(request, &session.daemon.config.limits)?;
    // One user's prompts never warm the cache for another's (time to first token would
    // tell them what was sent); one user's own sessions share it.
    job.cache_partition = session.uid;
    let model = resolve(session, &request.model)?;
    if model.spec.kind != ModelKind::Generation {
        return Err(WireError::bad_request(format!("model {} is not a text generation model", model.spec.name)));
    }
    let arrived = Instant::now();
    let admitted = model.admission.admit(&model.spec.name, session.client(), request.priority)?;
    Ok((Ticket { model, admitted, arrived }, job))
}

pub async fn generate(
    session: &Arc<Caller>,
    id: RequestId,
    request: GenerateRequest,
    ticket: Ticket,
    mut job: GenerateJob,
    events: &impl EventSink,
    control: &Control,
) -> Result<Response, WireError> {
    let Ticket { model, admitted, arrived } = ticket;
    let _in_flight = model.begin_request();

    // Wait for one of the model's stream slots, in turn (interactive first, sessions
    // round-robin); a deadline that passes first drops the request before it starts.
    let (turn_tx, mut turn) = oneshot::channel();
    let deadline = sched::deadline(arrived, request.deadline_ms);
    admitted.enqueue(Pending::Turn(turn_tx), deadline);
    let mut armed = deadline.is_some();
    let expired = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
    tokio::pin!(expired);
    loop {
        tokio::select! {
            granted = &mut turn => {
                granted.unwrap_or_else(|_| Err(WireError::internal("the model's queue dropped the request")))?;
                model.metrics.queue_wait(&model.spec.name, arrived.elapsed());
                model.metrics.batch_size(&model.spec.name, "generate", model.admission.stats().running as usize);
                break;
            }
            () = control.cancel.cancelled() => return Ok(Response::Generated(cancelled_before_start())),
            () = &mut expired, if armed => {
                if let Some(timeout) = admitted.expire() {
                    return Err(timeout);
                }
                armed = false; // taken just now: the turn follows
            }
        }
    }

    let progress = |p| events.offer(Event::LoadProgress(p));
    let progress = &progress;
    let mut owed = request.initial_credit; // granted by the client, not yet passed to the worker
    let mut replays = 0;
    // Ended for staying paused longer than `stream_pause_limit`.
    let mut paused_out = false;
    let (result, cancelled, started) = loop {
        let worker = tokio::select! {
            worker = model.ready(progress) => worker?,
            () = control.cancel.cancelled() => return Ok(Response::Generated(cancelled_before_start())),
        };
        if worker.ready.single_stream.is_some() {
            model.admission.count_single_stream();
        }
        let started = Instant::now();
        job.credit = owed.min(MAX_STREAM_CREDIT);
        owed -= job.credit;
        let mut outstanding = job.credit; // passed to the worker, not yet delivered
        let mut delivered = 0u32;
        let mut stream = worker.start_stream(Job::Generate(job.clone()), MAX_STREAM_CREDIT as usize).await?;
        let mut cancel_guard = CancelOnDrop { worker: &worker, id: stream.id, armed: true };
        let mut cancelled = false;
        // Paused: the worker has no credit for this stream and none is owed, or its next
        // event cannot be queued for the client. A paused stream keeps its slot (and its
        // KV cache, outside the decode batch) for at most `stream_pause_limit`.
        let pause_limit = session.daemon.config.stream_pause_limit;
        let mut paused_since = (outstanding == 0 && owed == 0).then(Instant::now);

        let result = loop {
            let pause_deadline = paused_since.map(|since| since + pause_limit);
            tokio::select! {
                biased;
                () = control.cancel.cancelled(), if !cancelled => {
                    // Stop at the next step, then wait for the worker's summary.
                    cancelled = true;
                    worker.cancel(stream.id);
                }
                done = &mut stream.done => {
                    break done.unwrap_or_else(|_| Err(WireError::new(ErrorCode::WorkerFailed, "worker dropped the stream")));
                }
                token = stream.tokens.recv() => {
                    let Some(token) = token else {
                        // Only after the final answer was routed: take it.
                        break (&mut stream.done).await.unwrap_or_else(|_| {
                            Err(WireError::new(ErrorCode::WorkerFailed, "worker dropped the stream"))
                        });
                    };
                    outstanding = outstanding.saturating_sub(1);
                    if delivered == 0 {
                        model.metrics.first_token(&model.spec.name, arrived.elapsed());
                    }
                    delivered += 1;
                    if !cancelled {
                        match deliver_all(events, token, control, pause_limit).await {
                            Delivery::Sent | Delivery::Cancelled => {}
                            Delivery::Gone => control.cancel.cancel(),
                            Delivery::Stalled => {
                                // Credit granted but the client does not read: paused too.
                                paused_out = true;
                                cancelled = true;
                                worker.cancel(stream.id);
                            }
                        }
                    }
                    if !cancelled {
                        pass_on_credit(&worker, stream.id, &mut owed, &mut outstanding).await;
                    }
                }
                granted = control.credit.take(), if !cancelled => {
                    owed = owed.saturating_add(granted);
                    pass_on_credit(&worker, stream.id, &mut owed, &mut outstanding).await;
                }
                () = tokio::time::sleep_until(pause_deadline.unwrap_or_else(Instant::now)), if pause_deadline.is_some() && !cancelled => {
                    paused_out = true;
                    cancelled = true;
                    worker.cancel(stream.id);
                }
            }
            let paused = !cancelled && outstanding == 0 && owed == 0;
            paused_since = if paused { paused_since.or_else(|| Some(Instant::now())) } else { None };
        };
        cancel_guard.armed = false;
        // Tokens sent before the final answer are already in the buffer: deliver them first
        // — within the pause limit like any token, so a client that stops reading now
        // cannot keep the stream's slot.
        while let Ok(token) = stream.tokens.try_recv() {
            delivered += 1;
            if cancelled {
                continue;
            }
            match deliver_all(events, token, control, pause_limit).await {
                Delivery::Sent => {}
                Delivery::Gone | Delivery::Cancelled => cancelled = true,
                Delivery::Stalled => {
                    paused_out = true;
                    cancelled = true;
                }
            }
        }
        drop(cancel_guard);
        // A worker that died before this stream produced anything: start it again on the
        // next worker, with the credit it had. One that had streamed tokens cannot be
        // replayed (the client has them); it ends with the worker's error.
        let worker_died = !worker.is_alive() && !worker.was_stopped();
        if result.is_err() && delivered == 0 && !cancelled && worker_died && replays < crate::registry::MAX_REPLAYS {
            replays += 1;
            owed = owed.saturating_add(outstanding);
            tracing::warn!(model = %model.spec.name, replays, "worker died before the stream started; starting it again");
            continue;
        }
        break (result, cancelled, started);
    };
    // Streams share the model: each one's share of the time is what the next one waits.
    model.admission.record_service(started.elapsed() / model.spec.max_streams.max(1) as u32);
    if paused_out {
        let limit = session.daemon.config.stream_pause_limit;
        return Err(WireError::new(
            ErrorCode::Timeout,
            format!(
                "stream {id} was paused for lack of credit (or unread events) for {limit:?} (stream_pause_limit) and \
                 was ended to give its slot back; grant credit and read events to keep a stream going"
            ),
        ));
    }
    match result? {
        JobOutput::Generated(mut summary) => {
            model.metrics.generation_done(&model.spec.name, summary.completion_tokens, summary.generation_tokens_per_s);
            if cancelled {
                summary.finish_reason = FinishReason::Cancelled;
            }
            Ok(Response::Generated(summary))
        }
        _ => Err(WireError::internal("worker answered a generation with something else")),
    }
}

/// How handing one token to the client went.
enum Delivery {
    Sent,
    /// The client is gone.
    Gone,
    /// The request was cancelled meanwhile.
    Cancelled,
    /// The client took nothing for the pause limit: the stream counts as paused too long.
    Stalled,
}

/// Hands `event` to the client, but never waits past a cancel or the pause limit.
async fn deliver(events: &impl EventSink, event: Event, control: &Control, limit: std::time::Duration) -> Delivery {
    tokio::select! {
        sent = events.send(event) => if sent.is_ok() { Delivery::Sent } else { Delivery::Gone },
        () = control.cancel.cancelled() => Delivery::Cancelled,
        () = tokio::time::sleep(limit) => Delivery::Stalled,
    }
}

/// Hands a token's events (the token, then the tool calls it completed) to the client, as
/// far as they go.
async fn deliver_all(
    events: &impl EventSink,
    token: crate::supervise::TokenEvent,
    control: &Control,
    limit: std::time::Duration,
) -> Delivery {
    for event in token.into_events() {
        match deliver(events, event, control, limit).await {
            Delivery::Sent => {}
            other => return other,
        }
    }
    Delivery::Sent
}

/// Passes credit the client granted (`owed`) on to the worker, as far as the stream's
/// outstanding events stay within `MAX_STREAM_CREDIT`.
async fn pass_on_credit(worker: &WorkerHandle, id: mlxd_proto::worker::JobId, owed: &mut u32, outstanding: &mut u32) {
    let grant = (*owed).min(MAX_STREAM_CREDIT - *outstanding);
    if grant > 0 {
        *owed -= grant;
        *outstanding += grant;
        worker.grant(id, grant).await;
    }
}

/// Stops the worker's stream if this task is dropped mid-stream (e.g. at shutdown).
struct CancelOnDrop<'a> {
    worker: &'a WorkerHandle,
    id: mlxd_proto::worker::JobId,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.worker.cancel(self.id);
        }
    }
}

fn cancelled_before_start() -> GenerationSummary {
    GenerationSummary {
        finish_reason: FinishReason::Cancelled,
        prompt_tokens: 0,
        completion_tokens: 0,
        prompt_tokens_per_s: 0.0,
        generation_tokens_per_s: 0.0,
        cached_prompt_tokens: 0,
    }
}

fn is_json_object(text: &str) -> bool {
    matches!(serde_json::from_str::<serde_json::Value>(text), Ok(serde_json::Value::Object(_)))
}

/// What a chat message adds to the prompt, in bytes (before the template's own text).
fn message_bytes(m: &mlxd_proto::ChatMessage) -> usize {
    let calls: usize = m.tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len()).sum();
    m.role.len()
        + m.content.len()
        + calls
        + m.tool_call_id.as_ref().map_or(0, String::len)
        + m.name.as_ref().map_or(0, String::len)
}

/// Checks `tools` and `tool_choice`; returns the tools' bytes (they become prompt text).
fn validate_tools(request: &GenerateRequest) -> Result<usize, WireError> {
    let p = &request.params;
    let max = mlxd_proto::bounds::MAX_TOOLS as usize;
    if p.tools.len() > max {
        return Err(WireError::new(ErrorCode::TooLarge, format!("{} tools; at most {max} are allowed", p.tools.len())));
    }
    if p.tools.is_empty() {
        return match &p.tool_choice {
            ToolChoice::Auto | ToolChoice::None => Ok(0),
            ToolChoice::Required | ToolChoice::Function(_) => {
                Err(WireError::bad_request("tool_choice required or a function needs tools"))
            }
        };
    }
    if matches!(request.input, PromptInput::Raw(_)) {
        return Err(WireError::bad_request("tools need a chat prompt (the model's chat template shows them)"));
    }
    if p.constraint.is_some() && p.tool_choice != ToolChoice::None {
        return Err(WireError::bad_request(
            "tools and a constraint cannot be combined (one constraint at a time; tool_choice none drops the tools)",
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (index, tool) in p.tools.iter().enumerate() {
        let valid = (1..=64).contains(&tool.name.len())
            && tool.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(WireError::bad_request(format!(
                "tools[{index}]: the name {:?} must be 1 to 64 of a-z, A-Z, 0-9, _, - and .",
                tool.name
            )));
        }
        if !names.insert(tool.name.as_str()) {
            return Err(WireError::bad_request(format!("tools[{index}]: {:?} is named twice", tool.name)));
        }
        if !is_json_object(&tool.parameters) {
            return Err(WireError::bad_request(format!(
                "tools[{index}] ({}): parameters must be a JSON schema object",
                tool.name
            )));
        }
    }
    if let ToolChoice::Function(name) = &p.tool_choice {
        if !names.contains(name.as_str()) {
            let known: Vec<&str> = p.tools.iter().map(|t| t.name.as_str()).collect();
            return Err(WireError::bad_request(format!(
                "tool_choice names {name:?}, which is not among the tools ({})",
                known.join(", ")
            )));
        }
    }
    Ok(p.tools.iter().map(|t| t.name.len() + t.description.len() + t.parameters.len()).sum())
}

/// Checks a request against the protocol's ranges and the session's limits.
pub fn validate(request: &GenerateRequest, limits: &Limits) -> Result<GenerateJob, WireError> {
    let p = &request.params;
    if p.max_tokens == 0 {
        return Err(WireError::bad_request("max_tokens must be at least 1"));
    }
    if p.max_tokens > limits.max_tokens {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("max_tokens {} exceeds the limit of {} (max_tokens)", p.max_tokens, limits.max_tokens),
        ));
    }
    let finite_at_least = |value: f32, min: f32| value.is_finite() && value >= min;
    if !finite_at_least(p.temperature, 0.0) {
        return Err(WireError::bad_request(format!("temperature must be a finite number >= 0, not {}", p.temperature)));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(WireError::bad_request(format!("top_p must be in (0, 1], not {}", p.top_p)));
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return Err(WireError::bad_request(format!("min_p must be in [0, 1], not {}", p.min_p)));
    }
    if !(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0) {
        return Err(WireError::bad_request(format!(
            "repetition_penalty must be a finite number > 0, not {}",
            p.repetition_penalty
        )));
    }
    if let Some(k) = p.logprobs.filter(|&k| k > mlxd_proto::MAX_TOP_LOGPROBS) {
        return Err(WireError::bad_request(format!(
            "logprobs asks for {k} alternatives per token; at most {} are given",
            mlxd_proto::MAX_TOP_LOGPROBS
        )));
    }
    match &p.constraint {
        Some(Constraint::JsonSchema(text) | Constraint::Regex(text) | Constraint::Lark(text))
            if text.len() > limits.max_text_bytes as usize =>
        {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!("the constraint is {} bytes; max_text_bytes is {}", text.len(), limits.max_text_bytes),
            ));
        }
        Some(Constraint::JsonSchema(text)) => {
            if let Err(err) = serde_json::from_str::<serde_json::Value>(text) {
                return Err(WireError::bad_request(format!("the JSON schema is not JSON: {err}")));
            }
        }
        Some(Constraint::Regex(text) | Constraint::Lark(text)) if text.is_empty() => {
            return Err(WireError::bad_request("an empty regular expression or grammar constrains nothing"));
        }
        _ => {}
    }
    if p.stop.len() > MAX_STOP_STRINGS {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("{} stop strings; at most {MAX_STOP_STRINGS} are allowed", p.stop.len()),
        ));
    }
    for (index, bytes) in p.stop.iter().enumerate() {
        if bytes.is_empty() || bytes.len() > MAX_STOP_BYTES {
            return Err(WireError::bad_request(format!(
                "stop string {index} must be 1 to {MAX_STOP_BYTES} bytes, not {}",
                bytes.len()
            )));
        }
        if let Err(err) = std::str::from_utf8(bytes) {
            return Err(WireError::bad_request(format!("stop string {index} is not valid UTF-8: {err}")));
        }
    }
    let tool_bytes = validate_tools(request)?;
    let prompt_bytes = tool_bytes
        + match &request.input {
            PromptInput::Raw(text) => text.len(),
            PromptInput::Chat(messages) => {
                if messages.is_empty() {
                    return Err(WireError::bad_request("a chat prompt needs at least one message"));
                }
                let max = mlxd_proto::bounds::MAX_CHAT_MESSAGES as usize;
                if messages.len() > max {
                    return Err(WireError::new(
                        ErrorCode::TooLarge,
                        format!("{} chat messages; at most {max} are allowed", messages.len()),
                    ));
                }
                for (index, message) in messages.iter().enumerate() {
                    for call in &message.tool_calls {
                        if call.name.is_empty() {
                            return Err(WireError::bad_request(format!(
                                "messages[{index}]: a tool call without a name"
                            )));
                        }
                        if !is_json_object(&call.arguments) {
                            return Err(WireError::bad_request(format!(
                                "messages[{index}]: the arguments of tool call {:?} are not a JSON object",
                                call.name
                            )));
                        }
                    }
                }
                messages.iter().map(message_bytes).sum()
            }
        };
    if prompt_bytes > limits.max_text_bytes as usize {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("the prompt is {prompt_bytes} bytes; max_text_bytes is {}", limits.max_text_bytes),
        ));
    }
    Ok(GenerateJob { input: request.input.clone(), params: p.clone(), credit: 0, cache_partition: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlxd_proto::{GenerateParams, ModelRef, Priority};

    fn request(params: GenerateParams) -> GenerateRequest {
        GenerateRequest {
            model: ModelRef::Name("m".into()),
            input: PromptInput::Raw("hi".into()),
            params,
            initial_credit: 8,
            priority: Priority::Interactive,
            deadline_ms: None,
        }
    }

    #[test]
    fn refuses_out_of_range_parameters_with_typed_errors() {
        let limits = crate::config::DaemonConfig::default_limits();
        let code = |params| validate(&request(params), &limits).unwrap_err().code;
        assert_eq!(code(GenerateParams { max_tokens: 0, ..Default::default() }), ErrorCode::BadRequest);
        assert_eq!(
            code(GenerateParams { max_tokens: limits.max_tokens + 1, ..Default::default() }),
            ErrorCode::TooLarge
        );
        assert_eq!(code(GenerateParams { temperature: f32::NAN, ..Default::default() }), ErrorCode::BadRequest);
        assert_eq!(code(GenerateParams { top_p: 0.0, ..Default::default() }), ErrorCode::BadRequest);
        assert_eq!(code(GenerateParams { stop: vec![vec![0xff, 0xfe]], ..Default::default() }), ErrorCode::BadRequest);
        assert_eq!(code(GenerateParams { stop: vec![b"x".to_vec(); 17], ..Default::default() }), ErrorCode::TooLarge);
        let ok = validate(&request(GenerateParams { stop: vec![b"\n\n".to_vec()], ..Default::default() }), &limits);
        assert_eq!(ok.unwrap().params.stop, vec![b"\n\n".to_vec()]);
    }

    #[test]
    fn tools_are_checked_before_any_work() {
        use mlxd_proto::{ChatMessage, Tool, ToolCall, ToolChoice};
        let limits = crate::config::DaemonConfig::default_limits();
        let tool = |name: &str, parameters: &str| Tool {
            name: name.into(),
            description: String::new(),
            parameters: parameters.into(),
        };
        let chat = |params: GenerateParams, messages: Vec<ChatMessage>| GenerateRequest {
            input: PromptInput::Chat(messages),
            ..request(params)
        };
        let ask = || vec![ChatMessage::new("user", "hi")];
        let refused = |request: GenerateRequest| validate(&request, &limits).unwrap_err().message;
        let with =
            |tools: Vec<Tool>, tool_choice: ToolChoice| GenerateParams { tools, tool_choice, ..Default::default() };
        let weather = || tool("get_weather", r#"{"type":"object"}"#);

        assert!(validate(&chat(with(vec![weather()], ToolChoice::Required), ask()), &limits).is_ok());
        assert!(refused(request(with(vec![weather()], ToolChoice::Auto))).contains("need a chat prompt"));
        assert!(refused(chat(with(vec![], ToolChoice::Required), ask())).contains("needs tools"));
        assert!(refused(chat(with(vec![tool("a b", "{}")], ToolChoice::Auto), ask())).contains("must be 1 to 64"));
        assert!(refused(chat(with(vec![tool("f", "[]")], ToolChoice::Auto), ask())).contains("JSON schema object"));
        assert!(refused(chat(with(vec![weather(), weather()], ToolChoice::Auto), ask())).contains("named twice"));
        let other = with(vec![weather()], ToolChoice::Function("get_time".into()));
        assert!(refused(chat(other, ask())).contains("\"get_time\", which is not among the tools (get_weather)"));
        let constrained =
            GenerateParams { constraint: Some(Constraint::JsonObject), ..with(vec![weather()], ToolChoice::Auto) };
        assert!(refused(chat(constrained, ask())).contains("cannot be combined"));
        // tool_choice none drops the tools: a constraint is then fine.
        let none =
            GenerateParams { constraint: Some(Constraint::JsonObject), ..with(vec![weather()], ToolChoice::None) };
        assert!(validate(&chat(none, ask()), &limits).is_ok());
        // A call sent back must carry a JSON object of arguments.
        let call = ToolCall { id: "c".into(), name: "get_weather".into(), arguments: "[1]".into() };
        let history = vec![ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") }];
        assert!(refused(chat(with(vec![weather()], ToolChoice::Auto), history)).contains("not a JSON object"));
        // Tools count towards the prompt's bytes.
        let big = tool("big", &format!(r#"{{"description":"{}"}}"#, "x".repeat(limits.max_text_bytes as usize)));
        assert_eq!(
            validate(&chat(with(vec![big], ToolChoice::Auto), ask()), &limits).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }
}
