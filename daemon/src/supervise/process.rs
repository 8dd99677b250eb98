//! Worker processes: starting `mlxd worker` for a model (its arguments, environment, link
//! descriptor, niceness, death signal) and reaping it (kill on drop, exit descriptions).

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

use mlxd_proto::worker::WORKER_LINK_FD;
use tokio::process::{Child, Command};

use super::fault_hook;
use crate::config::DaemonConfig;
use crate::spec::ModelSpec;

/// glibc malloc settings for workers on Linux: allocations up to 32 MiB (its maximum) come
/// from the heap, up to 256 MiB of free heap is kept rather than trimmed, and one arena
/// serves every thread. MLX's CPU buffers are then reused by malloc at no page-fault cost,
/// and the worker's memory stays at its working set. (With glibc's adaptive defaults, a
/// freed activation went back to the kernel and the next batch faulted it in again: ~50 %
/// slower; with per-thread arenas, the level under load wandered by ~20 % run to run.)
#[cfg(target_os = "linux")]
const WORKER_MALLOC_ENV: [(&str, &str); 3] =
    [("MALLOC_MMAP_THRESHOLD_", "33554432"), ("MALLOC_TRIM_THRESHOLD_", "268435456"), ("MALLOC_ARENA_MAX", "1")];

/// A child killed if dropped before it was reaped.
pub(super) struct KillOnDrop(pub(super) Option<Child>);

impl KillOnDrop {
    /// "exited with status N" / "was killed by signal N (SIGKILL)", waiting up to a second
    /// for the process to be reaped (it is killed if it has not exited by then).
    pub(super) async fn wait_briefly(&mut self) -> String {
        let Some(child) = self.0.as_mut() else { return "exited".into() };
        let status = match tokio::time::timeout(std::time::Duration::from_secs(1), child.wait()).await {
            Ok(Ok(status)) => status,
            _ => {
                let _ = child.kill().await;
                match child.wait().await {
                    Ok(status) => status,
                    Err(_) => return "exited (status unknown)".into(),
                }
            }
        };
        self.0 = None;
        describe_exit(status)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            let name = nix::sys::signal::Signal::try_from(signal).map_or_else(|_| String::new(), |s| format!(" ({s})"));
            format!("was killed by signal {signal}{name}")
        }
        _ => "exited".into(),
    }
}

pub(super) fn spawn_child(config: &DaemonConfig, spec: &ModelSpec, link: OwnedFd) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .arg("worker")
        .arg("--name")
        .arg(&spec.name)
        .arg("--kind")
        .arg(mlxd_proto::worker::kind_name(spec.kind))
        .arg("--path")
        .arg(&spec.path)
        .arg("--max-streams")
        .arg(spec.max_streams.to_string())
        .arg("--prompt-cache-bytes")
        .arg(spec.prompt_cache_bytes.to_string())
        .arg("--max-context")
        .arg(spec.max_context.to_string());
    if let Some(blas) = &config.blas_preload {
        tracing::info!(model = %spec.name, blas = %blas.display(), "preloading optimized BLAS into the worker");
    }
    start(command, config, link)
}

/// Starts a spare worker (`mlxd worker --spare`): the environment of any worker, no model.
pub(super) fn spawn_spare_child(config: &DaemonConfig, link: OwnedFd) -> std::io::Result<Child> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("worker").arg("--spare");
    start(command, config, link)
}

/// The rest of a worker's command line, its environment, descriptors and limits, then
/// the process.
fn start(mut command: Command, config: &DaemonConfig, link: OwnedFd) -> std::io::Result<Child> {
    command
        .arg("--python")
        .arg(&config.python.root)
        .arg("--store")
        .arg(&config.store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(blas) = &config.blas_preload {
        command.env("LD_PRELOAD", blas);
    }
    #[cfg(target_os = "linux")]
    for (name, value) in WORKER_MALLOC_ENV {
        // glibc: freed buffers stay in the heap for reuse instead of going back to the
        // kernel after every batch (MLX's own CPU buffer cache is off, see mlxd_runtime).
        if std::env::var_os(name).is_none() {
            command.env(name, value);
        }
    }
    fault_hook::scrub(&mut command);
    let link_fd = link.as_raw_fd();
    let nice = config.worker_nice;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (dup2, setpriority, prctl; no allocation).
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(link_fd, WORKER_LINK_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Before exec, so every thread the worker starts (BLAS, MLX) inherits it.
            if nice > 0 && libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            {
                // Die with the supervisor. Set here, before exec, so there is no window in
                // which the parent can die unnoticed; the worker checks its parent again.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(link);
    Ok(child)
}
