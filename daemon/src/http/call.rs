//! One HTTP request through the request core: the caller's limits, the answers given at
//! once, admission to the model's queue, then the request's task, whose events and final
//! answer arrive on a bounded channel. Dropping the [`Running`] request (the client went
//! away, its response body was dropped) cancels it.

use std::sync::Arc;

use mlxd_proto::{Event, Request, Response, WireError};
use tokio::sync::mpsc;

use super::conn::Conn;
use tracing::Instrument;

use crate::core::{caller, dispatch, kind, Control, EventSink, Gone};

/// What a running request sends its front end.
#[derive(Debug)]
pub enum Item {
    Event(Event),
    Done(Box<Result<Response, WireError>>),
}

/// Token events a streaming client may have outstanding: granted back one by one as they
/// are taken for the response body ([`Running::next`]).
pub const STREAM_WINDOW: u32 = 32;

/// A request body as `T`, or a `BadRequest` naming what is wrong (each front end answers
/// it in its own error shape).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|err| WireError::bad_request(format!("invalid request body: {err}")))
}

/// Events queued between the request's task and the HTTP body (tokens also wait for
/// credit, which the body grants as it sends them on).
const EVENT_BUFFER: usize = 64;

struct Sink(mpsc::Sender<Item>);

impl EventSink for Sink {
    async fn send(&self, event: Event) -> Result<(), Gone> {
        self.0.send(Item::Event(event)).await.map_err(|_| Gone)
    }

    fn offer(&self, event: Event) {
        let _ = self.0.try_send(Item::Event(event));
    }
}

/// A request in flight; cancelled if dropped before its final answer was taken.
#[derive(Debug)]
pub struct Running {
    items: mpsc::Receiver<Item>,
    pub control: Arc<Control>,
    /// An item taken early by [`Running::started`], handed out first by [`Running::next`].
    pending: Option<Item>,
}

impl Running {
    /// The next event or the final answer; `None` once the request's task is gone. A
    /// token taken here is one less outstanding: its credit is granted back, so the
    /// stream never has more than its window between the task and the response body.
    pub async fn next(&mut self) -> Option<Item> {
        let item = match self.pending.take() {
            Some(item) => Some(item),
            None => self.items.recv().await,
        };
        if let Some(Item::Event(Event::Token { .. })) = &item {
            self.control.credit.add(1);
        }
        item
    }

    /// Waits for the request to produce something, so that a failure decided before its
    /// first event (an open circuit, a load that fails, a full budget) is answered with
    /// its status rather than inside a stream already answered 200.
    pub async fn started(&mut self) -> Result<(), WireError> {
        self.pending = match self.items.recv().await {
            Some(Item::Done(answer)) => match *answer {
                Err(error) => return Err(error),
                answer => Some(Item::Done(Box::new(answer))),
            },
            other => other,
        };
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.control.cancel.cancel();
    }
}

/// Starts `body` as a request of `conn`; a refusal decided before any work is the `Err`.
pub fn start(conn: &Conn, body: Request) -> Result<Running, WireError> {
    let caller = &conn.caller;
    if let Some(refusal) = caller::admit(caller, &body) {
        return Err(refusal);
    }
    let (tx, items) = mpsc::channel(EVENT_BUFFER);
    let control = Arc::new(Control { is_stream: matches!(body, Request::Generate(_)), ..Control::default() });
    if let Some(answer) = dispatch::answer_now(caller, &body) {
        let _ = tx.try_send(Item::Done(Box::new(answer)));
        return Ok(Running { items, control, pending: None });
    }
    let (kind, model) = (kind::kind(&body), dispatch::model_label(caller, &body));
    let metrics = caller.daemon.registry.metrics().clone();
    let arrived = std::time::Instant::now();
    let prepared = match dispatch::admit(caller, &body) {
        Ok(prepared) => prepared,
        Err(refusal) => {
            metrics.request_done(&model, kind, Err(refusal.code), arrived.elapsed());
            return Err(refusal);
        }
    };
    let id = conn.next_id();
    caller.in_flight().insert(id, control.clone());
    let (caller, task_control) = (caller.clone(), control.clone());
    // Everything logged while the request runs carries its id (inside the connection's
    // session span: its id and the peer's pid).
    let span = tracing::info_span!("request", id, kind, model = %model, front = "http");
    let tasks = caller.daemon.registry.tasks().clone();
    tasks.spawn(
        "http request",
        async move {
            let sink = Sink(tx);
            let answer = dispatch::handle(&caller, id, body, prepared, &sink, &task_control).await;
            caller.in_flight().remove(&id);
            metrics.request_done(&model, kind, answer.as_ref().map(|_| ()).map_err(|e| e.code), arrived.elapsed());
            match &answer {
                Ok(_) => tracing::debug!(ms = arrived.elapsed().as_millis() as u64, "request done"),
                Err(error) => tracing::debug!(code = ?error.code, "request failed: {}", error.message),
            }
            // A client that stops taking events does not hold this task for ever.
            let deadline = caller.daemon.config.stream_pause_limit;
            let _ = tokio::time::timeout(deadline, sink.0.send(Item::Done(Box::new(answer)))).await;
        }
        .instrument(span),
    );
    Ok(Running { items, control, pending: None })
}

/// Runs `body` to its end, handing each event to `on_event`.
pub async fn run(conn: &Conn, body: Request, mut on_event: impl FnMut(Event)) -> Result<Response, WireError> {
    let mut running = start(conn, body)?;
    while let Some(item) = running.next().await {
        match item {
            Item::Event(event) => on_event(event),
            Item::Done(answer) => return *answer,
        }
    }
    Err(WireError::internal("the request ended without an answer"))
}

/// The named prompt an HTTP embedding request asks for: mlxd's `prompt_name` (passed on
/// as is; `""` = none), else an `input_type` as Cohere, Voyage and NVIDIA's APIs send it
/// ("query", "search_query", "document", "passage", "search_document", ...), matched to a
/// prompt of the model that means the same. A model without named prompts ignores
/// `input_type` (clients send it to every model); one with prompts but none matching is
/// a `BadRequest` listing them. `None`: the model's default prompt.
pub async fn prompt_choice(
    conn: &Conn,
    model: &str,
    prompt_name: Option<String>,
    input_type: Option<&str>,
) -> Result<Option<String>, WireError> {
    if prompt_name.is_some() {
        return Ok(prompt_name);
    }
    let Some(input_type) = input_type else { return Ok(None) };
    let Response::Models(models) = run(conn, Request::ListModels, |_| {}).await? else {
        return Err(WireError::internal("the model list answered something else"));
    };
    let Some(info) = models.iter().find(|m| m.name == model) else {
        return Ok(None); // the embed request itself will say the model is not there
    };
    if info.prompts.is_empty() {
        return Ok(None);
    }
    let wanted = input_type.trim().to_ascii_lowercase();
    let synonyms: &[&str] = match wanted.as_str() {
        "query" | "search_query" | "search-query" | "retrieval.query" => &["query", "search_query"],
        "document" | "passage" | "search_document" | "search-document" | "retrieval.passage" => {
            &["document", "passage", "search_document", "doc", "corpus"]
        }
        _ => &[],
    };
    let found = info.prompts.iter().find(|p| **p == wanted || synonyms.contains(&p.as_str()));
    match found {
        Some(prompt) => Ok(Some(prompt.clone())),
        None => Err(WireError::bad_request(format!(
            "input_type {input_type:?} matches none of model {model}'s prompts ({}); name one with prompt_name",
            info.prompts.join(", ")
        ))),
    }
}
