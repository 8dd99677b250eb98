//! The request core: everything a front end needs below its wire format, and nothing of
//! framing or sockets. A front end (the binary protocol's [`crate::server::session`]
//! today, HTTP next) keeps a [`Caller`] per client and calls:
//!
//! 1. [`Caller::admit`] — the caller's own limits (requests in flight, streams);
//! 2. [`dispatch::answer_now`] — requests answered from the daemon's state at once;
//! 3. [`dispatch::admit`] — the request checked and given its place in its model's queue
//!    (or refused with `Busy`), without waiting;
//! 4. [`dispatch::handle`] — the request run, its stream events sent to an
//!    [`EventSink`], its final answer returned; [`Control`] cancels it and grants credit.
//!
//! Modules: [`daemon`] (shared state), [`peer`] (identity and what it may do),
//! [`caller`], [`flow`] (cancel, credit), [`events`], [`kind`] (request families), and
//! [`dispatch`] with one module per family.

pub mod caller;
pub mod daemon;
pub mod dispatch;
pub mod events;
pub mod flow;
pub mod kind;
pub mod peer;
#[cfg(test)]
mod tests;

pub use caller::Caller;
pub use daemon::Daemon;
pub use events::{EventSink, Gone};
pub use flow::{Control, CreditGate};
pub use peer::Peer;
