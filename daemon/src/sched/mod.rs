//! Admission control: each model admits a bounded number of requests (queued or running);
//! the next one is refused at once with `Busy` and an estimate of when to retry, computed
//! from the queue depth and the measured service time. Nothing waits unbounded.
//!
//! - [`batcher`]: the embedding batcher that merges admitted requests into worker calls.

pub mod batcher;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlxd_proto::{ErrorCode, WireError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    capacity: u32,
    /// Exponentially weighted mean service time per request, in microseconds (0 = unknown).
    service_us: AtomicU64,
}

/// A request's place in its model's queue; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(capacity: usize) -> Admission {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity: capacity as u32,
            service_us: AtomicU64::new(0),
        }
    }

    /// Admits a request or refuses it at once.
    pub fn try_admit(&self, model: &str) -> Result<Ticket, WireError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(Ticket { _slot: slot }),
            Err(_) => {
                let depth = self.depth();
                Err(WireError::new(
                    ErrorCode::Busy,
                    format!("model {model} has {depth} requests queued or running (capacity {})", self.capacity),
                )
                .with_retry_after(self.retry_after_ms(depth)))
            }
        }
    }

    /// Requests admitted and not yet finished.
    pub fn depth(&self) -> u32 {
        self.capacity - self.slots.available_permits() as u32
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Feeds a finished request's service time into the estimate.
    pub fn record_service(&self, elapsed: Duration) {
        let sample = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.service_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 7 + sample) / 8 };
        self.service_us.store(new, Ordering::Relaxed);
    }

    /// Time for the queue ahead to drain at the measured rate (requests run one at a time
    /// per worker); at least 1 ms, and 50 ms per request when nothing has been measured.
    pub fn retry_after_ms(&self, depth: u32) -> u64 {
        let per_request_us = match self.service_us.load(Ordering::Relaxed) {
            0 => 50_000,
            us => us,
        };
        (u64::from(depth) * per_request_us / 1000).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_when_full_with_retry_hint() {
        let admission = Admission::new(2);
        let a = admission.try_admit("m").unwrap();
        let _b = admission.try_admit("m").unwrap();
        assert_eq!(admission.depth(), 2);
        let err = admission.try_admit("m").unwrap_err();
        assert_eq!(err.code, ErrorCode::Busy);
        assert_eq!(err.retry_after_ms, Some(100));
        drop(a);
        assert_eq!(admission.depth(), 1);
        assert!(admission.try_admit("m").is_ok());
    }

    #[test]
    fn retry_hint_follows_measured_service_time() {
        let admission = Admission::new(4);
        admission.record_service(Duration::from_millis(8));
        assert_eq!(admission.retry_after_ms(4), 32);
        admission.record_service(Duration::from_millis(16));
        assert_eq!(admission.retry_after_ms(1), 9);
    }
}
