//! Fuzzes the wire protocol's framing and message decoding, which every byte from a
//! client goes through: any input must decode or be refused with an error, never panic or
//! allocate past the frame limit, and whatever decodes must re-encode to something that
//! decodes to the same bytes again.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 PYO3_PYTHON=$PWD/../.venv/bin/python cargo fuzz run frames -- -max_total_time=60`

#![no_main]

use mlxd_proto::frame::{body_len, decode_body, encode_body, PREFIX_LEN};
use mlxd_proto::{ClientMessage, ServerMessage};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(message: &T) {
    let encoded = encode_body(message).expect("a decoded message encodes");
    let back: T = decode_body(&encoded).expect("an encoded message decodes");
    assert_eq!(encode_body(&back).expect("encodes again"), encoded, "round trip changed the message");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(len)) = body_len(rest, 1 << 20) {
        let Some(body) = rest.get(PREFIX_LEN..PREFIX_LEN + len) else { break };
        if let Ok(message) = decode_body::<ClientMessage>(body) {
            round_trip(&message);
        }
        if let Ok(message) = decode_body::<ServerMessage>(body) {
            round_trip(&message);
        }
        rest = &rest[PREFIX_LEN + len..];
    }
});
