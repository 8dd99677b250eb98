//! One HTTP request through the request core: the caller's limits, the answers given at
//! once, admission to the model's queue, then the request's task, whose events and final
//! answer arrive on a bounded channel. Dropping the [`Running`] request (the client went
//! away, its response body was dropped) cancels it.

use std::sync::Arc;

use mlxd_proto::{Event, Request, Response, WireError};
use tokio::sync::mpsc;

use super::conn::Conn;
use crate::core::{caller, dispatch, Control, EventSink, Gone};

/// What a running request sends its front end.
#[derive(Debug)]
pub enum Item {
    Event(Event),
    Done(Box<Result<Response, WireError>>),
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
    pub items: mpsc::Receiver<Item>,
    pub control: Arc<Control>,
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
        return Ok(Running { items, control });
    }
    let prepared = dispatch::admit(caller, &body)?;
    let id = conn.next_id();
    caller.in_flight().insert(id, control.clone());
    let (caller, task_control) = (caller.clone(), control.clone());
    tokio::spawn(async move {
        let sink = Sink(tx);
        let answer = dispatch::handle(&caller, id, body, prepared, &sink, &task_control).await;
        caller.in_flight().remove(&id);
        let _ = sink.0.send(Item::Done(Box::new(answer))).await;
    });
    Ok(Running { items, control })
}

/// Runs `body` to its end, handing each event to `on_event`.
pub async fn run(conn: &Conn, body: Request, mut on_event: impl FnMut(Event)) -> Result<Response, WireError> {
    let mut running = start(conn, body)?;
    while let Some(item) = running.items.recv().await {
        match item {
            Item::Event(event) => on_event(event),
            Item::Done(answer) => return *answer,
        }
    }
    Err(WireError::internal("the request ended without an answer"))
}
