//! The framing: a u32 big-endian body length, then that many bytes of bincode (serde,
//! standard configuration: little-endian, variable-length integers).
//!
//! Pure functions over byte buffers; [`crate::codec`] wraps them for tokio. The length is
//! always checked against a maximum before anything is allocated for the body.

use serde::{de::DeserializeOwned, Serialize};

use crate::bounds::DecodeLimits;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Largest frame either side accepts before the handshake has negotiated limits; a Hello or
/// Welcome is far smaller. Keeps an unauthenticated peer from making us reserve much.
pub const HANDSHAKE_MAX_FRAME_LEN: u32 = 64 * 1024;

/// Default maximum frame body after the handshake (16 MiB).
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Hard ceiling for any negotiated maximum (64 MiB); also bincode's decode limit, so no
/// length inside a body can make the decoder reserve more than this.
pub const ABSOLUTE_MAX_FRAME_LEN: u32 = 64 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ ABSOLUTE_MAX_FRAME_LEN as usize }>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<{ ABSOLUTE_MAX_FRAME_LEN as usize }>()
}

/// A framing fault. It ends the connection it happened on; it is never a request error.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("malformed frame body: {0}")]
    Decode(String),
    #[error("frame body has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The frame decodes to more sequence elements than a limit allows (see
    /// [`crate::bounds`]); the frame was consumed whole, so the connection can go on.
    #[error("{0}")]
    OverLimit(String),
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Serialises `message` into `out` as one complete frame (prefix + body).
pub fn encode_frame<T: Serialize>(message: &T, max_len: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX_LEN]);
    if let Err(err) = bincode::serde::encode_into_std_write(message, out, config()) {
        out.truncate(start);
        return Err(FrameError::Encode(err.to_string()));
    }
    let body_len = out.len() - start - PREFIX_LEN;
    if body_len > max_len as usize {
        out.truncate(start);
        return Err(FrameError::TooLarge { len: body_len as u64, max: max_len });
    }
    out[start..start + PREFIX_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(())
}

/// Reads the body length from the start of `buf`, if 4 bytes are there, refusing any
/// length over `max_len` before the caller allocates for it.
pub fn body_len(buf: &[u8], max_len: u32) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len > max_len {
        return Err(FrameError::TooLarge { len: u64::from(len), max: max_len });
    }
    Ok(Some(len as usize))
}

/// Decodes one message from a complete frame body (without the prefix). The body must be
/// exactly one message: trailing bytes mean the peer and we disagree on the schema.
/// Sequences are bounded by the protocol's ceilings ([`crate::bounds`]). Integers must be
/// minimal varints: a body that decodes but re-encodes shorter (a value written with a
/// wider marker than it needs) is refused, so every message has exactly one encoding.
pub fn decode_body<T: DeserializeOwned + Serialize>(body: &[u8]) -> Result<T, FrameError> {
    decode_body_within(body, DecodeLimits::default())
}

/// [`decode_body`] with a session's sequence caps.
pub fn decode_body_within<T: DeserializeOwned + Serialize>(body: &[u8], limits: DecodeLimits) -> Result<T, FrameError> {
    crate::bounds::within(limits, || {
        let (message, used) =
            bincode::serde::decode_from_slice(body, config()).map_err(|err| FrameError::Decode(err.to_string()))?;
        if used != body.len() {
            return Err(FrameError::TrailingBytes(body.len() - used));
        }
        // Counting only, no copy: any non-minimal varint makes the body longer than this.
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(&message, &mut size, config())
            .map_err(|err| FrameError::Decode(err.to_string()))?;
        if size.bytes_written != used {
            return Err(FrameError::Decode("an integer is not minimally encoded (varints must be minimal)".into()));
        }
        Ok(message)
    })
}

/// The request id of a `ClientMessage::Request` body, read from its first fields alone (so
/// a request whose body is refused can still be answered under its id).
pub fn request_id(body: &[u8]) -> Option<u64> {
    let config = bincode::config::standard();
    let ((variant, id), _): ((u32, u64), usize) = bincode::serde::decode_from_slice(body, config).ok()?;
    // `ClientMessage::Request` is variant 1 (Hello is 0), frozen by the pinned-bytes tests.
    (variant == 1).then_some(id)
}

/// Encodes a message body alone (no prefix); used by tests that pin the wire bytes.
pub fn encode_body<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(message, config()).map_err(|err| FrameError::Encode(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_limits() {
        let mut out = Vec::new();
        encode_frame(&("hello".to_string(), 7u32), 1024, &mut out).unwrap();
        let len = body_len(&out, 1024).unwrap().unwrap();
        assert_eq!(len, out.len() - PREFIX_LEN);
        let back: (String, u32) = decode_body(&out[PREFIX_LEN..]).unwrap();
        assert_eq!(back, ("hello".to_string(), 7));

        assert!(body_len(&out[..3], 1024).unwrap().is_none());
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(body_len(&huge, 1024), Err(FrameError::TooLarge { len: 4294967295, .. })));

        let before = out.len();
        assert!(matches!(encode_frame(&vec![0u8; 100], 10, &mut out), Err(FrameError::TooLarge { .. })));
        assert_eq!(out.len(), before, "a refused frame leaves the buffer as it was");
    }

    #[test]
    fn trailing_and_garbage_bytes_are_errors() {
        let mut body = encode_body(&5u32).unwrap();
        body.push(0);
        assert!(matches!(decode_body::<u32>(&body), Err(FrameError::TrailingBytes(1))));
        // A string claiming 2^62 bytes must fail cleanly, not allocate.
        let garbage = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(decode_body::<String>(&garbage).is_err());
    }
}
