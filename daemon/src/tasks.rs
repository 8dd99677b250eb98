//! Owners for the daemon's background tasks (loads, keep-alive timers, batchers, each
//! worker's link and watchdog): every one is tracked, stops at shutdown, and a panic in one
//! is noticed and logged as an error naming it — a service task (an embedding batcher) is
//! restarted, so a bug in one batch cannot leave a model's requests hanging for good.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a service task that panicked waits before it runs again (a bug that panics on
/// every run then costs a log line per pause, not a spinning CPU).
const RESTART_PAUSE: Duration = Duration::from_millis(100);

/// The owner of a set of background tasks. Cheap to clone; clones share the set.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Set when the daemon begins to shut down (before its workers are stopped): nothing
    /// new is started from then on, e.g. no crashed worker is restarted.
    closing: CancellationToken,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `future` as an owned task: cancelled at shutdown, a panic logged with `name`.
    /// Call within the tokio runtime.
    pub fn spawn<F>(&self, name: &'static str, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        let inner = tokio::spawn(future);
        self.tracker.spawn(async move {
            let abort = inner.abort_handle();
            tokio::select! {
                result = inner => if let Err(err) = result {
                    if err.is_panic() {
                        tracing::error!(task = name, "background task panicked: {}", panic_message(err));
                    }
                },
                () = stop.cancelled() => abort.abort(),
            }
        });
    }

    /// Runs the service task `make()` until shutdown: if it panics or ends, it is logged
    /// and started again after a short pause.
    pub fn spawn_service<M, F>(&self, name: &'static str, make: M)
    where
        M: Fn() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            loop {
                let run = tokio::spawn(make());
                let abort = run.abort_handle();
                tokio::select! {
                    result = run => match result {
                        Err(err) if err.is_panic() => {
                            tracing::error!(task = name, "service task panicked; restarting it: {}", panic_message(err));
                        }
                        _ => tracing::error!(task = name, "service task ended; restarting it"),
                    },
                    () = stop.cancelled() => {
                        abort.abort();
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(RESTART_PAUSE) => {}
                    () = stop.cancelled() => return,
                }
            }
        });
    }

    /// The daemon is shutting down: no new loads or restarts.
    pub fn begin_shutdown(&self) {
        self.closing.cancel();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Cancelled when the daemon begins to shut down.
    pub fn closing_token(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Stops every task and waits for them, at most `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.closing.cancel();
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_err() {
            tracing::warn!(remaining = self.tracker.len(), "background tasks did not stop in time");
        }
    }
}

fn panic_message(err: tokio::task::JoinError) -> String {
    let payload = err.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_service_that_panics_is_restarted_and_shutdown_stops_it() {
        let tasks = Tasks::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        tasks.spawn_service("test service", move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("bug in a batch");
                }
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "restarted after each panic, then kept running");
        tasks.spawn("forever", std::future::pending());
        tasks.shutdown(Duration::from_secs(5)).await;
        assert!(tasks.tracker.is_empty());
    }
}
