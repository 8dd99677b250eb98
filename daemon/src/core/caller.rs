//! The caller: what a front end holds for one client and passes to the core — the peer's
//! identity, its leases (valid on this caller only), its requests in flight with their
//! [`Control`]s, and the per-caller limits checked before any work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mlxd_proto::{ErrorCode, LeaseId, Request, RequestId, WireError};
use tokio_util::sync::CancellationToken;

use super::daemon::Daemon;
use super::flow::Control;
use super::kind::answered_at_once;
use super::peer::Peer;
use crate::registry::LeaseGuard;

/// One caller of the core: a client connection (a binary-protocol session, an HTTP
/// connection), with what its requests share — its identity, leases and requests in
/// flight. Owned by the front end, passed to every core call.
#[derive(Debug)]
pub struct Caller {
    pub id: u64,
    pub daemon: Arc<Daemon>,
    /// The peer's uid (`u32::MAX` where the kernel did not say): queues take turns by user
    /// before sessions, and the prompt cache is partitioned by it.
    pub uid: u32,
    /// Whether the peer may take operator actions (see [`Peer::is_operator`]).
    pub operator: bool,
    /// Cancelled when the client is gone (closed, stopped reading, broke the protocol):
    /// nothing more is sent to it.
    pub gone: CancellationToken,
    leases: Mutex<HashMap<LeaseId, LeaseGuard>>,
    in_flight: Mutex<HashMap<RequestId, Arc<Control>>>,
}

impl Caller {
    /// The caller `id` for `peer`; what it may do is decided here, once.
    pub fn new(id: u64, daemon: Arc<Daemon>, peer: &Peer) -> Caller {
        Caller {
            id,
            uid: peer.uid.unwrap_or(u32::MAX),
            operator: peer.is_operator(&daemon.config.access),
            daemon,
            gone: CancellationToken::new(),
            leases: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<LeaseId, LeaseGuard>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller's requests in flight, by id, with what can still be said about each.
    pub fn in_flight(&self) -> MutexGuard<'_, HashMap<RequestId, Arc<Control>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases the caller holds now.
    pub fn lease_count(&self) -> usize {
        self.leases().len()
    }

    /// The client is gone: nothing more is sent to it, and everything it had in flight is
    /// cancelled, whatever it waits for.
    pub fn cancel_all(&self) {
        self.gone.cancel();
        for control in self.in_flight().values() {
            control.cancel.cancel();
        }
    }

    /// Stores a lease and returns its handle, unless the session holds too many.
    pub fn add_lease(&self, guard: LeaseGuard) -> Result<LeaseId, WireError> {
        let mut leases = self.leases();
        let limit = self.daemon.config.limits.max_leases as usize;
        if leases.len() >= limit {
            return Err(WireError::new(ErrorCode::TooLarge, format!("session holds {limit} leases (max_leases)")));
        }
        // Handles are random (a CSPRNG, seeded by the OS) so that one cannot be guessed, nor
        // a number copied from another connection be valid here by accident. 53 bits, so a
        // handle survives a JSON number exactly (JavaScript clients, HTTP front ends); a
        // repeat within the session (odds ~ max_leases / 2^53) draws again.
        let lease = loop {
            let candidate: LeaseId = rand::random::<u64>() & MAX_SAFE_HANDLE;
            if candidate != 0 && !leases.contains_key(&candidate) {
                break candidate;
            }
        };
        leases.insert(lease, guard);
        Ok(lease)
    }

    pub fn release(&self, lease: LeaseId) -> Result<(), WireError> {
        self.leases().remove(&lease).map(drop).ok_or_else(|| invalid_lease(lease))
    }

    /// Who this session is, for the queues' turn-taking.
    pub fn client(&self) -> crate::sched::Client {
        crate::sched::Client { uid: self.uid, session: self.id }
    }

    /// The model a lease of this session is on.
    pub fn leased_model(&self, lease: LeaseId) -> Result<Arc<crate::registry::Model>, WireError> {
        let leases = self.leases();
        let guard = leases.get(&lease).ok_or_else(|| invalid_lease(lease))?;
        if !guard.is_valid() {
            return Err(WireError::new(
                ErrorCode::InvalidLease,
                format!("lease {lease} was revoked: an operator force-unloaded {}", guard.model.spec.name),
            ));
        }
        Ok(guard.model.clone())
    }
}

/// The largest integer a JSON number (an IEEE double) holds exactly: 2^53 - 1.
const MAX_SAFE_HANDLE: u64 = (1 << 53) - 1;

fn invalid_lease(lease: LeaseId) -> WireError {
    WireError::new(
        ErrorCode::InvalidLease,
        format!("lease {lease} is not held by this session (a lease belongs to the connection that took it)"),
    )
}

/// Refusals decided before any work: the caller's in-flight and stream limits.
pub fn admit(session: &Caller, body: &Request) -> Option<WireError> {
    if answered_at_once(body) {
        return None; // never counted
    }
    let in_flight = session.in_flight();
    let limit = session.daemon.config.limits.max_in_flight as usize;
    if in_flight.len() >= limit {
        return Some(
            WireError::new(ErrorCode::Busy, format!("session has {limit} requests in flight (max_in_flight)"))
                .with_retry_after(10),
        );
    }
    let streams = session.daemon.config.max_streams_per_session;
    if matches!(body, Request::Generate(_)) && in_flight.values().filter(|c| c.is_stream).count() >= streams {
        return Some(
            WireError::new(
                ErrorCode::Busy,
                format!("session has {streams} generation streams open (max_streams_per_session)"),
            )
            .with_retry_after(10),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use mlxd_proto::ModelKind;

    use super::*;
    use crate::catalog::Catalog;
    use crate::config::DaemonConfig;
    use crate::spec::ModelSpec;

    #[tokio::test]
    async fn lease_handles_are_random_so_another_session_cannot_guess_them() {
        let spec = ModelSpec::new("m".into(), ModelKind::Embedding, "/nonexistent".into(), "test".into());
        let catalog = Catalog { models: vec![spec], aliases: BTreeMap::new() };
        let daemon = Daemon::new(DaemonConfig::for_tests(), catalog, "test".into());
        let model = daemon.registry.get("m").unwrap().clone();
        // Two sessions with the same id (e.g. the first session of two daemon runs).
        let take = |caller: &Caller| -> Vec<LeaseId> {
            (0..32).map(|_| caller.add_lease(model.lease(None)).unwrap()).collect()
        };
        let first = take(&Caller::new(1, daemon.clone(), &Peer::of_self()));
        let second = take(&Caller::new(1, daemon.clone(), &Peer::of_self()));
        let all: HashSet<LeaseId> = first.iter().chain(&second).copied().collect();
        assert_eq!(all.len(), 64, "every handle differs, across sessions too");
        assert!(first.windows(2).all(|pair| pair[1].abs_diff(pair[0]) > 1), "not a sequence: {first:?}");
        assert!(all.iter().all(|&lease| lease > 0 && lease <= MAX_SAFE_HANDLE), "exact as JSON numbers");
    }
}
