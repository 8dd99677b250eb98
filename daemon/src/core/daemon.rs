//! State shared by every caller of one daemon: its settings, the registry of models, and
//! counters for status.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::catalog::Catalog;
use crate::config::DaemonConfig;
use crate::registry::Registry;

/// State shared by every caller of one daemon.
#[derive(Debug)]
pub struct Daemon {
    pub config: Arc<DaemonConfig>,
    pub registry: Registry,
    pub started: Instant,
    /// Where clients reach this daemon (socket path, or "stdio").
    pub endpoint: String,
    pub sessions: AtomicU32,
    next_session: AtomicU64,
}

impl Daemon {
    pub fn new(config: DaemonConfig, catalog: Catalog, endpoint: String) -> Arc<Daemon> {
        let config = Arc::new(config);
        let registry = Registry::new(config.clone(), catalog);
        Self::with_registry(config, registry, endpoint)
    }

    /// A daemon over an existing registry (unit tests give it in-process workers).
    pub fn with_registry(config: Arc<DaemonConfig>, registry: Registry, endpoint: String) -> Arc<Daemon> {
        Arc::new(Daemon {
            config,
            registry,
            started: Instant::now(),
            endpoint,
            sessions: AtomicU32::new(0),
            next_session: AtomicU64::new(1),
        })
    }

    /// The Prometheus exposition: event counters and the state of every model now.
    pub fn render_metrics(&self) -> String {
        let registry = &self.registry;
        let snapshot = registry.metrics_snapshot(self.started.elapsed(), self.sessions.load(Ordering::Relaxed));
        registry.metrics().render(&snapshot)
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}
