//! The daemon's Prometheus metrics (OpenMetrics text), served as the `Metrics` request
//! (`mlxctl metrics`), as `GET /metrics` by every HTTP listener (the daemon's socket,
//! `--http`, and `--metrics-addr`, which serves only that), and in `mlxctl status --json`.
//!
//! Two kinds of metric:
//! - **Events**, counted where they happen: requests and their outcome, queue waits,
//!   batch sizes, time to first token, decode speed, loads, unloads, evictions, worker
//!   failures and restarts. These live in [`Metrics`], one per daemon.
//! - **State**, read at scrape time from the same snapshot `Status` answers with (loaded
//!   models, resident bytes, leases, queue depth, circuit state, sessions) and the
//!   schedulers' own counters (Busy refusals, shed work, deadline timeouts), so a scrape
//!   can never disagree with `mlxctl status` and nothing is counted twice.
//!
//! Label values are model names from the daemon's catalog (a request naming an unknown
//! model is counted under `model="-"`), request kinds and outcome codes: a fixed, small
//! set, whatever clients send.

use std::time::Duration;

use mlxd_proto::{ErrorCode, ModelInfo, ModelKind, ModelState};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The model label of a request that names no model, or one the daemon does not know.
pub const NO_MODEL: &str = "-";

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Event metrics of one daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    request_duration: HistogramFamily,
    queue_wait: HistogramFamily,
    batch_size: HistogramFamily,
    time_to_first_token: HistogramFamily,
    tokens_per_second: HistogramFamily,
    generated_tokens: Family<Labels, Counter>,
    loads: Family<Labels, Counter>,
    load_duration: HistogramFamily,
    unloads: Family<Labels, Counter>,
    evictions: Family<Labels, Counter>,
    worker_failures: Family<Labels, Counter>,
    worker_restarts: Family<Labels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~105 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
}

