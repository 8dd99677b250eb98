//! Reading a connection's peer credentials from its socket: uid, gid and pid
//! (SO_PEERCRED / getpeereid) and supplementary groups (Linux: SO_PEERGROUPS, so there is
//! no race with a pid being reused; macOS: the group database for the peer's uid).

use crate::core::Peer;

/// The peer of an accepted connection, from the kernel. Quick (system calls on the
/// socket only): it runs in the accept loop. On macOS the groups come later, from
/// [`with_groups`] in the connection's own task.
pub fn peer_of(stream: &tokio::net::UnixStream) -> Peer {
    match stream.peer_cred() {
        Ok(cred) => {
            Peer { pid: cred.pid(), uid: Some(cred.uid()), gid: Some(cred.gid()), groups: socket_groups(stream) }
        }
        Err(_) => Peer::default(),
    }
}

/// Completes `peer` with its supplementary groups where the socket does not carry them
/// (macOS: the group database, which may be slow — never in the accept loop).
pub async fn with_groups(mut peer: Peer) -> Peer {
    #[cfg(not(target_os = "linux"))]
    if let (Some(uid), Some(gid)) = (peer.uid, peer.gid) {
        peer.groups = tokio::task::spawn_blocking(move || database_groups(uid, gid)).await.unwrap_or_default();
    }
    #[cfg(target_os = "linux")]
    let _ = &mut peer;
    peer
}

/// The peer's supplementary groups as the kernel recorded them at connect time.
#[cfg(target_os = "linux")]
fn socket_groups(stream: &tokio::net::UnixStream) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    // NGROUPS_MAX is 65536 on Linux; ask with a small buffer first, then the size it says.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes long and lives across the call.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return groups;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            break;
        }
        groups = vec![0; count];
    }
    Vec::new()
}

/// The peer's groups from the group database (getpeereid gave the uid).
#[cfg(not(target_os = "linux"))]
fn socket_groups(_stream: &tokio::net::UnixStream) -> Vec<u32> {
    Vec::new()
}

/// The groups of `uid` in the group database.
#[cfg(not(target_os = "linux"))]
fn database_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else { return Vec::new() };
    let Ok(name) = std::ffi::CString::new(user.name) else { return Vec::new() };
    let mut groups: Vec<libc::c_int> = vec![0; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `count` entries; getgrouplist writes at most that many.
    let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid as libc::c_int, groups.as_mut_ptr(), &mut count) };
    if rc < 0 {
        return Vec::new();
    }
    groups.truncate(count.max(0) as usize);
    groups.into_iter().map(|g| g as u32).collect()
}
