//! A worker's stderr: logged line by line as it comes (it is the worker's own log), with
//! the last lines kept for the cause of its death.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// Lines of a worker's stderr kept for the cause of its death.
const STDERR_TAIL_LINES: usize = 12;

/// The last lines a worker wrote to stderr (each is also logged as it comes).
#[derive(Debug, Clone)]
pub struct StderrTail(Arc<(Mutex<VecDeque<String>>, watch::Sender<bool>)>, Arc<Mutex<String>>);

impl Default for StderrTail {
    fn default() -> Self {
        StderrTail(Arc::new((Mutex::new(VecDeque::new()), watch::Sender::new(false))), Arc::default())
    }
}

impl StderrTail {
    /// The model the worker's lines are logged under ("(spare)" until a spare is adopted).
    pub(super) fn set_model(&self, model: &str) {
        *self.1.lock().unwrap_or_else(|p| p.into_inner()) = model.to_owned();
    }

    fn model(&self) -> String {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn push(&self, line: String) {
        let mut lines = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, joined by " | " (empty if none).
    pub fn joined(&self) -> String {
        let lines = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join(" | ")
    }

    /// Waits (briefly) until the worker's stderr is closed, so its last words are read.
    pub(super) async fn wait_closed(&self) {
        let mut closed = self.0 .1.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), closed.wait_for(|c| *c)).await;
    }
}

pub(super) fn tail_suffix(stderr: &StderrTail) -> String {
    let tail = stderr.joined();
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its last output: {tail}")
    }
}

/// Logs a worker's stderr line by line (it is the worker's own log) and keeps the last
/// lines for the cause of its death.
pub(super) async fn forward_stderr(pipe: tokio::process::ChildStderr, tail: StderrTail, pid: u32) {
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "mlxd::worker", model = %tail.model(), pid, "{line}");
        tail.push(line);
    }
    tail.0 .1.send_replace(true);
}
