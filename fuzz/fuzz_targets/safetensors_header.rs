//! Fuzzes the safetensors header check the daemon runs on every weight file before a
//! worker sees it: any input must be accepted or refused with an error, never panic, and
//! an accepted header must describe ranges inside the input.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 PYO3_PYTHON=$PWD/../.venv/bin/python cargo fuzz run safetensors_header -- -max_total_time=60`
//! (cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain use them).

#![no_main]

// The parser is one self-contained file (the safetensors crate's header types, serde_json,
// thiserror), compiled in directly so the fuzz build does not need the daemon's Python link.
#[path = "../../daemon/src/weights/safetensors.rs"]
#[allow(dead_code)]
mod safetensors;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(header) = safetensors::parse(data) {
        for tensor in &header.tensors {
            assert!(tensor.begin <= tensor.end);
            assert!(header.data_start + tensor.end <= data.len() as u64);
        }
        for pair in header.tensors.windows(2) {
            assert!(pair[0].end <= pair[1].begin);
        }
    }
});
