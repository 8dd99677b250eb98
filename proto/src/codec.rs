//! tokio-util `Decoder`/`Encoder` over [`crate::frame`], used by every mlxd connection:
//! client ↔ daemon, stdio, and supervisor ↔ worker.

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{self, FrameError, PREFIX_LEN};

/// Frames that decode to `In` and encode from `Out`, each direction with its own maximum.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_in: u32,
    max_out: u32,
    scratch: Vec<u8>,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new(max_in: u32, max_out: u32) -> Self {
        FrameCodec { max_in, max_out, scratch: Vec::new(), _types: PhantomData }
    }

    /// Applies limits negotiated in the handshake.
    pub fn set_limits(&mut self, max_in: u32, max_out: u32) {
        self.max_in = max_in.min(frame::ABSOLUTE_MAX_FRAME_LEN);
        self.max_out = max_out.min(frame::ABSOLUTE_MAX_FRAME_LEN);
    }

    pub fn max_in(&self) -> u32 {
        self.max_in
    }
}

impl<In: DeserializeOwned + Serialize, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match next_body(src, self.max_in)? {
            Some(body) => frame::decode_body(&body).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let item = self.decode(src)?;
        at_eof(item, src)
    }
}

/// The next whole frame's body, taken off `src`; `None` until all of it has arrived. The
/// length is checked against `max_in` before anything is reserved for it.
fn next_body(src: &mut BytesMut, max_in: u32) -> Result<Option<BytesMut>, FrameError> {
    let Some(len) = frame::body_len(src, max_in)? else {
        return Ok(None);
    };
    if src.len() < PREFIX_LEN + len {
        // Safe to reserve: `len` was checked against the maximum above.
        src.reserve(PREFIX_LEN + len - src.len());
        return Ok(None);
    }
    src.advance(PREFIX_LEN);
    Ok(Some(src.split_to(len)))
}

/// At end of stream, bytes left over are a frame cut short.
fn at_eof<T>(item: Option<T>, src: &BytesMut) -> Result<Option<T>, FrameError> {
    match item {
        Some(item) => Ok(Some(item)),
        None if src.is_empty() => Ok(None),
        None => Err(FrameError::Truncated(src.len())),
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.scratch.clear();
        frame::encode_frame(&item, self.max_out, &mut self.scratch)?;
        dst.extend_from_slice(&self.scratch);
        Ok(())
    }
}

/// A client's frame as the daemon reads it: a message, or a request refused for what it
/// would cost decoded (its frame was consumed whole, so the session goes on and the
/// refusal is answered under the request's id when it could be read).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // as ClientMessage: decoded once, moved once
pub enum Incoming {
    Message(crate::ClientMessage),
    OverLimit { id: Option<crate::RequestId>, reason: String },
}

/// The daemon's decoder of client frames: the frame limit, then the session's sequence caps
/// ([`crate::bounds`]).
#[derive(Debug)]
pub struct ClientFrames {
    max_in: u32,
    limits: crate::bounds::DecodeLimits,
}

impl ClientFrames {
    pub fn new(max_in: u32) -> Self {
        ClientFrames { max_in, limits: crate::bounds::DecodeLimits::default() }
    }

    /// Applies the limits of the session (after the handshake).
    pub fn set_limits(&mut self, max_in: u32, limits: crate::bounds::DecodeLimits) {
        self.max_in = max_in.min(frame::ABSOLUTE_MAX_FRAME_LEN);
        self.limits = limits;
    }
}

impl Decoder for ClientFrames {
    type Item = Incoming;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        let Some(body) = next_body(src, self.max_in)? else {
            return Ok(None);
        };
        match frame::decode_body_within(&body, self.limits) {
            Ok(message) => Ok(Some(Incoming::Message(message))),
            Err(FrameError::OverLimit(reason)) => {
                Ok(Some(Incoming::OverLimit { id: frame::request_id(&body), reason }))
            }
            Err(err) => Err(err),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        let item = self.decode(src)?;
        at_eof(item, src)
    }
}
