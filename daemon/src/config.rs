//! Daemon configuration: Python environment, limits, memory budget, keep-alive, and the
//! model catalog (bundled models, the store, `--model NAME=PATH`, and the TOML file).
//!
//! The config file (`--config`, else `$XDG_CONFIG_HOME/mlxd/config.toml` when present)
//! has a `[daemon]` table with any setting of `mlxd serve --help` under its flag's name
//! (`_` for `-`; see [`Settings`] and the README's table), and a `[models.NAME]` table per
//! model:
//!
//! ```toml
//! [daemon]
//! keep_alive = "5m"
//! memory_budget = "75%"
//! allow_uid = [1001]
//! admin_group = ["mlxd-admin"]
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
//! Flags given on the command line override the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mlxd_proto::{frame, Limits};
use serde::Deserialize;

use crate::pyenv::PythonEnv;
pub use crate::settings::Settings;
use crate::spec::{KeepAlive, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_STREAMS};
use crate::units::{parse_duration, parse_size};

/// Where the optimized BLAS preloaded into workers on Linux is usually found (Debian's
/// libopenblas0-pthread). MLX's CPU wheel ships a reference BLAS that is ~40x slower.
pub const DEFAULT_BLAS_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
];

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
    /// Lengthen the keep-alive of a model wanted back soon after it unloaded it.
    pub adaptive_keep_alive: bool,
    /// Generation streams decoded together.
    pub max_streams: usize,
    /// Requests admitted per model [default: a few batches' worth].
    pub queue_capacity: Option<usize>,
    pub prompt_cache_bytes: u64,
    /// Tokens of context per generation stream (at most the model's own).
    pub max_context: u32,
}

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
    /// Spare workers kept started for the next load to adopt (0 or 1).
    pub spare_workers: usize,
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
    /// The HTTP API on TCP (off when `None`).
    pub http: Option<HttpTcp>,
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

/// The HTTP API on a TCP address: who may use it is decided by a bearer token (TCP has no
/// peer credentials), and the Host and Origin of every request (DNS rebinding).
#[derive(Debug, Clone)]
pub struct HttpTcp {
    pub addr: std::net::SocketAddr,
    /// Requests need `Authorization: Bearer <token>` (the token file's content).
    pub auth: bool,
}