fn speed_histogram() -> Histogram {
    // 1 .. 4096 tokens/s
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

fn load_histogram() -> Histogram {
    // 50 ms .. ~205 s
    Histogram::new(exponential_buckets(0.05, 2.0, 13))
}

fn model(model: &str) -> Labels {
    vec![("model", model.to_owned())]
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mlxd");
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            queue_wait: Family::new_with_constructor(latency_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            time_to_first_token: Family::new_with_constructor(latency_histogram),
            tokens_per_second: Family::new_with_constructor(speed_histogram),
            generated_tokens: Family::default(),
            loads: Family::default(),
            load_duration: Family::new_with_constructor(load_histogram),
            unloads: Family::default(),
            evictions: Family::default(),
            worker_failures: Family::default(),
            worker_restarts: Family::default(),
            registry: Registry::default(),
        };
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]);
        registry.register("build", "The daemon's version", info);
        registry.register(
            "requests",
            "Requests answered, by model, kind and outcome (ok, or the error code)",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its final answer",
            metrics.request_duration.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time a request waited in its model's queue before its work started",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "batch_size",
            "Requests served by one embedding worker call (kind=embed); streams decoding together when a \
             generation stream starts (kind=generate)",
            metrics.batch_size.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from a generation request's arrival to its first token",
            metrics.time_to_first_token.clone(),
        );
        registry.register(
            "generation_tokens_per_second",
            "Decode speed of each finished generation stream, as its worker measured it",
            metrics.tokens_per_second.clone(),
        );
        registry.register("generated_tokens", "Tokens generated", metrics.generated_tokens.clone());
        registry.register("loads", "Model loads, by outcome (ok, failed)", metrics.loads.clone());
        registry.register(
            "load_duration_seconds",
            "Time from the start of a load to its worker being ready",
            metrics.load_duration.clone(),
        );
        registry.register(
            "unloads",
            "Model unloads, by reason (keep_alive, evicted, requested)",
            metrics.unloads.clone(),
        );
        registry.register(
            "evictions",
            "Models evicted to make room for another under the memory budget",
            metrics.evictions.clone(),
        );
        registry.register(
            "worker_failures",
            "Workers that died unasked (a crash, a signal, the watchdog)",
            metrics.worker_failures.clone(),
        );
        registry.register(
            "worker_restarts",
            "Worker starts that followed a failure (after its backoff)",
            metrics.worker_restarts.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// Creates every per-model event series of each catalog model at zero, so that a
    /// scrape right after start shows them (a rate over a series that appears only with
    /// its first event misses that event). Multi-label families get their model's main
    /// kind of work (`embed` or `generate`), a successful outcome, and every load outcome
    /// and unload reason; generation-only families only for generation models.
    pub fn register_models(&self, models: &[(&str, ModelKind)]) {
        // Creating a series is the point: each lookup's guard is dropped at once.
        for &(name, kind) in models {
            let work = match kind {
                ModelKind::Embedding => "embed",
                ModelKind::Generation => "generate",
                ModelKind::Rerank => "rerank",
            };
            let with = |key: &'static str, value: &str| vec![("model", name.to_owned()), (key, value.to_owned())];
            let mut ok = with("kind", work);
            let _ = self.request_duration.get_or_create(&ok);
            let _ = self.batch_size.get_or_create(&ok);
            ok.push(("outcome", "ok".to_owned()));
            let _ = self.requests.get_or_create(&ok);
            for outcome in ["ok", "failed"] {
                let _ = self.loads.get_or_create(&with("outcome", outcome));
            }
            for reason in ["keep_alive", "evicted", "requested"] {
                let _ = self.unloads.get_or_create(&with("reason", reason));
            }
            let labels = model(name);
            let _ = self.queue_wait.get_or_create(&labels);
            let _ = self.load_duration.get_or_create(&labels);
            let _ = self.evictions.get_or_create(&labels);
            let _ = self.worker_failures.get_or_create(&labels);
            let _ = self.worker_restarts.get_or_create(&labels);
            if kind == ModelKind::Generation {
                let _ = self.time_to_first_token.get_or_create(&labels);
                let _ = self.tokens_per_second.get_or_create(&labels);
                let _ = self.generated_tokens.get_or_create(&labels);
            }
        }
    }

    /// A request's final answer. `outcome` is `Ok(())` or the error's code.
    pub fn request_done(&self, model: &str, kind: &'static str, outcome: Result<(), ErrorCode>, elapsed: Duration) {
        let labels = vec![("model", model.to_owned()), ("kind", kind.to_owned())];
        self.request_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        let mut labels = labels;
        labels.push(("outcome", outcome.err().map_or("ok", ErrorCode::as_str).to_owned()));
        self.requests.get_or_create(&labels).inc();
    }

    pub fn queue_wait(&self, model_name: &str, waited: Duration) {
        self.queue_wait.get_or_create(&model(model_name)).observe(waited.as_secs_f64());
    }

    pub fn batch_size(&self, model_name: &str, kind: &'static str, size: usize) {
        let labels = vec![("model", model_name.to_owned()), ("kind", kind.to_owned())];
        self.batch_size.get_or_create(&labels).observe(size as f64);
    }

    pub fn first_token(&self, model_name: &str, after: Duration) {
        self.time_to_first_token.get_or_create(&model(model_name)).observe(after.as_secs_f64());
    }

    /// A finished generation stream: its tokens and decode speed.
    pub fn generation_done(&self, model_name: &str, tokens: u32, tokens_per_second: f32) {
        self.generated_tokens.get_or_create(&model(model_name)).inc_by(u64::from(tokens));
        if tokens > 1 && tokens_per_second.is_finite() && tokens_per_second > 0.0 {
            self.tokens_per_second.get_or_create(&model(model_name)).observe(f64::from(tokens_per_second));
        }
    }

    pub fn load_done(&self, model_name: &str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "failed" };
        self.loads.get_or_create(&vec![("model", model_name.to_owned()), ("outcome", outcome.to_owned())]).inc();
        if ok {
            self.load_duration.get_or_create(&model(model_name)).observe(elapsed.as_secs_f64());
        }
    }

    pub fn unloaded(&self, model_name: &str, reason: &'static str) {
        self.unloads.get_or_create(&vec![("model", model_name.to_owned()), ("reason", reason.to_owned())]).inc();
        if reason == "evicted" {
            self.evictions.get_or_create(&model(model_name)).inc();
        }
    }

    pub fn worker_failed(&self, model_name: &str) {
        self.worker_failures.get_or_create(&model(model_name)).inc();
    }

    pub fn worker_restarted(&self, model_name: &str) {
        self.worker_restarts.get_or_create(&model(model_name)).inc();
    }

    /// The whole exposition: event metrics, then the state in `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let state = state_registry(snapshot);
        // Writing to a String cannot fail; the label sets are ours and always encodable.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &state);
        let _ = encode_eof(&mut out);
        out
    }
}

