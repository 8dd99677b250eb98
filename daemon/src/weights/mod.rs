//! Weights: header checks and the mmap pool.
//!
//! - [`safetensors`]: parse and check headers from a mapping; rewrite with 16 KiB alignment.
//! - [`pool`]: every weight file mapped read-only once, however many models use it, checked
//!   before any worker sees it, and its pages warmed before a load.

pub mod pool;
pub mod safetensors;
