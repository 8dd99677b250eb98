//! Socket activation: a listening socket handed over by the service manager, so the first
//! client starts the daemon and a restart never drops connections waiting in the backlog.
//!
//! - systemd: `LISTEN_PID` (must be this process) and `LISTEN_FDS` (the sockets are fds
//!   3, 4, ...; mlxd uses the first), read by the `sd-notify` crate, which marks the fds
//!   close-on-exec (systemd passes them inheritable) and removes `LISTEN_PID`, `LISTEN_FDS`
//!   and `LISTEN_FDNAMES` so workers do not see them.
//! - launchd (macOS): `launch_activate_socket("Listeners")`, the `Sockets` key of the plist.
//!
//! Either way the socket is checked here to be a listening Unix stream socket before use.
//!
//! Not the `listenfd` crate: it takes the fds when `LISTEN_PID` is missing or empty (its
//! extension for development proxies) and honours `LISTEN_FDS_FIRST_FD`, so a stray
//! `LISTEN_FDS` would make mlxd serve whatever fd 3 is; and it leaves `LISTEN_FDNAMES` set.
//! `sd-notify` follows `sd_listen_fds(3)`: the fds are ours only if `LISTEN_PID` is this
//! process.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};

/// The name of the socket in the launchd plist's `Sockets` dictionary.
pub const LAUNCHD_SOCKET_NAME: &str = "Listeners";

/// A listening socket from the service manager, and where it is.
#[derive(Debug)]
pub struct Inherited {
    pub listener: UnixListener,
    /// The socket's path (`None` for an abstract or unnamed socket).
    pub path: Option<PathBuf>,
    /// "systemd" or "launchd".
    pub manager: &'static str,
}

/// The socket the service manager passed, if it passed one. Call before any thread is
/// started (it edits the environment).
pub fn take() -> Result<Option<Inherited>> {
    if let Some(inherited) = from_systemd()? {
        return Ok(Some(inherited));
    }
    from_launchd()
}

fn from_systemd() -> Result<Option<Inherited>> {
    // SAFETY: `take` runs before any thread is started, so no one reads the environment
    // while the crate removes the LISTEN_* variables.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }.context("reading LISTEN_FDS")?;
    // SAFETY: LISTEN_PID is this process, so systemd passed these fds to us, and nothing
    // else in this process owns them.
    let mut owned = fds.map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name));
    let Some((first, name)) = owned.next() else { return Ok(None) };
    let others = owned.count();
    if others > 0 {
        // Dropping them (in `count`) closed them.
        tracing::warn!(
            count = others + 1,
            "systemd passed several sockets; serving the first (fd 3), closed the others"
        );
    }
    tracing::debug!(fd = first.as_raw_fd(), name, "socket from systemd");
    checked(first, "systemd").map(Some)
}

/// Checks `fd` is a listening Unix stream socket, makes it close-on-exec, and wraps it.
fn checked(fd: OwnedFd, manager: &'static str) -> Result<Inherited> {
    let kind = getsockopt(&fd, sockopt::SockType).with_context(|| format!("the socket {manager} passed"))?;
    if kind != SockType::Stream {
        bail!("the socket {manager} passed is not a stream socket ({kind:?}); use ListenStream= in mlxd.socket");
    }
    if !getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false) {
        bail!("the socket {manager} passed is not listening");
    }
    let addr: UnixAddr = getsockname(fd.as_raw_fd())
        .with_context(|| format!("the socket {manager} passed is not a Unix socket; mlxd serves Unix sockets only"))?;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .context("marking the inherited socket close-on-exec")?;
    let listener = UnixListener::from(fd);
    listener.set_nonblocking(true).context("making the inherited socket non-blocking")?;
    Ok(Inherited { listener, path: addr.path().map(PathBuf::from), manager })
}

#[cfg(target_os = "macos")]
fn from_launchd() -> Result<Option<Inherited>> {
    use std::ffi::CString;
    use std::os::raw::{c_char, c_int};

    extern "C" {
        // <launch.h>, in libSystem since macOS 10.10.
        fn launch_activate_socket(name: *const c_char, fds: *mut *mut c_int, cnt: *mut libc::size_t) -> c_int;
    }
    let name = CString::new(LAUNCHD_SOCKET_NAME).context("socket name")?;
    let mut fds: *mut c_int = std::ptr::null_mut();
    let mut count: libc::size_t = 0;
    // SAFETY: valid C string and out-pointers; launchd allocates `fds` with malloc.
    let err = unsafe { launch_activate_socket(name.as_ptr(), &mut fds, &mut count) };
    match err {
        0 => {}
        // Not started by launchd, or no socket of that name in the plist.
        libc::ESRCH | libc::ENOENT => return Ok(None),
        errno => bail!("launch_activate_socket: {}", std::io::Error::from_raw_os_error(errno)),
    }
    // SAFETY: on success `fds` points to `count` descriptors that are now ours.
    let owned: Vec<OwnedFd> = (0..count).map(|i| unsafe { OwnedFd::from_raw_fd(*fds.add(i)) }).collect();
    // SAFETY: allocated by launchd with malloc; we took the descriptors out of it.
    unsafe { libc::free(fds.cast()) };
    let Some(first) = owned.into_iter().next() else { return Ok(None) };
    checked(first, "launchd").map(Some)
}

#[cfg(not(target_os = "macos"))]
fn from_launchd() -> Result<Option<Inherited>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_unix_socket_passes_and_others_do_not() {
        let dir = std::env::temp_dir().join(format!("mlxd-activation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let inherited = checked(OwnedFd::from(listener), "test").unwrap();
        assert_eq!(inherited.path.as_deref(), Some(path.as_path()));

        let datagram = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let err = checked(OwnedFd::from(datagram), "test").unwrap_err();
        assert!(err.to_string().contains("not a stream socket"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
