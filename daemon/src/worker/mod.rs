//! The worker side (`mlxd worker`): one process per loaded model, started by the
//! supervisor with its end of a socketpair on fd 3.
//!
//! Threads: the main thread runs a single-threaded tokio runtime that only moves frames
//! between the link and two bounded channels; one dedicated OS thread ([`python`]) owns
//! the embedded interpreter and makes every MLX call, because MLX streams have thread
//! affinity. The worker exits when the link closes: its supervisor is gone (on Linux,
//! PR_SET_PDEATHSIG, set before exec, kills it even sooner).

mod handoff;
mod jobs;
pub(crate) mod pyerr;
pub(crate) mod python;
mod streams;

pub use handoff::{Pulse, WorkItem, WorkerArgs};

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use mlxd_proto::codec::FrameCodec;
use mlxd_proto::frame::{FrameError, ABSOLUTE_MAX_FRAME_LEN};
use mlxd_proto::worker::{FromWorker, ToWorker, HEARTBEAT_INTERVAL, WORKER_LINK_FD};
use mlxd_proto::{ErrorCode, WireError};

use tokio::sync::mpsc;
use tokio_util::codec::Framed;

/// The worker's exit status when its link writer fails.
const WRITER_FAILED_EXIT: i32 = 70;

/// Jobs buffered between the link and the Python thread. The supervisor's admission
/// queue already bounds what it sends; this bounds the worker's memory independently.
const JOB_QUEUE: usize = 256;

/// Runs a worker: for the model in `args`, or with `args` `None` a spare (its virtualenv
/// is `python`) that imports what every load needs, then waits for a `Load`.
pub fn main(args: Option<WorkerArgs>, python: std::path::PathBuf) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        // Already set by the supervisor before exec; repeated so a worker started any other
        // way still dies with its parent, then a check for a parent that died before that.
        // SAFETY: prctl with these arguments has no memory effects.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        if nix::unistd::getppid().as_raw() == 1 {
            bail!("supervisor already exited");
        }
    }
    if nix::fcntl::fcntl(unsafe { std::os::fd::BorrowedFd::borrow_raw(WORKER_LINK_FD) }, nix::fcntl::FcntlArg::F_GETFD)
        .is_err()
    {
        bail!("`mlxd worker` is started by the daemon with its link on fd {WORKER_LINK_FD}; it is not run by hand");
    }
    // SAFETY: fd 3 was checked open above, and this process owns it (dup2'd by the supervisor).
    let link = unsafe { StdUnixStream::from_raw_fd(WORKER_LINK_FD) };
    link.set_nonblocking(true)?;

    let (jobs_tx, jobs_rx) = mpsc::channel::<WorkItem>(JOB_QUEUE);
    let (out_tx, out_rx) = mpsc::channel::<FromWorker>(JOB_QUEUE);
    let pulse = std::sync::Arc::new(Pulse::new());
    // Weak: once the MLX thread drops its sender the answers channel closes (the orderly
    // end), and the heartbeats stop with it.
    let heartbeats = (out_tx.downgrade(), pulse.clone());
    let mlx_thread = std::thread::Builder::new()
        .name("mlx".into())
        .spawn(move || python::run(args, &python, jobs_rx, out_tx, &pulse))
        .context("starting the MLX thread")?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let supervisor_gone = runtime.block_on(async move {
        let (out, pulse) = heartbeats;
        let beating = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tick.tick().await;
                let Some(out) = out.upgrade() else { break };
                if out.send(pulse.heartbeat()).await.is_err() {
                    break;
                }
            }
        });
        let gone = relay(link, jobs_tx, out_rx).await;
        beating.abort();
        gone
    })?;
    if supervisor_gone {
        // Nobody is left to answer; do not wait for the job in progress.
        std::process::exit(0);
    }
    let _ = mlx_thread.join();
    Ok(())
}

/// Moves jobs from the link to the MLX thread and answers back. Returns true when the
/// supervisor closed the link, false after an orderly Shutdown has been served.
async fn relay(
    link: StdUnixStream,
    jobs: mpsc::Sender<WorkItem>,
    mut answers: mpsc::Receiver<FromWorker>,
) -> Result<bool> {
    let stream = tokio::net::UnixStream::from_std(link)?;
    let framed =
        Framed::new(stream, FrameCodec::<ToWorker, FromWorker>::new(ABSOLUTE_MAX_FRAME_LEN, ABSOLUTE_MAX_FRAME_LEN));
    let (mut sink, mut incoming) = framed.split();
    let writer = tokio::spawn(async move {
        while let Some(answer) = answers.recv().await {
            let job = match &answer {
                FromWorker::Done { id, .. } => Some(*id),
                _ => None,
            };
            let error = match sink.send(answer).await {
                Ok(()) => continue,
                Err(error) => error,
            };
            // An answer too large for the link fails that job alone, as a typed error.
            if let (Some(id), FrameError::TooLarge { len, max }) = (job, &error) {
                let error = WireError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the answer is {len} bytes, over the worker link's limit of {max}; ask for less per request"
                    ),
                );
                if sink.send(FromWorker::Done { id, result: Err(error) }).await.is_ok() {
                    continue;
                }
            }
            // Anything else leaves the supervisor unable to hear from us: exit now, so it
            // sees the link close at once (and replays the jobs) instead of waiting for
            // the watchdog to notice the silence.
            eprintln!("mlxd worker: writing to the supervisor failed: {error}; exiting");
            std::process::exit(WRITER_FAILED_EXIT);
        }
    });
    let gone = loop {
        let item = match incoming.next().await {
            Some(Ok(ToWorker::Job { id, job })) => WorkItem::Job(id, job),
            Some(Ok(ToWorker::Credit { id, events })) => WorkItem::Credit(id, events),
            Some(Ok(ToWorker::Cancel { id })) => WorkItem::Cancel(id),
            Some(Ok(ToWorker::Load(model))) => WorkItem::Load(model),
            Some(Ok(ToWorker::Shutdown)) => break false,
            Some(Err(err)) => {
                eprintln!("mlxd worker: bad frame from supervisor: {err}");
                break true;
            }
            None => break true,
        };
        if jobs.send(item).await.is_err() {
            break false; // the MLX thread ended (load failed); the writer reports why
        }
    };
    drop(jobs);
    if !gone {
        // Orderly: the MLX thread drains its queue, then drops its sender and the writer ends.
        let _ = writer.await;
    }
    Ok(gone)
}
