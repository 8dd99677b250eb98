//! The watchdog: a worker is judged stuck only when its heartbeats say it has had work in
//! hand without progress for `stuck_after` (or when they stop altogether); slow but steady
//! work is never killed.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// How long a worker judged stuck has to exit after SIGTERM before SIGKILL.
const STUCK_KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The last heartbeat a worker sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Beat {
    pub at: std::time::Instant,
    pub busy: bool,
    pub since_progress_ms: u64,
}

impl Beat {
    /// Why the worker is stuck, if it is: busy without progress, or silent, for `limit`.
    pub fn stuck(&self, limit: std::time::Duration) -> Option<String> {
        let silent = self.at.elapsed();
        let without_progress = std::time::Duration::from_millis(self.since_progress_ms) + silent;
        if silent > limit {
            Some(format!("sent no heartbeat for {} s", silent.as_secs()))
        } else if self.busy && without_progress > limit {
            Some(format!("made no progress for {} s with work in hand", without_progress.as_secs()))
        } else {
            None
        }
    }
}

/// Kills a worker that is stuck: busy without progress, or silent, for `stuck_after`
/// (SIGTERM, then SIGKILL after a grace period). Its death then goes the way of any crash:
/// jobs in hand fail or are replayed, and the model restarts it.
pub(super) async fn watchdog(
    beat: Arc<Mutex<Beat>>,
    mut gone: watch::Receiver<bool>,
    stuck: Arc<Mutex<Option<String>>>,
    stuck_after: std::time::Duration,
    model: String,
    pid: u32,
) {
    let mut tick = tokio::time::interval(mlxd_proto::worker::HEARTBEAT_INTERVAL);
    let why = loop {
        tokio::select! {
            _ = gone.wait_for(|gone| *gone) => return,
            _ = tick.tick() => {}
        }
        let last = *beat.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = last.stuck(stuck_after) {
            break why;
        }
    };
    tracing::error!(%model, pid, "worker {why}; killing it");
    *stuck.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    // The child is not reaped until its handle says so, so the pid cannot be reused yet.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if tokio::time::timeout(STUCK_KILL_GRACE, gone.wait_for(|gone| *gone)).await.is_err() {
        tracing::warn!(%model, "worker ignored SIGTERM; SIGKILL");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Beat;

    #[test]
    fn only_work_without_progress_or_silence_is_stuck() {
        let limit = Duration::from_secs(2);
        let now = Instant::now();
        let beat = |busy, since_progress_ms| Beat { at: now, busy, since_progress_ms };
        assert!(beat(true, 500).stuck(limit).is_none(), "busy and progressing");
        assert!(beat(false, 60_000).stuck(limit).is_none(), "idle for long is not stuck");
        assert!(beat(true, 2_500).stuck(limit).unwrap().contains("no progress"));
        let silent = Beat { at: now - Duration::from_secs(3), busy: false, since_progress_ms: 0 };
        assert!(silent.stuck(limit).unwrap().contains("no heartbeat"));
    }
}
