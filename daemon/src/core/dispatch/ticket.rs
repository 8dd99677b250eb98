//! What a model request holds between admission and its task: its model and its place in
//! the model's queue, and how a request names its model.

use std::sync::Arc;

use mlxd_proto::{ModelRef, WireError};
use tokio::time::Instant;

use crate::core::caller::Caller;
use crate::registry::Model;
use crate::sched::Admitted;

/// A place in a model's queue, taken in the session's read loop before the request's task
/// starts, so that a refusal (a limit, an unknown model, `Busy`) is answered at once.
#[derive(Debug)]
pub struct Ticket {
    pub model: Arc<Model>,
    pub admitted: Admitted,
    pub arrived: Instant,
}

/// The model a request names, by name or by a lease of this session.
pub fn resolve(session: &Caller, model: &ModelRef) -> Result<Arc<Model>, WireError> {
    match model {
        ModelRef::Name(name) => session.daemon.registry.get(name).cloned(),
        ModelRef::Lease(lease) => session.leased_model(*lease),
    }
}
