//! Flow control and cancellation of one request in flight: what the client can still say
//! about it after sending it (Cancel, Credit). Credit is consumed by the generation
//! handler ([`crate::core::dispatch`]); the front end only adds grants.

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

/// What the client can still say about a request in flight: Cancel and Credit.
#[derive(Debug, Default)]
pub struct Control {
    pub cancel: CancellationToken,
    pub credit: CreditGate,
    /// A generation stream (counted against the per-session stream limit).
    pub is_stream: bool,
}

/// Stream credit granted by the client and not yet passed on. Lossless however many small
/// grants arrive: they add up in one counter, and `Notify` keeps a wake-up if nobody waits.
#[derive(Debug, Default)]
pub struct CreditGate {
    granted: std::sync::atomic::AtomicU32,
    notify: tokio::sync::Notify,
}

impl CreditGate {
    pub fn add(&self, events: u32) {
        let _ = self.granted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_add(events)));
        self.notify.notify_one();
    }

    /// Waits for credit and takes all of it.
    pub async fn take(&self) -> u32 {
        loop {
            let events = self.granted.swap(0, Ordering::AcqRel);
            if events > 0 {
                return events;
            }
            self.notify.notified().await;
        }
    }
}