/// What a scrape reads besides the event counters.
#[derive(Debug)]
pub struct Snapshot {
    pub uptime: Duration,
    pub sessions: u32,
    pub models: Vec<ModelSnapshot>,
}

#[derive(Debug)]
pub struct ModelSnapshot {
    pub info: ModelInfo,
    /// The circuit is open: requests fail at once until it closes.
    pub circuit_open: bool,
    /// Failures in a row (0 after a worker has served).
    pub failures_in_a_row: u32,
}

fn state_registry(snapshot: &Snapshot) -> Registry {
    let mut registry = Registry::with_prefix("mlxd");
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let gauge: Gauge = Gauge::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    };
    gauge(&mut registry, "uptime_seconds", "Seconds since the daemon started", snapshot.uptime.as_secs() as i64);
    gauge(&mut registry, "sessions", "Client sessions open", i64::from(snapshot.sessions));
    let loaded = snapshot.models.iter().filter(|m| m.info.state == ModelState::Ready).count();
    gauge(&mut registry, "models_loaded", "Models with a ready worker", loaded as i64);

    let per_model = |registry: &mut Registry, name: &str, help: &str, value: &dyn Fn(&ModelSnapshot) -> i64| {
        let family: Family<Labels, Gauge> = Family::default();
        for m in &snapshot.models {
            family.get_or_create(&model(&m.info.name)).set(value(m));
        }
        registry.register(name, help, family);
    };
    per_model(&mut registry, "model_loaded", "1 while the model has a ready worker", &|m| {
        i64::from(m.info.state == ModelState::Ready)
    });
    per_model(&mut registry, "model_failed", "1 while the model is Failed (load failed or crash loop)", &|m| {
        i64::from(m.info.state == ModelState::Failed)
    });
    per_model(
        &mut registry,
        "resident_bytes",
        "Resident memory of the model's worker process (0 when not loaded)",
        &|m| m.info.resident_bytes as i64,
    );
    per_model(&mut registry, "leases", "Leases held on the model", &|m| i64::from(m.info.leases));
    per_model(&mut registry, "in_flight", "Requests using the model now", &|m| i64::from(m.info.in_flight));
    per_model(&mut registry, "queue_depth", "Requests admitted to the model's queue and not finished", &|m| {
        i64::from(m.info.queue_depth)
    });
    per_model(&mut registry, "queue_capacity", "Requests the model's queue admits before Busy", &|m| {
        i64::from(m.info.queue_capacity)
    });
    per_model(&mut registry, "circuit_open", "1 while the model's circuit breaker is open", &|m| {
        i64::from(m.circuit_open)
    });
    per_model(&mut registry, "failures_in_a_row", "Failed loads and crashes since a worker last served", &|m| {
        i64::from(m.failures_in_a_row)
    });
    per_model(&mut registry, "generation_streams", "Generation streams holding a slot", &|m| {
        i64::from(m.info.sched.running)
    });

    // The schedulers' own counters (monotonic since the daemon started).
    let busy: Family<Labels, Counter> = Family::default();
    let timeouts: Family<Labels, Counter> = Family::default();
    let admitted: Family<Labels, Counter> = Family::default();
    for m in &snapshot.models {
        let name = &m.info.name;
        let reason = |r: &str| vec![("model", name.clone()), ("reason", r.to_owned())];
        busy.get_or_create(&reason("queue_full")).inc_by(m.info.sched.busy);
        busy.get_or_create(&reason("shed")).inc_by(m.info.sched.shed);
        timeouts.get_or_create(&model(name)).inc_by(m.info.sched.timeouts);
        admitted.get_or_create(&model(name)).inc_by(m.info.sched.admitted);
    }
    registry.register(
        "busy_refusals",
        "Requests answered Busy by the model's queue: full (queue_full), or batch work dropped for interactive \
         work (shed)",
        busy,
    );
    registry.register("deadline_timeouts", "Requests dropped because their deadline passed while queued", timeouts);
    registry.register("admitted", "Requests admitted to the model's queue", admitted);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_models_have_their_series_at_zero_from_the_start() {
        let metrics = Metrics::new();
        metrics.register_models(&[("x", ModelKind::Embedding), ("g", ModelKind::Generation)]);
        let text = metrics.render(&Snapshot { uptime: Duration::ZERO, sessions: 0, models: Vec::new() });
        for series in [
            r#"mlxd_requests_total{model="x",kind="embed",outcome="ok"} 0"#,
            r#"mlxd_request_duration_seconds_count{model="x",kind="embed"} 0"#,
            r#"mlxd_batch_size_count{model="x",kind="embed"} 0"#,
            r#"mlxd_queue_wait_seconds_count{model="x"} 0"#,
            r#"mlxd_loads_total{model="x",outcome="failed"} 0"#,
            r#"mlxd_load_duration_seconds_count{model="x"} 0"#,
            r#"mlxd_unloads_total{model="x",reason="keep_alive"} 0"#,
            r#"mlxd_evictions_total{model="x"} 0"#,
            r#"mlxd_worker_failures_total{model="x"} 0"#,
            r#"mlxd_worker_restarts_total{model="x"} 0"#,
            r#"mlxd_requests_total{model="g",kind="generate",outcome="ok"} 0"#,
            r#"mlxd_time_to_first_token_seconds_count{model="g"} 0"#,
            r#"mlxd_generation_tokens_per_second_count{model="g"} 0"#,
            r#"mlxd_generated_tokens_total{model="g"} 0"#,
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }
        assert!(!text.contains(r#"mlxd_generated_tokens_total{model="x"}"#), "an embedding model generates nothing");
    }

    #[test]
    fn renders_every_family_once_with_labels() {
        let metrics = Metrics::new();
        metrics.request_done("minilm", "embed", Ok(()), Duration::from_millis(3));
        metrics.request_done("minilm", "embed", Err(ErrorCode::Busy), Duration::from_micros(80));
        metrics.request_done(NO_MODEL, "embed", Err(ErrorCode::NotFound), Duration::from_micros(50));
        metrics.queue_wait("minilm", Duration::from_millis(1));
        metrics.batch_size("minilm", "embed", 12);
        metrics.unloaded("minilm", "evicted");
        let text = metrics.render(&Snapshot { uptime: Duration::from_secs(5), sessions: 2, models: Vec::new() });
        assert!(text.contains(r#"mlxd_requests_total{model="minilm",kind="embed",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"outcome="busy"} 1"#), "{text}");
        assert!(text.contains(r#"mlxd_requests_total{model="-",kind="embed",outcome="not_found"} 1"#), "{text}");
        assert!(text.contains(r#"mlxd_batch_size_count{model="minilm",kind="embed"} 1"#), "{text}");
        assert!(text.contains(r#"mlxd_evictions_total{model="minilm"} 1"#), "{text}");
        assert!(text.contains("mlxd_sessions 2"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            assert_eq!(text.matches(&format!("{line}\n")).count(), 1, "family declared twice: {line}");
        }
    }
}
