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
use mlxd_proto::{frame, Limits};
use serde::Deserialize;

use crate::pyenv::PythonEnv;
use crate::spec::{KeepAlive, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_STREAMS, DEFAULT_PROMPT_CACHE_BYTES};
use crate::units::{parse_duration, parse_size, physical_memory};

/// Where the optimized BLAS preloaded into workers on Linux is usually found (Debian's
/// libopenblas0-pthread). MLX's CPU wheel ships a reference BLAS that is ~40x slower.
pub const DEFAULT_BLAS_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
];

/// Workers run this much nicer than the daemon unless configured.
pub const DEFAULT_WORKER_NICE: i32 = 5;
/// How embedding requests are merged into worker calls.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most texts in one worker call; 1 disables merging (one request per call).
    pub max_batch: usize,
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy { max_batch: 64, max_delay: Duration::from_millis(2) }
    }
}

/// Daemon-wide defaults for every model.
#[derive(Debug, Clone, Copy)]
pub struct ModelDefaults {
    pub keep_alive: KeepAlive,
    /// Generation streams decoded together.
    pub max_streams: usize,
    /// Requests admitted per model [default: a few batches' worth].
    pub queue_capacity: Option<usize>,
    pub prompt_cache_bytes: u64,
}

/// Connections one user may hold when not configured.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 64;
/// How long a stream may stay paused for lack of credit when not configured.
pub const DEFAULT_STREAM_PAUSE_LIMIT: Duration = Duration::from_secs(30);
/// How long a begun frame may take to arrive when not configured.
pub const DEFAULT_FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub python: PythonEnv,
    /// The model store (imported models).
    pub store: PathBuf,
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
    pub embed_batch: BatchPolicy,
    /// What models are served with unless their own settings say otherwise (the catalog
    /// applies them, see [`crate::catalog`]).
    pub model_defaults: ModelDefaults,
    /// `[models.NAME]` sections of the config file.
    pub model_settings: BTreeMap<String, ModelSettings>,
    /// `--model NAME=PATH` arguments.
    pub extra_models: Vec<String>,
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
    models: BTreeMap<String, ModelSettings>,
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

/// A model's `[models.NAME]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub path: Option<PathBuf>,
    pub keep_alive: Option<String>,
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub max_streams: Option<usize>,
    pub queue_capacity: Option<usize>,
    pub prompt_cache: Option<String>,
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

    /// Every default, no virtualenv and no files: for unit tests and in-process harnesses
    /// (the fuzz targets) that bring their own models and workers.
    pub fn for_tests() -> DaemonConfig {
        DaemonConfig {
            python: PythonEnv {
                root: "/nonexistent".into(),
                site_packages: "/nonexistent".into(),
                version: "3".into(),
            },
            store: std::env::temp_dir().join("mlxd-unit-test-store"),
            limits: Self::default_limits(),
            max_connections: 256,
            max_streams_per_session: 16,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            stream_pause_limit: DEFAULT_STREAM_PAUSE_LIMIT,
            frame_read_timeout: DEFAULT_FRAME_READ_TIMEOUT,
            drain_timeout: Duration::from_secs(10),
            blas_preload: None,
            worker_nice: 0,
            memory_budget: 1 << 30,
            max_loaded_models: 8,
            embed_batch: BatchPolicy::default(),
            model_defaults: ModelDefaults {
                keep_alive: DEFAULT_KEEP_ALIVE,
                max_streams: DEFAULT_MAX_STREAMS,
                queue_capacity: None,
                prompt_cache_bytes: 0,
            },
            model_settings: BTreeMap::new(),
            extra_models: Vec::new(),
            restart: RestartPolicy::default(),
            // SAFETY: getuid(2) has no preconditions.
            access: AccessPolicy { owner_uid: unsafe { libc::getuid() }, ..AccessPolicy::default() },
            metrics_addr: None,
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

        let embed_batch = {
            let default = BatchPolicy::default();
            BatchPolicy {
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
        let memory_budget = match overrides.memory_budget.as_deref().or(file.daemon.memory_budget.as_deref()) {
            Some(text) => parse_size(text).context("memory_budget")?,
            None => physical_memory() / 4 * 3,
        };
        Ok(DaemonConfig {
            python,
            store,
            model_defaults: ModelDefaults {
                keep_alive: default_keep_alive,
                max_streams,
                queue_capacity,
                prompt_cache_bytes: prompt_cache,
            },
            model_settings: file.models,
            extra_models: overrides.extra_models.clone(),
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
