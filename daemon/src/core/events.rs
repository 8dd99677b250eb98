//! Where a request's stream events go (generation tokens, load progress): the front end
//! decides how they reach its client — frames on the binary protocol, server-sent events
//! or NDJSON over HTTP, a channel in a unit test.

use std::future::Future;

use mlxd_proto::Event;

/// The client is gone: nothing more can be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

pub trait EventSink: Send + Sync {
    /// Delivers `event`, waiting while the client's queue is full (tokens: the credit
    /// already bounds how many there can be).
    fn send(&self, event: Event) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Delivers `event` if there is room now, else drops it (advisory events: progress).
    fn offer(&self, event: Event);
}

/// A sink on a bounded channel (unit tests, and front ends that forward per request).
impl EventSink for tokio::sync::mpsc::Sender<Event> {
    async fn send(&self, event: Event) -> Result<(), Gone> {
        tokio::sync::mpsc::Sender::send(self, event).await.map_err(|_| Gone)
    }

    fn offer(&self, event: Event) {
        let _ = self.try_send(event);
    }
}
