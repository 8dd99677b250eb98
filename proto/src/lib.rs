//! mlxd wire protocol, version 1: the types every mlxd process exchanges and the one
//! framing implementation they all use.
//!
//! # Layout
//!
//! - [`frame`]: u32 big-endian length prefix + bincode body; the length is checked against
//!   a maximum before any allocation. Pure functions over byte buffers, no I/O.
//! - [`codec`] (feature `codec`): the same framing as a tokio-util `Encoder`/`Decoder`.
//! - [`messages`]: client ↔ daemon messages (Hello/Welcome, requests, responses, events).
//! - [`bounds`]: what a decoded frame may cost (sequence counts), beyond its bytes.
//! - [`error`]: typed wire errors (`ErrorCode`, `WireError`).
//! - [`worker`]: supervisor ↔ worker link messages (same framing, internal to one build).
//! - [`paths`]: where the daemon's socket lives by default (shared by daemon and client).
//!
//! `PROTOCOL.md` beside this crate is the normative spec. Every enum here is encoded by
//! bincode as its variant index, so variants are only ever appended; `tests/pinned.rs`
//! pins the bytes of a few messages so that an accidental reorder fails CI.

pub mod bounds;
pub mod error;
pub mod frame;
pub mod messages;
pub mod paths;
pub mod worker;

#[cfg(feature = "codec")]
pub mod codec;

pub use error::{ErrorCode, WireError};
pub use messages::*;

/// The protocol version this build speaks. Hello and Welcome never change shape, so a peer
/// of any version can always read the version and answer a mismatch with an error.
pub const PROTOCOL_VERSION: u32 = 7;

/// Most stream events the daemon holds for one stream at a time (granted credit not yet
/// delivered). Credit granted beyond it is passed on as events are delivered.
pub const MAX_STREAM_CREDIT: u32 = 4096;
