//! The test fault hook (`MLXD_TEST_FAULT`, read by `python/mlxd_runtime/faults.py`) reaches
//! workers only from a debug build of the daemon — what the tests run. A release build
//! serving users removes it from every worker's environment, so a variable left in a
//! service's environment cannot crash or hang its workers.
//!
//! The Python side is inert unless `MLXD_TEST_FAULT_ALLOWED=1` is set beside the hook,
//! which only [`scrub`] in a debug build does: running the worker's Python under any other
//! launcher cannot enable it either.

use std::sync::atomic::{AtomicBool, Ordering};

/// The hook: `STAGE:ACTION[:ARG]`, comma-separated (see faults.py).
pub const FAULT_ENV: &str = "MLXD_TEST_FAULT";
/// Set to `1` by a debug daemon when it passes the hook through; faults.py needs both.
pub const FAULT_ALLOWED_ENV: &str = "MLXD_TEST_FAULT_ALLOWED";

/// Whether workers may get the hook: in debug builds only.
pub fn worker_env_allows_fault_hook() -> bool {
    cfg!(debug_assertions)
}

/// Gives a worker's `command` the hook (with [`FAULT_ALLOWED_ENV`]) when this build allows
/// it and the daemon's environment asks for it; otherwise removes both variables, with a
/// warning the first time a release daemon finds the hook set.
pub fn scrub(command: &mut tokio::process::Command) {
    let requested = std::env::var_os(FAULT_ENV).is_some_and(|spec| !spec.is_empty());
    let refused = apply(command, requested, worker_env_allows_fault_hook());
    static WARNED: AtomicBool = AtomicBool::new(false);
    if refused && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("{FAULT_ENV} is set but this is a release build: the test fault hook is not passed to workers");
    }
}

/// Sets or removes the variables; returns whether a requested hook was withheld.
fn apply(command: &mut tokio::process::Command, requested: bool, allowed: bool) -> bool {
    if requested && allowed {
        command.env(FAULT_ALLOWED_ENV, "1");
        return false;
    }
    command.env_remove(FAULT_ENV).env_remove(FAULT_ALLOWED_ENV);
    requested
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_changes(requested: bool, allowed: bool) -> (bool, Vec<(String, Option<String>)>) {
        let mut command = tokio::process::Command::new("true");
        let withheld = apply(&mut command, requested, allowed);
        let changes = command
            .as_std()
            .get_envs()
            .map(|(key, value)| (key.to_string_lossy().into_owned(), value.map(|v| v.to_string_lossy().into_owned())))
            .collect();
        (withheld, changes)
    }

    #[test]
    fn the_hook_passes_only_when_allowed_and_asked_for() {
        let (withheld, changes) = env_changes(true, true);
        assert!(!withheld);
        assert_eq!(changes, [(FAULT_ALLOWED_ENV.to_owned(), Some("1".to_owned()))], "the hook itself is inherited");

        for (requested, allowed) in [(true, false), (false, true), (false, false)] {
            let (withheld, mut changes) = env_changes(requested, allowed);
            assert_eq!(withheld, requested, "a withheld hook is reported (to warn) only when it was asked for");
            changes.sort();
            assert_eq!(
                changes,
                [(FAULT_ENV.to_owned(), None), (FAULT_ALLOWED_ENV.to_owned(), None)],
                "requested={requested} allowed={allowed}: both removed"
            );
        }
    }
}
