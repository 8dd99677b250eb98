//! Every daemon setting, declared once: [`Settings`] is both the command line of `mlxd
//! serve` / `mlxd stdio` (clap) and the `[daemon]` table of the config file, with each
//! setting's name, doc line and default in one place. A file key is the flag's name with
//! `_` for `-` (`keep_alive = "0"` is `--keep-alive 0`); flags given on the command line
//! (or by their environment variable) win over the file, and repeatable ones add to it.
//! The README's settings table is generated from this ([`reference_table`]) and a test
//! keeps the two equal.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};

/// The daemon's settings. Durations: "0", "250ms", "30s", "5m", "2h"; sizes: "75%" (of
/// memory), "12GiB", "800MB".
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Virtualenv with MLX and mlxd_runtime [default: $MLXD_PYTHON, $VIRTUAL_ENV, or the
    /// checkout's .venv]
    #[arg(long, value_name = "DIR")]
    pub python: Option<PathBuf>,
    /// Model store [default: $MLXD_STORE, $XDG_DATA_HOME/mlxd, or ~/.local/share/mlxd]
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// How long an idle model stays loaded: a duration, or "never"
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub keep_alive: String,
    /// Lengthen a model's keep-alive when it is wanted back soon after its keep-alive
    /// unloaded it: doubled each time (up to 8x, at most 1 h), back to its own when not
    #[arg(long)]
    pub adaptive_keep_alive: bool,
    /// Bytes of weights that may be loaded at once
    #[arg(long, value_name = "SIZE", default_value = "75%")]
    pub memory_budget: String,
    /// Models loaded at once
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_loaded_models: usize,
    /// Spare workers kept started (interpreter and model libraries imported, no model),
    /// adopted by the next model load, so a load costs its weights, not the imports: 0 or 1
    /// [default: 1 when the memory budget is at least 2 GB, else 0]
    #[arg(long, value_name = "N")]
    pub spare_workers: Option<usize>,
    /// Requests admitted per model (queued or running) before Busy [default: 4 batches:
    /// 256 for embedding models, 4 x max-streams for generation models]
    #[arg(long, value_name = "N")]
    pub queue_capacity: Option<usize>,
    /// Generation streams each model decodes together in one batch
    #[arg(long, value_name = "N", default_value_t = crate::spec::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// KV cache kept per generation model for recent prompts ("0": off)
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    pub prompt_cache: String,
    /// Tokens of context per generation stream (prompt and output), at most the model's own;
    /// the memory budget counts the KV cache of max-streams streams this long
    #[arg(long, value_name = "TOKENS", default_value_t = crate::spec::DEFAULT_MAX_CONTEXT)]
    pub max_context: u32,
    /// Niceness of worker processes (0-19), so the daemon answers promptly while they compute
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub worker_nice: i32,
    /// Most texts merged into one embedding call; 1 disables batching
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub embed_max_batch: usize,
    /// How long an embedding batch waits for more requests
    #[arg(long, value_name = "DURATION", default_value = "2ms")]
    pub embed_max_delay: String,
    /// A worker with work that reports no progress for this long is killed and restarted
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    pub stuck_after: String,
    /// Crashes or failed loads in a row before a model's circuit opens (it is then refused)
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub circuit_failures: u32,
    /// How long an open circuit refuses requests before one more start is tried
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub circuit_cooldown: String,
    /// Connections served at once; more wait in the kernel's backlog
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// Connections one user may have open at once
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections_per_uid: usize,
    /// Generation streams one connection may have open at once
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_streams_per_session: usize,
    /// How long a stream may stay paused for lack of credit (and a client may take no
    /// frame) before it ends with Timeout
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub stream_pause_limit: String,
    /// How long a client may take to finish a frame it has begun
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub frame_read_timeout: String,
    /// How long in-flight requests may take to finish at shutdown
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub drain_timeout: String,
    /// Group that owns the socket (name or gid): the socket becomes 0660 and the group's
    /// members may connect (never world-accessible)
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// A uid allowed to connect besides the daemon's own
    #[arg(long = "allow-uid", alias = "allowed-uids", value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// A group (name or gid) whose members may connect
    #[arg(long = "allow-group", alias = "allowed-groups", value_name = "GROUP")]
    pub allow_group: Vec<String>,
    /// A group whose members may take operator actions besides the daemon's own user and
    /// root: unloads, loads that reset a failed model, lease keep-alives
    #[arg(long = "admin-group", alias = "admin-groups", value_name = "GROUP")]
    pub admin_group: Vec<String>,
    /// Serve Prometheus metrics over HTTP at ADDR/metrics, e.g. 127.0.0.1:9464 [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Allow --metrics-addr on a non-loopback address (it has no authentication)
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Also serve the HTTP API (OpenAI /v1, Ollama /api, /metrics) on this TCP address,
    /// e.g. 127.0.0.1:11434; requests need the bearer token of `mlxd token` [default: off]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Serve --http without a token (any local process, and any page a browser opens, could
    /// use it: said explicitly or not at all)
    #[arg(long)]
    pub http_no_auth: bool,
    /// Allow --http on a non-loopback address (a token is then required)
    #[arg(long)]
    pub http_allow_remote: bool,
    /// BLAS preloaded into workers on Linux: a library path, or "off" [default: Debian's
    /// OpenBLAS when installed]
    #[arg(long, env = "MLXD_BLAS", value_name = "PATH|off")]
    pub blas: Option<String>,
}

/// `Settings` as its own command: the file's keys and the command line's explicit flags
/// are both parsed by it, the later of one flag winning.
fn command() -> Command {
    Settings::augment_args(Command::new("mlxd-settings").no_binary_name(true).args_override_self(true))
}

