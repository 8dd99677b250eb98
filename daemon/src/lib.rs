//! mlxd: one daemon per host owns the MLX runtime; local processes lease handles to loaded
//! models over a length-prefixed Unix-socket protocol (`mlxd-proto`) and share one loaded
//! copy of each model.
//!
//! # Layout
//!
//! - [`config`]: daemon settings, limits, and the model catalog (bundled models found in
//!   the virtualenv, plus `--model NAME=PATH`).
//! - [`pyenv`]: finding the virtualenv workers embed, and checking its Python version.
//! - [`server`]: listener (socket permissions, one daemon per path, stale sockets,
//!   connection limit, shutdown), [`server::session`] per connection, and
//!   [`server::dispatch`] with one module per request family.
//! - [`http`]: the HTTP front end (OpenAI `/v1`) on the same socket.
//! - [`registry`]: models, their load-once state, leases and in-flight counts.
//! - [`sched`]: per-model bounded admission with fail-fast `Busy`.
//! - [`weights`]: safetensors header checks and the mmap pool of weight files.
//! - [`supervise`]: spawning `mlxd worker` processes and routing jobs to them.
//! - [`worker`]: the worker process itself: the pyo3 interpreter on one dedicated thread.
//! - [`metrics`]: Prometheus metrics (events counted where they happen, state read at
//!   scrape time).
//! - [`service`]: socket activation (systemd, launchd), sd_notify readiness, and
//!   `mlxd install` / `uninstall`.
//! - [`tasks`]: owners for background tasks (tracked, stopped at shutdown, panics logged,
//!   service tasks restarted).
//! - [`logging`]: tracing set-up shared by every subcommand.
//! - [`store`]: the model store (imported models, atomic writes, provenance).
//! - [`import`]: `mlxd import` — GGUF conversion and model directories into the store.
//!
//! Processes: `mlxd serve` (or `mlxd stdio`) is the supervisor and never runs Python; it
//! starts one `mlxd worker` per loaded model on a socketpair speaking the same framing.

pub mod catalog;
pub mod config;
pub mod core;
pub mod hfcache;
pub mod http;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod pyenv;
pub mod registry;
pub mod sched;
pub mod server;
pub mod service;
pub mod settings;
pub mod spec;
pub mod store;
pub mod supervise;
pub mod tasks;
pub mod units;
pub mod weights;
pub mod worker;
