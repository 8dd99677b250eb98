//! The model catalog, each model's state machine ([`model`]), and the memory budget.
//!
//! Concurrent requests for a model that is not loaded share one load. Leases and in-flight
//! requests are counted by guards whose `Drop` gives the count back, so a session that ends
//! however it ends releases everything it held. Before a load, [`Registry::make_room`]
//! keeps the loaded models within the memory budget and the model count, evicting idle,
//! unleased, unpinned models least recently used first; when nothing can be evicted the
//! load fails at once with `OutOfMemory` naming what holds the memory.

pub mod host;
#[cfg(test)]
pub(crate) mod in_process;
pub mod model;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use mlxd_proto::{ErrorCode, MappedWeights, ModelInfo, WireError};

use futures_util::future::BoxFuture;

use crate::catalog::Catalog;
use crate::config::{DaemonConfig, RestartPolicy};
use crate::metrics::Metrics;
use crate::supervise::spare::SparePool;
use crate::weights::pool::WeightPool;
use host::{Effects, Host, Processes};
pub use model::{run_replayable, InFlightGuard, LeaseGuard, Model, UnloadReason, MAX_REPLAYS};

#[derive(Debug)]
struct Inner {
    config: Arc<DaemonConfig>,
    models: BTreeMap<String, Arc<Model>>,
    /// Aliases → model names.
    aliases: BTreeMap<String, String>,
    /// Serialises "is there room, and whom to evict" decisions between loads.
    make_room: tokio::sync::Mutex<()>,
    pool: Arc<WeightPool>,
    metrics: Arc<Metrics>,
    tasks: crate::tasks::Tasks,
    effects: Arc<dyn Effects>,
}

/// All servable models by name. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// The registry of `catalog`'s models, started as `mlxd worker` processes.
    pub fn new(config: Arc<DaemonConfig>, catalog: Catalog) -> Registry {
        let pool = Arc::new(WeightPool::default());
        let spares = SparePool::new(&config);
        let effects = Arc::new(Processes { config: config.clone(), pool: pool.clone(), spares: spares.clone() });
        let registry = Registry::with_effects(config.clone(), catalog, pool, effects);
        spares.start(config, &registry.inner.tasks);
        registry
    }

    /// The registry with the given effects (unit tests start in-process workers).
    pub fn with_effects(
        config: Arc<DaemonConfig>,
        catalog: Catalog,
        pool: Arc<WeightPool>,
        effects: Arc<dyn Effects>,
    ) -> Registry {
        let metrics = Arc::new(Metrics::new());
        // Every catalog model's series exist from the start (at zero), so dashboards and
        // rate() see them before the first request.
        let names: Vec<_> = catalog.models.iter().map(|spec| (spec.name.as_str(), spec.kind)).collect();
        metrics.register_models(&names);
        let tasks = crate::tasks::Tasks::new();
        let inner = Arc::new_cyclic(|inner: &std::sync::Weak<Inner>| {
            let host: std::sync::Weak<dyn Host> = inner.clone();
            let models = catalog
                .models
                .iter()
                .map(|spec| {
                    let model = Model::new(spec.clone(), metrics.clone(), tasks.clone(), host.clone());
                    (spec.name.clone(), Arc::new(model))
                })
                .collect();
            Inner {
                config,
                models,
                aliases: catalog.aliases,
                make_room: tokio::sync::Mutex::new(()),
                pool,
                metrics,
                tasks,
                effects,
            }
        });
        Registry { inner }
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.inner.config
    }

    /// The model named `name` (or aliased so).
    pub fn get(&self, name: &str) -> Result<&Arc<Model>, WireError> {
        let name = self.inner.aliases.get(name).map_or(name, String::as_str);
        self.inner.models.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.inner.models.keys().map(String::as_str).collect();
            WireError::new(ErrorCode::NotFound, format!("no model named {name:?} (known: {})", known.join(", ")))
        })
    }

    /// The owner of the registry's background tasks (loads, timers, batchers, links).
    pub fn tasks(&self) -> &crate::tasks::Tasks {
        &self.inner.tasks
    }

    /// The daemon has begun to shut down: no model is loaded or restarted from now on.
    pub fn begin_shutdown(&self) {
        self.inner.tasks.begin_shutdown();
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The model label for metrics: the canonical name of a known model, else "-" (so
    /// names clients make up never become label values).
    pub fn metric_label(&self, name: &str) -> String {
        self.get(name).map_or_else(|_| crate::metrics::NO_MODEL.to_owned(), |m| m.spec.name.clone())
    }

    /// What a metrics scrape reads besides the event counters.
    pub fn metrics_snapshot(&self, uptime: std::time::Duration, sessions: u32) -> crate::metrics::Snapshot {
        let models = self
            .inner
            .models
            .values()
            .map(|m| {
                let (circuit_open, failures_in_a_row) = m.health_view();
                crate::metrics::ModelSnapshot { info: m.info(), circuit_open, failures_in_a_row }
            })
            .collect();
        crate::metrics::Snapshot { uptime, sessions, models }
    }

    pub fn pool(&self) -> &WeightPool {
        &self.inner.pool
    }

    /// The mapped weight files and the loaded models using each.
    pub fn weights(&self) -> Vec<MappedWeights> {
        self.inner
            .pool
            .mapped()
            .iter()
            .map(|mapped| MappedWeights {
                path: mapped.path.display().to_string(),
                bytes: mapped.len(),
                tensors: mapped.header.tensors.len() as u32,
                aligned: mapped.header.is_aligned(),
                models: self
                    .inner
                    .models
                    .values()
                    .filter(|m| m.uses_weights(&mapped.path))
                    .map(|m| m.spec.name.clone())
                    .collect(),
            })
            .collect()
    }

    pub fn infos(&self) -> Vec<ModelInfo> {
        self.inner.models.values().map(|m| m.info()).collect()
    }

    /// Makes room for `target` within the memory budget and the loaded-model limit,
    /// evicting idle models (least recently used first), or fails with `OutOfMemory`.
    pub async fn make_room(&self, target: &Arc<Model>) -> Result<(), WireError> {
        self.inner.make_room(target).await
    }

    /// Stops every worker, all at once, each within `grace`; used at daemon shutdown after
    /// requests have drained, so no worker is left to be killed by the kernel.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.begin_shutdown();
        let workers: Vec<_> = self.inner.models.values().filter_map(|m| m.take_worker()).collect();
        let stops = workers.iter().map(|w| w.stop(grace));
        futures_util::future::join_all(stops).await;
        self.inner.tasks.shutdown(grace).await;
    }
}

