//! Default socket location, shared by the daemon (where to bind) and clients (where to
//! connect) so that both always agree. Reads the environment (and, for clients, whether
//! a socket file exists); nothing else.

use std::path::PathBuf;

/// Environment variable naming the socket path.
pub const SOCKET_ENV: &str = "MLXD_SOCKET";

/// Where the system service listens (`systemd/mlxd.socket`, the LaunchDaemon): clients
/// that find no per-user daemon look here next.
#[cfg(target_os = "macos")]
pub const SYSTEM_SOCKET_PATH: &str = "/var/run/mlxd.sock";
#[cfg(not(target_os = "macos"))]
pub const SYSTEM_SOCKET_PATH: &str = "/run/mlxd/mlxd.sock";

/// Where the per-user LaunchAgent listens (macOS has no `$XDG_RUNTIME_DIR`, and `/tmp`
/// is emptied at boot, so it lives in the user's Library); `None` elsewhere, where the
/// user unit listens at the default path.
pub fn agent_socket_path() -> Option<PathBuf> {
    if !cfg!(target_os = "macos") {
        return None;
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_absolute())?;
    Some(home.join("Library/Application Support/mlxd/mlxd.sock"))
}

/// Where a client connects when given no path: `$MLXD_SOCKET` if set; else the first of
/// the per-user default, the LaunchAgent's socket (macOS) and the system service's socket
/// that exists; else the per-user default (so the error names the path a user would start
/// a daemon on). Checks only that the files exist.
pub fn client_socket_path(uid: u32) -> PathBuf {
    let user = default_socket_path(uid);
    let explicit = std::env::var_os(SOCKET_ENV).is_some_and(|p| !p.is_empty());
    if explicit {
        return user;
    }
    let candidates = [Some(user.clone()), agent_socket_path(), Some(PathBuf::from(SYSTEM_SOCKET_PATH))];
    candidates.into_iter().flatten().find(|path| path.exists()).unwrap_or(user)
}

/// The socket path to use when none is given on the command line:
/// `$MLXD_SOCKET`, else `$XDG_RUNTIME_DIR/mlxd/mlxd.sock`, else `/tmp/mlxd-$UID/mlxd.sock`.
pub fn default_socket_path(uid: u32) -> PathBuf {
    socket_path_from(
        std::env::var_os(SOCKET_ENV).map(PathBuf::from),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        uid,
    )
}

fn socket_path_from(explicit: Option<PathBuf>, runtime_dir: Option<PathBuf>, uid: u32) -> PathBuf {
    if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return path;
    }
    if let Some(dir) = runtime_dir.filter(|p| p.is_absolute()) {
        return dir.join("mlxd").join("mlxd.sock");
    }
    PathBuf::from(format!("/tmp/mlxd-{uid}")).join("mlxd.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let explicit = Some(PathBuf::from("/x/y.sock"));
        let runtime = Some(PathBuf::from("/run/user/7"));
        assert_eq!(socket_path_from(explicit, runtime.clone(), 7), PathBuf::from("/x/y.sock"));
        assert_eq!(socket_path_from(None, runtime, 7), PathBuf::from("/run/user/7/mlxd/mlxd.sock"));
        assert_eq!(socket_path_from(None, None, 7), PathBuf::from("/tmp/mlxd-7/mlxd.sock"));
        // a relative XDG_RUNTIME_DIR is invalid per the XDG spec and ignored
        let relative = Some(PathBuf::from("run"));
        assert_eq!(socket_path_from(None, relative, 7), PathBuf::from("/tmp/mlxd-7/mlxd.sock"));
    }
}
