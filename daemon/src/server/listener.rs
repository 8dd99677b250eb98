//! The listening socket: a private directory and file, one daemon per path, stale sockets
//! of dead daemons replaced, and the socket removed again at shutdown.
//!
//! One daemon per path is decided by an exclusive `flock` on `PATH.lock`, held for the
//! daemon's life: the kernel drops it when the process dies however it dies, so a lock we
//! can take means any socket file at the path is stale, and two daemons starting at the
//! same moment cannot both remove and rebind it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

/// A bound, listening socket and the lock that makes it ours.
#[derive(Debug)]
pub struct BoundSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    /// (device, inode) of the socket file we created, so shutdown never removes a file
    /// that someone else put at the path meanwhile. `None` for a socket the service
    /// manager passed: it owns the file, which outlives this process.
    identity: Option<(u64, u64)>,
    _lock: Option<Flock<File>>,
    /// "systemd" or "launchd" when the socket was inherited.
    pub activated_by: Option<&'static str>,
}

impl BoundSocket {
    /// Binds `path` with mode 0600 in a directory created with mode 0700 — or, with a
    /// `group`, the socket 0660 and a directory it creates 0710, both owned by that group.
    pub fn bind(path: &Path, group: Option<u32>) -> Result<BoundSocket> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating socket directory {}", dir.display()))?;
            if let Some(gid) = group {
                // Members may pass through to the socket, not list the directory.
                chown_group(dir, gid)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
                    .with_context(|| format!("chmod 0710 {}", dir.display()))?;
            }
        }
        let lock_path = lock_path(path);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another mlxd is already serving {} (it holds {}); stop it first or choose another --socket",
                path.display(),
                lock_path.display()
            ),
            Err((_, errno)) => bail!("cannot lock {}: {errno}", lock_path.display()),
        };

        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                tracing::warn!(path = %path.display(), "removing stale socket left by a daemon that is gone");
                std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            Ok(_) => bail!("{} exists and is not a socket; refusing to replace it", path.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("checking {}", path.display())),
        }

        // The process umask (set in main) already makes the socket 0600 at creation, so
        // there is no window in which it is reachable by others; chmod states it anyway.
        let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let mode = match group {
            Some(gid) => {
                chown_group(path, gid)?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            identity: Some((meta.dev(), meta.ino())),
            _lock: Some(lock),
            activated_by: None,
        })
    }

    /// A socket the service manager bound and passed (socket activation). Its permissions
    /// are the unit's (`SocketMode=`, `SocketGroup=`); the daemon never removes it. Call
    /// within the tokio runtime.
    pub fn inherited(inherited: crate::service::activation::Inherited) -> Result<BoundSocket> {
        let listener =
            UnixListener::from_std(inherited.listener).context("registering the inherited socket with tokio")?;
        Ok(BoundSocket {
            listener,
            path: inherited.path.unwrap_or_else(|| PathBuf::from("(inherited socket)")),
            identity: None,
            _lock: None,
            activated_by: Some(inherited.manager),
        })
    }

    /// Removes the socket file if it is still the one we bound.
    pub fn remove_socket_file(&self) {
        let Some(identity) = self.identity else { return };
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == identity => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %err, "cannot remove socket");
                }
            }
            _ => {}
        }
    }
}

fn chown_group(path: &Path, gid: u32) -> Result<()> {
    nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
        .with_context(|| format!("giving {} to group {gid} (the daemon's user must be a member)", path.display()))
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}
