//! In-process workers for unit tests: the registry's [`Effects`] with workers that live in
//! the test process on in-memory links (no Python, no processes), so the model state
//! machine and the request core run on tokio's paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use mlxd_proto::codec::FrameCodec;
use mlxd_proto::frame::ABSOLUTE_MAX_FRAME_LEN;
use mlxd_proto::worker::{FromWorker, Job, JobOutput, ToWorker, WorkerReady, HEARTBEAT_INTERVAL};
use mlxd_proto::{ModelKind, WireError};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::host::{Effects, Progress};
use crate::spec::ModelSpec;
use crate::supervise::{StderrTail, WorkerHandle};
use crate::tasks::Tasks;
use crate::weights::pool::Pinned;

/// Workers that live in this process: each answers embeddings (`dim` 2) and tokenize jobs
/// on an in-memory link and sends heartbeats; loads can be made to fail or take time, and
/// a worker can be made to die.
#[derive(Debug, Default)]
pub struct InProcess {
    pub starts: AtomicU32,
    /// Loads still to fail (each one that fails counts down).
    pub failing_loads: AtomicU32,
    pub load_time: Mutex<Duration>,
    /// One token per started worker: cancelling it is the worker dying.
    pub alive: Mutex<Vec<CancellationToken>>,
}

impl InProcess {
    pub fn starts(&self) -> u32 {
        self.starts.load(Ordering::SeqCst)
    }

    pub fn kill_last(&self) {
        if let Some(worker) = self.alive.lock().unwrap().last() {
            worker.cancel();
        }
    }
}

impl Effects for InProcess {
    fn prepare_weights(&self, _spec: &ModelSpec) -> Result<Pinned, WireError> {
        Ok(Pinned::default())
    }

    fn start_worker<'a>(
        &'a self,
        spec: &'a ModelSpec,
        tasks: &'a Tasks,
        progress: Progress,
    ) -> BoxFuture<'a, Result<WorkerHandle, WireError>> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let fail =
            self.failing_loads.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok();
        let load_time = *self.load_time.lock().unwrap();
        let alive = CancellationToken::new();
        self.alive.lock().unwrap().push(alive.clone());
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(worker(theirs, n, spec.kind, fail, load_time, alive));
        Box::pin(async move {
            WorkerHandle::attach(
                Box::new(ours),
                None,
                StderrTail::default(),
                spec,
                Duration::from_secs(120),
                tasks,
                move |p| progress(p),
            )
            .await
        })
    }
}

/// One in-process worker: worker number `n` is its "pid".
async fn worker(
    link: tokio::io::DuplexStream,
    n: u32,
    kind: ModelKind,
    fail: bool,
    load_time: Duration,
    alive: CancellationToken,
) {
    let mut link =
        Framed::new(link, FrameCodec::<ToWorker, FromWorker>::new(ABSOLUTE_MAX_FRAME_LEN, ABSOLUTE_MAX_FRAME_LEN));
    tokio::time::sleep(load_time).await;
    if fail {
        let _ = link.send(FromWorker::LoadFailed { message: format!("load {n} failed on purpose") }).await;
        return;
    }
    let ready = WorkerReady {
        pid: n,
        kind,
        dim: 2,
        max_seq_len: 16,
        backend: "test".into(),
        python_version: "none".into(),
        single_stream: None,
    };
    if link.send(FromWorker::Ready(ready)).await.is_err() {
        return;
    }
    let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            () = alive.cancelled() => return,
            _ = beat.tick() => {
                if link.send(FromWorker::Heartbeat { busy: false, since_progress_ms: 0 }).await.is_err() {
                    return;
                }
            }
            message = link.next() => match message {
                Some(Ok(ToWorker::Job { id, job })) => {
                    let result = match job {
                        // A text's vector is (its length with its prompt's name, the worker's number).
                        Job::Embed { texts, prompts, .. } => Ok(JobOutput::Embeddings {
                            count: texts.len() as u32,
                            dim: 2,
                            vectors: texts
                                .iter()
                                .zip(prompts.iter().chain(std::iter::repeat(&String::new())))
                                .flat_map(|(t, p)| [(t.len() + p.len()) as f32, n as f32])
                                .collect(),
                            tokens: texts.iter().map(|t| t.len() as u32).collect(),
                        }),
                        // A document's score is its length; a pair's tokens, both lengths.
                        Job::Rerank { queries, documents } => {
                            let pairs = queries.iter().zip(&documents).flat_map(|(q, docs)| docs.iter().map(move |d| (q, d)));
                            let (scores, tokens) = pairs.map(|(q, d)| (d.len() as f32, (q.len() + d.len()) as u32)).unzip();
                            Ok(JobOutput::Scores { scores, tokens })
                        }
                        Job::Tokenize { text, .. } => Ok(JobOutput::Tokens(text.bytes().map(u32::from).collect())),
                        _ => Err(WireError::bad_request("not served by the test worker")),
                    };
                    if link.send(FromWorker::Done { id, result }).await.is_err() {
                        return;
                    }
                }
                Some(Ok(ToWorker::Shutdown)) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}