impl HttpTcp {
    fn new(text: &str, no_auth: bool, allow_remote: bool) -> Result<HttpTcp> {
        let addr: std::net::SocketAddr = text
            .parse()
            .with_context(|| format!("http {text:?} is not an IP address and port, e.g. 127.0.0.1:11434"))?;
        if !addr.ip().is_loopback() {
            if !allow_remote {
                bail!("http {addr} is not a loopback address; allow it with --http-allow-remote (a token is then required)");
            }
            if no_auth {
                bail!("http {addr} is not a loopback address: --http-no-auth is refused there");
            }
        }
        Ok(HttpTcp { addr, auth: !no_auth })
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

/// A spare worker (about 200 MB resident with MLX and mlx-lm imported) is kept by default
/// only when the memory budget is at least this.
const SPARE_BUDGET_FLOOR: u64 = 2_000_000_000;

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
    pub max_context: Option<u32>,
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

    /// Defaults (as [`Settings`] has them), no virtualenv and no files: for unit tests and
    /// in-process harnesses (the fuzz targets) that bring their own models and workers.
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
            max_connections_per_uid: 64,
            stream_pause_limit: Duration::from_secs(30),
            frame_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            blas_preload: None,
            worker_nice: 0,
            memory_budget: 1 << 30,
            max_loaded_models: 8,
            spare_workers: 0,
            embed_batch: BatchPolicy::default(),
            model_defaults: ModelDefaults {
                keep_alive: DEFAULT_KEEP_ALIVE,
                adaptive_keep_alive: false,
                max_streams: DEFAULT_MAX_STREAMS,
                queue_capacity: None,
                prompt_cache_bytes: 0,
                max_context: crate::spec::DEFAULT_MAX_CONTEXT,
            },
            model_settings: BTreeMap::new(),
            extra_models: Vec::new(),
            restart: RestartPolicy::default(),
            // SAFETY: getuid(2) has no preconditions.
            access: AccessPolicy { owner_uid: unsafe { libc::getuid() }, ..AccessPolicy::default() },
            metrics_addr: None,
            http: None,
        }
    }

    /// Builds the configuration from the config file (`config_file`, else
    /// `$XDG_CONFIG_HOME/mlxd/config.toml` when it exists), the flags given explicitly in
    /// `cli` (which win; see [`Settings`]), and `--model NAME=PATH` arguments.
    pub fn load(config_file: Option<&Path>, cli: &clap::ArgMatches, extra_models: Vec<String>) -> Result<DaemonConfig> {
        let (path, mut file) = read_file(config_file)?;
        let daemon = match file.remove("daemon") {
            Some(toml::Value::Table(table)) => Some(table),
            Some(_) => bail!("{}: [daemon] must be a table", path.display()),
            None => None,
        };
        let models: BTreeMap<String, ModelSettings> = match file.remove("models") {
            Some(models) => models.try_into().with_context(|| format!("{}: [models]", path.display()))?,
            None => BTreeMap::new(),
        };
        if let Some(key) = file.keys().next() {
            bail!("{}: unknown section or key {key:?} (the file has [daemon] and [models.NAME])", path.display());
        }
        let settings = Settings::resolve(daemon.as_ref(), &path, cli)?;
        Self::from_settings(&settings, models, extra_models)
    }

    /// The configuration for resolved `settings` (every value checked and parsed here).
    pub fn from_settings(
        settings: &Settings,
        model_settings: BTreeMap<String, ModelSettings>,
        extra_models: Vec<String>,
    ) -> Result<DaemonConfig> {
        let s = settings;
        let duration = |text: &str, name: &str| parse_duration(text).with_context(|| name.to_owned());
        let groups = |names: &[String], name: &str| -> Result<Vec<u32>> {
            names.iter().map(|g| resolve_group(g).with_context(|| name.to_owned())).collect()
        };
        let memory_budget = parse_size(&s.memory_budget).context("memory_budget")?;
        Ok(DaemonConfig {
            python: PythonEnv::discover(s.python.as_deref())?,
            store: crate::store::store_root(s.store.as_deref()),
            model_defaults: ModelDefaults {
                keep_alive: KeepAlive::parse(&s.keep_alive).context("keep_alive")?,
                adaptive_keep_alive: s.adaptive_keep_alive,
                max_streams: s.max_streams.max(1),
                queue_capacity: s.queue_capacity.map(|n| n.max(1)),
                prompt_cache_bytes: parse_size(&s.prompt_cache).context("prompt_cache")?,
                max_context: s.max_context.max(16),
            },
            model_settings,
            extra_models,
            limits: Self::default_limits(),
            max_connections: s.max_connections.max(1),
            max_streams_per_session: s.max_streams_per_session.max(1),
            max_connections_per_uid: s.max_connections_per_uid.max(1),
            stream_pause_limit: duration(&s.stream_pause_limit, "stream_pause_limit")?.max(Duration::from_millis(100)),
            frame_read_timeout: duration(&s.frame_read_timeout, "frame_read_timeout")?.max(Duration::from_millis(100)),
            drain_timeout: duration(&s.drain_timeout, "drain_timeout")?,
            blas_preload: resolve_blas(s.blas.as_deref()),
            worker_nice: s.worker_nice.clamp(0, 19),
            memory_budget,
            max_loaded_models: s.max_loaded_models.max(1),
            spare_workers: s.spare_workers.unwrap_or(if memory_budget >= SPARE_BUDGET_FLOOR { 1 } else { 0 }).min(1),
            embed_batch: BatchPolicy {
                max_batch: s.embed_max_batch.max(1),
                max_delay: duration(&s.embed_max_delay, "embed_max_delay")?,
            },
            metrics_addr: match &s.metrics_addr {
                Some(text) => Some(parse_metrics_addr(text, s.metrics_allow_remote)?),
                None => None,
            },
            http: match &s.http {
                Some(text) => Some(HttpTcp::new(text, s.http_no_auth, s.http_allow_remote)?),
                None => None,
            },
            access: AccessPolicy {
                owner_uid: nix::unistd::getuid().as_raw(),
                allowed_uids: s.allow_uid.clone(),
                allowed_gids: groups(&s.allow_group, "allow_group")?,
                socket_group: s.socket_group.as_deref().map(resolve_group).transpose().context("socket_group")?,
                admin_gids: groups(&s.admin_group, "admin_group")?,
            },
            restart: RestartPolicy {
                stuck_after: duration(&s.stuck_after, "stuck_after")?.max(Duration::from_secs(1)),
                circuit_failures: s.circuit_failures.max(1),
                circuit_cooldown: duration(&s.circuit_cooldown, "circuit_cooldown")?,
            },
        })
    }
}

/// The config file's path and contents (an empty table when there is none).
fn read_file(explicit: Option<&Path>) -> Result<(PathBuf, toml::Table)> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let dir = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
            match dir.map(|d| d.join("mlxd/config.toml")) {
                Some(path) if path.is_file() => path,
                Some(path) => return Ok((path, toml::Table::new())),
                None => return Ok((PathBuf::from("(no config file)"), toml::Table::new())),
            }
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok((path, table))
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
    fn the_test_configuration_has_the_settings_defaults() {
        let (config, defaults) = (DaemonConfig::for_tests(), Settings::defaults());
        assert_eq!(config.max_connections, defaults.max_connections);
        assert_eq!(config.max_connections_per_uid, defaults.max_connections_per_uid);
        assert_eq!(config.max_streams_per_session, defaults.max_streams_per_session);
        assert_eq!(config.stream_pause_limit, parse_duration(&defaults.stream_pause_limit).unwrap());
        assert_eq!(config.frame_read_timeout, parse_duration(&defaults.frame_read_timeout).unwrap());
        assert_eq!(config.drain_timeout, parse_duration(&defaults.drain_timeout).unwrap());
        assert_eq!(config.model_defaults.keep_alive, KeepAlive::parse(&defaults.keep_alive).unwrap());
        assert_eq!(config.embed_batch.max_batch, defaults.embed_max_batch);
        assert_eq!(config.restart.circuit_failures, defaults.circuit_failures);
    }

    #[test]
    fn model_sections_are_strict() {
        let file: toml::Table = toml::from_str("[models.x]\npinned = true\naliases = [\"y\"]\n").unwrap();
        let models: BTreeMap<String, ModelSettings> = file["models"].clone().try_into().unwrap();
        assert!(models["x"].pinned);
        let typo: toml::Table = toml::from_str("[models.x]\npined = true\n").unwrap();
        assert!(typo["models"].clone().try_into::<BTreeMap<String, ModelSettings>>().is_err());
    }
}
