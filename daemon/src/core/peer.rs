//! Who is on the other end of a connection, as the kernel says (never as the client
//! says), and what that peer may do: connect at all ([`Peer::authorize`]) and take
//! operator actions ([`Peer::is_operator`]).

use mlxd_proto::{ErrorCode, WireError};

/// Who is on the other end, from the kernel (SO_PEERCRED, SO_PEERGROUPS), not from what
/// the client says.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups, read from the socket when it was accepted (Linux:
    /// SO_PEERGROUPS, so there is no race with a pid being reused; macOS: the group
    /// database for the peer's uid).
    pub groups: Vec<u32>,
}

impl Peer {
    /// This process (the stdio mode's only client).
    pub fn of_self() -> Peer {
        Peer {
            pid: Some(std::process::id() as i32),
            uid: Some(nix::unistd::getuid().as_raw()),
            gid: Some(nix::unistd::getgid().as_raw()),
            groups: nix::unistd::getgroups().map(|g| g.into_iter().map(|g| g.as_raw()).collect()).unwrap_or_default(),
        }
    }

    /// Checks the peer against the daemon's access policy.
    pub fn authorize(&self, policy: &crate::config::AccessPolicy) -> Result<(), WireError> {
        let Some(uid) = self.uid else {
            return Err(WireError::new(ErrorCode::Unauthorized, "the peer's credentials cannot be read"));
        };
        policy.check(uid, self.gid, &self.groups).map_err(|why| WireError::new(ErrorCode::Unauthorized, why))
    }

    /// Whether the peer may take operator actions (the daemon's own user, root, or a
    /// member of the admin group).
    pub fn is_operator(&self, policy: &crate::config::AccessPolicy) -> bool {
        self.uid.is_some_and(|uid| policy.is_operator(uid, self.gid, &self.groups))
    }
}
