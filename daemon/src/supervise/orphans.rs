//! Workers left behind by an earlier daemon on the same store, found and ended at start.
//!
//! Workers die with their supervisor in the normal course of things (PR_SET_PDEATHSIG on
//! Linux, and the link closing everywhere); this catches any that did not.

/// Ends workers left behind by an earlier daemon on the same store: `mlxd worker` processes
/// started with `--store STORE` whose parent is not a running `mlxd serve`/`stdio` (their
/// supervisor is gone). They die with their supervisor in the normal course of things
/// (PR_SET_PDEATHSIG, and the link closing); this catches any that did not. SIGTERM, then
/// SIGKILL after 2 s. Linux only (it reads /proc).
pub async fn end_orphans(store: &std::path::Path) {
    #[cfg(target_os = "linux")]
    {
        let orphans = find_orphans(store);
        if orphans.is_empty() {
            return;
        }
        for &pid in &orphans {
            tracing::warn!(pid, store = %store.display(), "ending a worker left behind by an earlier daemon");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while orphans.iter().any(|&pid| process_alive(pid)) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for &pid in orphans.iter().filter(|&&pid| process_alive(pid)) {
            tracing::warn!(pid, "the left-behind worker ignored SIGTERM; SIGKILL");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = store;
}

#[cfg(target_os = "linux")]
fn find_orphans(store: &std::path::Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let argv = cmdline(pid);
            is_mlxd(&argv, "worker")
                && argv.windows(2).any(|w| w[0] == "--store" && std::path::Path::new(&w[1]) == store)
                && !parent_of(pid).is_some_and(|parent| {
                    let argv = cmdline(parent);
                    is_mlxd(&argv, "serve") || is_mlxd(&argv, "stdio")
                })
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        })
        .unwrap_or_default()
}

#[cfg(target_os = "linux")]
fn is_mlxd(argv: &[String], command: &str) -> bool {
    argv.first().is_some_and(|exe| std::path::Path::new(exe).file_name().is_some_and(|n| n == "mlxd"))
        && argv.get(1).is_some_and(|c| c == command)
}

#[cfg(target_os = "linux")]
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}