impl Settings {
    /// Every default, as if nothing were given.
    pub fn defaults() -> Settings {
        let matches = command().get_matches_from(Vec::<OsString>::new());
        Settings::from_arg_matches(&matches).expect("the defaults parse")
    }

    /// The settings from the `[daemon]` table of the config file at `file` (if any), then
    /// the flags in `cli` that were given explicitly (on the command line or by their
    /// environment variable), which win.
    pub fn resolve(daemon_table: Option<&toml::Table>, file: &Path, cli: &ArgMatches) -> Result<Settings> {
        let command = command();
        let mut argv: Vec<OsString> = Vec::new();
        for (key, value) in daemon_table.into_iter().flatten() {
            let flag = key.replace('_', "-");
            let Some(arg) = command.get_arguments().find(|a| {
                a.get_long() == Some(flag.as_str()) || a.get_all_aliases().is_some_and(|al| al.contains(&flag.as_str()))
            }) else {
                let known: Vec<String> =
                    command.get_arguments().filter_map(|a| a.get_long()).map(|l| l.replace('-', "_")).collect();
                bail!("{}: [daemon] has no setting {key:?} (settings: {})", file.display(), known.join(", "));
            };
            let long = format!("--{}", arg.get_long().unwrap_or(flag.as_str()));
            let takes_value = arg.get_action().takes_values();
            let values = match value {
                toml::Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            for value in values {
                let text = match &value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) if !takes_value => {
                        if *b {
                            argv.push(long.clone().into());
                        }
                        continue;
                    }
                    toml::Value::Boolean(b) => b.to_string(),
                    other => bail!("{}: [daemon] {key} = {other:?} is not a value this setting takes", file.display()),
                };
                if !takes_value {
                    bail!("{}: [daemon] {key} is a switch: write {key} = true or false", file.display());
                }
                argv.push(long.clone().into());
                argv.push(text.into());
            }
        }
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if !matches!(cli.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue;
            }
            let long = format!("--{}", arg.get_long().unwrap_or(id));
            if !arg.get_action().takes_values() {
                argv.push(long.into());
                continue;
            }
            for value in cli.get_raw(id).into_iter().flatten() {
                argv.push(long.clone().into());
                argv.push(value.to_owned());
            }
        }
        let matches = command
            .try_get_matches_from(argv)
            .map_err(|err| anyhow::anyhow!("{}: {}", file.display(), err.render().to_string().trim()))
            .context("reading the settings")?;
        Ok(Settings::from_arg_matches(&matches)?)
    }
}

/// The settings as a Markdown table (flag and file key, default, meaning), for the README.
pub fn reference_table() -> String {
    let mut out = String::from("| flag (file key in `[daemon]`) | default | meaning |\n|---|---|---|\n");
    for arg in command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let (help, default) = match (defaults.is_empty() && !switch, help.rfind(" [default: ")) {
            (false, _) if switch => (help, "off".to_owned()),
            (true, Some(at)) => (help[..at].to_owned(), help[at + 11..help.len() - 1].to_owned()),
            (true, None) => (help, "unset".to_owned()),
            (false, _) => (help, defaults.join(", ")),
        };
        let repeat = if matches!(arg.get_action(), clap::ArgAction::Append) { " (repeatable)" } else { "" };
        out.push_str(&format!(
            "| `--{long}`{repeat} (`{}`) | {} | {} |\n",
            long.replace('-', "_"),
            default.replace('|', "\\|"),
            help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> ArgMatches {
        let command = Settings::augment_args(Command::new("serve").no_binary_name(true));
        command.get_matches_from(args)
    }

    #[test]
    fn the_file_sets_what_the_command_line_leaves_and_the_command_line_wins() {
        let file: toml::Table = toml::from_str(
            "keep_alive = \"0\"\nmax_streams = 3\nallowed_uids = [7]\nmetrics_allow_remote = true\nqueue_capacity = 9\n",
        )
        .unwrap();
        let settings =
            Settings::resolve(Some(&file), Path::new("f.toml"), &cli(&["--max-streams", "5", "--allow-uid", "8"]))
                .unwrap();
        assert_eq!(settings.keep_alive, "0");
        assert_eq!(settings.max_streams, 5, "the command line wins");
        assert_eq!(settings.allow_uid, vec![7, 8], "repeatable settings add up");
        assert!(settings.metrics_allow_remote);
        assert_eq!(settings.queue_capacity, Some(9));
        assert_eq!(settings.memory_budget, "75%", "a default stays a default");
        let defaults = Settings::defaults();
        assert_eq!((defaults.max_streams, defaults.keep_alive.as_str()), (8, "5m"));
    }

    #[test]
    fn unknown_and_mistyped_keys_are_refused_naming_the_file() {
        let typo: toml::Table = toml::from_str("keep_alive_typo = 1").unwrap();
        let err = Settings::resolve(Some(&typo), Path::new("f.toml"), &cli(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("f.toml: [daemon] has no setting \"keep_alive_typo\""), "{err:#}");
        let bad: toml::Table = toml::from_str("worker_nice = 40").unwrap();
        let err = Settings::resolve(Some(&bad), Path::new("f.toml"), &cli(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("f.toml"), "{err:#}");
    }

    #[test]
    fn the_readme_table_is_the_generated_one() {
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
        let (begin, end) = ("<!-- settings:begin -->\n", "<!-- settings:end -->");
        let expected = reference_table();
        let table = readme.find(begin).and_then(|at| {
            let at = at + begin.len();
            readme[at..].find(end).map(|len| &readme[at..at + len])
        });
        if table != Some(expected.as_str()) {
            eprintln!("README's settings table should be, between the markers:\n{begin}{expected}{end}");
            panic!("README's settings table is stale (the expected one is printed above)");
        }
    }
}