impl Inner {
    async fn make_room(&self, target: &Arc<Model>) -> Result<(), WireError> {
        let _decide = self.make_room.lock().await;
        let config = &self.config;
        loop {
            let others: Vec<&Arc<Model>> =
                self.models.values().filter(|m| !Arc::ptr_eq(m, target) && m.occupies_memory()).collect();
            let used: u64 = others.iter().map(|m| m.spec.estimated_bytes()).sum();
            let needed = target.spec.estimated_bytes();
            let fits_memory = used + needed <= config.memory_budget;
            let fits_count = others.len() < config.max_loaded_models;
            if fits_memory && fits_count {
                return Ok(());
            }
            let victim = others
                .iter()
                .filter_map(|m| m.eviction_candidate().map(|(last_used, epoch)| (last_used, epoch, *m)))
                .min_by_key(|(last_used, _, _)| *last_used);
            match victim {
                Some((_, epoch, victim)) => {
                    tracing::info!(evict = %victim.spec.name, for_model = %target.spec.name, "evicting to make room");
                    // If it was used since we looked, this does nothing and we look again.
                    victim.unload_if_idle(Some(epoch), UnloadReason::Evicted).await;
                }
                None => {
                    let holders: Vec<String> = others.iter().map(|m| m.holders()).collect();
                    let limit = if fits_memory {
                        format!("the limit of {} loaded models", config.max_loaded_models)
                    } else {
                        let spec = &target.spec;
                        let kv = spec.kv_cache_bytes();
                        let parts = if kv > 0 {
                            format!(
                                " (weights {} MB, KV cache {} MB for {} streams of {} tokens and the prompt cache: \
                                 lower max_streams, max_context or prompt_cache for it to need less)",
                                spec.size_bytes / 1_000_000,
                                kv / 1_000_000,
                                spec.max_streams,
                                spec.context()
                            )
                        } else {
                            String::new()
                        };
                        format!(
                            "the memory budget: {} MB needed{parts}, {} MB of {} MB in use",
                            needed / 1_000_000,
                            used / 1_000_000,
                            config.memory_budget / 1_000_000
                        )
                    };
                    return Err(WireError::new(
                        ErrorCode::OutOfMemory,
                        format!(
                            "cannot load {}: it would exceed {limit}, and nothing can be evicted; held by: {}",
                            target.spec.name,
                            holders.join("; ")
                        ),
                    ));
                }
            }
        }
    }
}

impl Host for Inner {
    fn make_room<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), WireError>> {
        Box::pin(async move {
            let Some(model) = self.models.get(name) else {
                return Err(WireError::internal(format!("make_room for {name}, which is not in the catalog")));
            };
            Inner::make_room(self, model).await
        })
    }

    fn restart_policy(&self) -> RestartPolicy {
        self.config.restart
    }

    fn effects(&self) -> &dyn Effects {
        self.effects.as_ref()
    }
}
