//! Default socket location, shared by the daemon (where to bind) and clients (where to
//! connect) so that both always agree. Reads the environment only; no I/O.

use std::path::PathBuf;

/// Environment variable naming the socket path.
pub const SOCKET_ENV: &str = "MLXD_SOCKET";

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
