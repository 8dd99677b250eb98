//! Default socket location, shared by the daemon (where to bind) and clients (where to
//! connect) so that both always agree. Reads the environment (and, for clients, whether
//! a socket file exists and who owns its directory); nothing else.

use std::path::{Path, PathBuf};

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

/// Where a client connects when given no path ([`client_socket`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSocket {
    pub path: PathBuf,
    /// Default sockets not considered because someone other than the client and root owns
    /// their directory: whoever created it (`/tmp/mlxd-$UID` can be created by anyone)
    /// decides what listens there, and a client would only be refused by that listener.
    pub passed_over: Vec<PassedOver>,
}

/// A default socket whose directory belongs to someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedOver {
    pub path: PathBuf,
    pub directory_owner: u32,
}

/// Where a client of user `uid` connects when given no path: `$MLXD_SOCKET` if set (never
/// passed over); else the first of the per-user default, the LaunchAgent's socket (macOS)
/// and the system service's socket that exists in a directory owned by `uid` or root; else
/// the first of them whose directory is not someone else's (the per-user default, unless
/// it is taken, so the error names the path a user would start a daemon on). Checks only
/// files and owners: the server itself is checked once connected.
pub fn client_socket(uid: u32) -> ClientSocket {
    use std::os::unix::fs::MetadataExt;
    let user = default_socket_path(uid);
    let explicit = std::env::var_os(SOCKET_ENV).is_some_and(|p| !p.is_empty());
    if explicit {
        return ClientSocket { path: user, passed_over: Vec::new() };
    }
    let candidates = [Some(user), agent_socket_path(), Some(PathBuf::from(SYSTEM_SOCKET_PATH))];
    let candidates: Vec<PathBuf> = candidates.into_iter().flatten().collect();
    choose_client_socket(&candidates, uid, |path| std::fs::metadata(path).ok().map(|meta| meta.uid()))
}

/// [`client_socket`] among `candidates` (the per-user default first); `owner` is the uid
/// owning a path (after links), `None` when there is nothing there.
fn choose_client_socket(candidates: &[PathBuf], uid: u32, owner: impl Fn(&Path) -> Option<u32>) -> ClientSocket {
    let mut passed_over = Vec::new();
    let mut usable = Vec::new();
    for candidate in candidates {
        match candidate.parent().and_then(&owner) {
            Some(directory_owner) if directory_owner != uid && directory_owner != 0 => {
                passed_over.push(PassedOver { path: candidate.clone(), directory_owner });
            }
            _ => usable.push(candidate),
        }
    }
    let path = usable
        .iter()
        .copied()
        .find(|path| owner(path).is_some())
        .or(usable.first().copied())
        // Every directory someone else's (the system socket's too): the per-user default,
        // whose listener the client's check of the server refuses.
        .or(candidates.first())
        .cloned()
        .unwrap_or_default();
    ClientSocket { path, passed_over }
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
    use std::collections::HashMap;

    use super::*;

    const ME: u32 = 7;
    const SQUATTER: u32 = 9;

    /// [`choose_client_socket`] for user 7 over the per-user default and the system socket,
    /// on a file system holding `files` (path, owner).
    fn choose(files: &[(&str, u32)]) -> ClientSocket {
        let files: HashMap<PathBuf, u32> = files.iter().map(|&(path, uid)| (PathBuf::from(path), uid)).collect();
        let candidates = [PathBuf::from("/tmp/mlxd-7/mlxd.sock"), PathBuf::from("/run/mlxd/mlxd.sock")];
        choose_client_socket(&candidates, ME, |path| files.get(path).copied())
    }

    fn chosen(path: &str) -> ClientSocket {
        ClientSocket { path: PathBuf::from(path), passed_over: Vec::new() }
    }

    #[test]
    fn a_default_socket_in_someone_elses_directory_is_passed_over() {
        let mine = [("/tmp/mlxd-7", ME), ("/tmp/mlxd-7/mlxd.sock", ME)];
        let squatted = [("/tmp/mlxd-7", SQUATTER), ("/tmp/mlxd-7/mlxd.sock", SQUATTER)];
        let system = [("/run/mlxd", 0), ("/run/mlxd/mlxd.sock", 0)];
        let passed_over = vec![PassedOver { path: "/tmp/mlxd-7/mlxd.sock".into(), directory_owner: SQUATTER }];

        // Nothing anywhere, or only the user's own: the per-user default.
        assert_eq!(choose(&[]), chosen("/tmp/mlxd-7/mlxd.sock"));
        assert_eq!(choose(&[mine, system].concat()), chosen("/tmp/mlxd-7/mlxd.sock"));
        // The user's directory without a socket: the system service.
        assert_eq!(choose(&[[mine[0]].as_slice(), &system].concat()), chosen("/run/mlxd/mlxd.sock"));
        // Root may own any of them (only root could have made it).
        assert_eq!(choose(&[("/tmp/mlxd-7", 0), ("/tmp/mlxd-7/mlxd.sock", 0)]), chosen("/tmp/mlxd-7/mlxd.sock"));

        // Squatted: the system service is reached...
        let both = choose(&[squatted, system].concat());
        assert_eq!(both, ClientSocket { path: "/run/mlxd/mlxd.sock".into(), passed_over: passed_over.clone() });
        // ...or, when it is not there, its path is where no daemon answers (never the squatter's).
        let alone = choose(&squatted);
        assert_eq!(alone, ClientSocket { path: "/run/mlxd/mlxd.sock".into(), passed_over: passed_over.clone() });
        // A squatted directory is passed over even before a socket appears in it.
        assert_eq!(choose(&[squatted[0]]).passed_over, passed_over);

        // Every directory someone else's: the per-user default, which the server check refuses.
        let taken = choose(&[squatted, [("/run/mlxd", SQUATTER), ("/run/mlxd/mlxd.sock", SQUATTER)]].concat());
        assert_eq!(taken.path, PathBuf::from("/tmp/mlxd-7/mlxd.sock"));
        assert_eq!(taken.passed_over.len(), 2);
    }

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
