//! One HTTP connection as the handlers see it: its caller in the request core.

use std::sync::Arc;

use crate::core::Caller;

/// What every handler of one connection shares.
#[derive(Debug, Clone)]
pub struct Conn {
    pub caller: Arc<Caller>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Conn {
    pub fn new(caller: Arc<Caller>) -> Conn {
        Conn { caller, next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)) }
    }

    /// A fresh id for a request of this connection (ids are per caller).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
