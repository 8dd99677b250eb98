//! Fuzzes the wire protocol's framing and message decoding, which every byte from a
//! client goes through: any input must decode or be refused with an error, never panic or
//! allocate past the frame limit; a client message that decodes must hold no more memory
//! than `MAX_DECODE_AMPLIFICATION` times its frame's bytes plus `MAX_DECODE_OVERHEAD`
//! (counted by this target's allocator); and whatever decodes must re-encode to something
//! that decodes to the same bytes again.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 PYO3_PYTHON=$PWD/../.venv/bin/python cargo fuzz run frames -- -max_total_time=60`

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use mlxd_proto::bounds::{MAX_DECODE_AMPLIFICATION, MAX_DECODE_OVERHEAD};
use mlxd_proto::frame::{body_len, decode_body, encode_body, PREFIX_LEN};
use mlxd_proto::{ClientMessage, ServerMessage};

/// The system allocator, counting the bytes live at any moment.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(message: &T) {
    let encoded = encode_body(message).expect("a decoded message encodes");
    let back: T = decode_body(&encoded).expect("an encoded message decodes");
    assert_eq!(encode_body(&back).expect("encodes again"), encoded, "round trip changed the message");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(len)) = body_len(rest, 1 << 20) {
        let Some(body) = rest.get(PREFIX_LEN..PREFIX_LEN + len) else { break };
        let before = LIVE.load(Ordering::Relaxed);
        if let Ok(message) = decode_body::<ClientMessage>(body) {
            // What the decoded message holds (the fuzzer runs one input at a time).
            let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
            let bound = MAX_DECODE_AMPLIFICATION * body.len() + MAX_DECODE_OVERHEAD;
            assert!(held <= bound, "a {}-byte frame decoded to {held} bytes (bound {bound})", body.len());
            round_trip(&message);
        }
        if let Ok(message) = decode_body::<ServerMessage>(body) {
            round_trip(&message);
        }
        rest = &rest[PREFIX_LEN + len..];
    }
});
