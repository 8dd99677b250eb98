//! The `mlxd` binary: wires command-line arguments and signals to the library.
//!
//! - `mlxd serve`: the daemon on a Unix socket.
//! - `mlxd stdio`: the same protocol on stdin/stdout for one tenant; exits when stdin closes.
//! - `mlxd import`: bring a GGUF file or a model directory into the store.
//! - `mlxd install` / `mlxd uninstall`: systemd units or launchd plists for this binary.
//! - `mlxd completions SHELL`: shell completions.
//! - `mlxd worker`: a model worker, started by the daemon (not by hand).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mlxd::catalog::Catalog;
use mlxd::config::DaemonConfig;
use mlxd::logging::LogFormat;
use mlxd::server::{self, listener::BoundSocket, session, Daemon, WORKER_STOP_GRACE};
use mlxd::worker::{self, WorkerArgs};
use mlxd_proto::ModelKind;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "mlxd", version, about = "Model supervisor daemon: shared MLX models for local processes")]
struct Cli {
    /// Log format: human (terminal), json (one object per line), or auto: human on a
    /// terminal or under journald, json otherwise. Level: MLXD_LOG (e.g. debug, mlxd=trace).
    #[arg(long, global = true, env = "MLXD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ServeOptions {
    /// Config file (TOML: [daemon] takes every setting below, [models.NAME] per model)
    /// [default: $XDG_CONFIG_HOME/mlxd/config.toml when it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve an extra model under NAME (repeatable): a model directory, or
    /// hf:ORG/NAME[@REVISION] for a snapshot in the Hugging Face cache.
    #[arg(long = "model", value_name = "NAME=PATH")]
    models: Vec<String>,
    #[command(flatten)]
    settings: mlxd::settings::Settings,
}

#[derive(Debug, clap::Args)]
struct InstallOptions {
    /// For this user: systemd user units / a LaunchAgent [default unless run as root]
    #[arg(long, conflicts_with = "system")]
    user: bool,
    /// For the host: system units / a LaunchDaemon, run as the `mlxd` user, socket group
    /// `mlxd` [default when run as root]
    #[arg(long)]
    system: bool,
    /// Model store the service uses [default: the user's store; /var/lib/mlxd for --system]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Virtualenv with MLX the service uses [default: as `mlxd serve` would find it now]
    #[arg(long, value_name = "DIR")]
    python: Option<PathBuf>,
    /// Write the files here instead of where the service manager reads them; implies
    /// --no-enable.
    #[arg(long, value_name = "DIR")]
    unit_dir: Option<PathBuf>,
    /// Print what would be done without doing it.
    #[arg(long)]
    dry_run: bool,
    /// Write (or remove) the files but do not run systemctl / launchctl.
    #[arg(long)]
    no_enable: bool,
}

impl InstallOptions {
    fn args(&self) -> mlxd::service::install::InstallArgs {
        use mlxd::service::install::Scope;
        let scope =
            if self.system || (!self.user && nix::unistd::geteuid().is_root()) { Scope::System } else { Scope::User };
        mlxd::service::install::InstallArgs {
            scope,
            store: self.store.clone(),
            python: self.python.clone(),
            unit_dir: self.unit_dir.clone(),
            dry_run: self.dry_run,
            no_enable: self.no_enable,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve clients on a Unix socket until SIGTERM or SIGINT.
    Serve {
        /// Socket path [default: $MLXD_SOCKET, $XDG_RUNTIME_DIR/mlxd/mlxd.sock, or /tmp/mlxd-$UID/mlxd.sock]
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(flatten)]
        options: ServeOptions,
    },
    /// Speak the protocol on stdin/stdout for one client (logs go to stderr).
    Stdio {
        #[command(flatten)]
        options: ServeOptions,
    },
    /// Import a GGUF file or a model directory into the store.
    Import {
        /// A .gguf file, a directory with config.json, *.safetensors and tokenizer files, or
        /// hf:ORG/NAME[@REVISION] for a snapshot already in the Hugging Face cache.
        path: PathBuf,
        /// The name to serve it under.
        #[arg(long)]
        name: String,
        /// For GGUF: convert to this dtype (float16, float32, bfloat16) instead of keeping the
        /// quantization; on Linux's CPU backend float matmul with OpenBLAS is much faster.
        #[arg(long, value_name = "DTYPE")]
        dtype: Option<String>,
        /// Model store [default: $MLXD_STORE, $XDG_DATA_HOME/mlxd, or ~/.local/share/mlxd]
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Virtualenv with MLX and mlxd_runtime (for GGUF conversion).
        #[arg(long, value_name = "DIR")]
        python: Option<PathBuf>,
        /// Replace a model of the same name.
        #[arg(long)]
        force: bool,
    },
    /// Check or clean the model store.
    Store {
        #[command(subcommand)]
        action: StoreAction,
        /// Model store [default: $MLXD_STORE, $XDG_DATA_HOME/mlxd, or ~/.local/share/mlxd]
        #[arg(long, value_name = "DIR", global = true)]
        store: Option<PathBuf>,
    },
    /// Install mlxd as a socket-activated service (systemd or launchd) for this binary.
    Install(InstallOptions),
    /// Disable and remove the service files `mlxd install` wrote (the store stays).
    Uninstall(InstallOptions),
    /// Print the bearer token the HTTP API on TCP (`--http`) requires, creating it if none
    /// exists yet (in the store, mode 0600).
    Token {
        /// Model store [default: $MLXD_STORE, $XDG_DATA_HOME/mlxd, or ~/.local/share/mlxd]
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// List the models in the local Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub or
    /// ~/.cache/huggingface/hub) and whether mlxd can serve each (nothing is downloaded).
    Available {
        /// One JSON object per model.
        #[arg(long)]
        json: bool,
        /// Virtualenv with mlx-lm (to check architectures) [default: as for serve].
        #[arg(long, value_name = "DIR")]
        python: Option<PathBuf>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run a model worker (started by the daemon on its socketpair).
    #[command(hide = true)]
    Worker {
        #[arg(long, required_unless_present = "spare")]
        name: Option<String>,
        #[arg(long, value_parser = parse_kind, required_unless_present = "spare")]
        kind: Option<ModelKind>,
        #[arg(long, required_unless_present = "spare")]
        path: Option<PathBuf>,
        /// Start without a model: import the libraries, then wait for the model to load.
        #[arg(long, conflicts_with_all = ["name", "kind", "path"])]
        spare: bool,
        #[arg(long)]
        python: PathBuf,
        /// Generation streams decoded together.
        #[arg(long, default_value_t = mlxd::spec::DEFAULT_MAX_STREAMS)]
        max_streams: usize,
        /// Bytes of KV cache kept for recent prompts (0: none).
        #[arg(long, default_value_t = mlxd::spec::DEFAULT_PROMPT_CACHE_BYTES)]
        prompt_cache_bytes: u64,
        /// Tokens of context per generation stream (at most the model's own).
        #[arg(long, default_value_t = mlxd::spec::DEFAULT_MAX_CONTEXT)]
        max_context: u32,
        /// The store of the daemon that started this worker: how a later daemon on the same
        /// store recognises a worker left behind.
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum StoreAction {
    /// Re-hash every blob and check every model's files are present.
    Verify,
    /// Remove blobs no model refers to, and leftovers of interrupted imports.
    Gc,
}

fn store_command(action: StoreAction, store: Option<PathBuf>) -> Result<()> {
    let root = mlxd::store::store_root(store.as_deref());
    match action {
        StoreAction::Verify => {
            let problems = mlxd::store::verify(&root)?;
            if problems.is_empty() {
                println!("{}: every blob matches its hash and every model is complete", root.display());
                Ok(())
            } else {
                for problem in &problems {
                    println!("{problem}");
                }
                anyhow::bail!("{} problem(s) in {}", problems.len(), root.display())
            }
        }
        StoreAction::Gc => {
            let (removed, freed) = mlxd::store::gc(&root)?;
            println!("{}: removed {removed} unreferenced file(s), {} MB freed", root.display(), freed / 1_000_000);
            Ok(())
        }
    }
}

fn parse_kind(value: &str) -> Result<ModelKind, String> {
    match value {
        "embedding" => Ok(ModelKind::Embedding),
        "generation" => Ok(ModelKind::Generation),
        "rerank" => Ok(ModelKind::Rerank),
        other => Err(format!("unknown model kind {other:?} (embedding, generation, rerank)")),
    }
}

fn main() {
    // The matches, besides the parsed values: which settings were given explicitly (they
    // win over the config file) is known only from them.
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let settings_matches = matches
        .subcommand()
        .filter(|(name, _)| matches!(*name, "serve" | "stdio"))
        .map(|(_, sub)| sub.clone())
        .unwrap_or_default();
    if matches!(cli.command, Command::Worker { .. }) {
        mlxd::logging::init_worker();
    } else {
        mlxd::logging::init(cli.log_format);
    }
    let result = match cli.command {
        Command::Serve { socket, options } => serve(socket, &options, &settings_matches),
        Command::Stdio { options } => stdio(&options, &settings_matches),
        Command::Import { path, name, dtype, store, python, force } => {
            mlxd::import::run(mlxd::import::ImportArgs { path, name, dtype, store, python, force })
        }
        Command::Store { action, store } => store_command(action, store),
        Command::Available { json, python } => available(json, python.as_deref()),
        Command::Token { store } => {
            let path = mlxd::http::tcp::token_path(&mlxd::store::store_root(store.as_deref()));
            mlxd::http::tcp::load_or_create_token(&path).map(|token| println!("{token}"))
        }
        Command::Install(options) => mlxd::service::install::install(&options.args()),
        Command::Uninstall(options) => mlxd::service::install::uninstall(&options.args()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "mlxd",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Worker {
            name,
            kind,
            path,
            spare: _,
            python,
            max_streams,
            prompt_cache_bytes,
            max_context,
            store: _,
        } => {
            let model = match (name, kind, path) {
                (Some(name), Some(kind), Some(path)) => Some(WorkerArgs {
                    name,
                    kind,
                    path,
                    python: python.clone(),
                    max_streams,
                    prompt_cache_bytes,
                    max_context,
                }),
                _ => None, // --spare (clap requires the three otherwise)
            };
            worker::main(model, python)
        }
    };
    if let Err(err) = result {
        eprintln!("mlxd: {err:#}");
        std::process::exit(1);
    }
}

fn build_config(options: &ServeOptions, matches: &clap::ArgMatches) -> Result<(DaemonConfig, Catalog)> {
    let config = DaemonConfig::load(options.config.as_deref(), matches, options.models.clone())?;
    let catalog = Catalog::build(&config)?;
    if catalog.models.is_empty() {
        tracing::warn!(venv = %config.python.root.display(), "no models found; run `make setup` to install the bundled ones");
    }
    for model in &catalog.models {
        tracing::info!(model = %model.name, source = %model.source, "model available");
    }
    Ok((config, catalog))
}

fn serve(socket: Option<PathBuf>, options: &ServeOptions, matches: &clap::ArgMatches) -> Result<()> {
    // Everything the daemon creates (socket, lock file) is private to its user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Before any thread exists: this reads and clears LISTEN_FDS/LISTEN_PID.
    let inherited = mlxd::service::activation::take()?;
    let (config, catalog) = build_config(options, matches)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let bound = match inherited {
            Some(inherited) => {
                if let Some(socket) = &socket {
                    tracing::warn!(ignored = %socket.display(), "--socket ignored: serving the socket the service manager passed");
                }
                tracing::info!(manager = inherited.manager, "socket activation");
                BoundSocket::inherited(inherited)?
            }
            None => {
                let path = socket
                    .unwrap_or_else(|| mlxd_proto::paths::default_socket_path(nix::unistd::getuid().as_raw()));
                BoundSocket::bind(&path, config.access.socket_group)?
            }
        };
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(mlxd::http::tcp::bind(addr, "the metrics listener").await?),
            None => None,
        };
        let http = match &config.http {
            Some(http) => {
                let token = if http.auth {
                    let path = mlxd::http::tcp::token_path(&config.store);
                    Some(mlxd::http::tcp::load_or_create_token(&path)?)
                } else {
                    tracing::warn!(addr = %http.addr, "the HTTP API on TCP takes requests without a token (--http-no-auth)");
                    None
                };
                Some((mlxd::http::tcp::bind(http.addr, "the HTTP API").await?, http.clone(), token))
            }
            None => None,
        };
        mlxd::supervise::end_orphans(&config.store).await;
        let daemon = Daemon::new(config, catalog, bound.path.display().to_string());
        let stop_metrics = CancellationToken::new();
        let metrics_task = metrics_listener
            .map(|listener| tokio::spawn(mlxd::http::tcp::serve_metrics(listener, daemon.clone(), stop_metrics.clone())));
        // The TCP listener stops taking requests when the socket does (at the signal), and
        // its connections finish what they are doing while the daemon drains.
        let stop_http = CancellationToken::new();
        let http_task = http.map(|(listener, http, token)| {
            tokio::spawn(mlxd::http::tcp::serve(listener, daemon.clone(), http, token, stop_http.clone()))
        });
        let signal = {
            let stop_http = stop_http.clone();
            async move {
                shutdown_signal().await;
                stop_http.cancel();
            }
        };
        server::run(bound, daemon, signal).await;
        stop_metrics.cancel();
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        if let Some(task) = http_task {
            let _ = task.await;
        }
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn stdio(options: &ServeOptions, matches: &clap::ArgMatches) -> Result<()> {
    let (mut config, catalog) = build_config(options, matches)?;
    // A private daemon for one client's session: a spare worker would mostly be started
    // for nothing (and its replacement after the first load too), unless asked for.
    if options.settings.spare_workers.is_none() {
        config.spare_workers = 0;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let daemon = Daemon::new(config, catalog, "stdio".into());
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            on_signal.cancel();
        });
        let peer = mlxd::core::Peer::of_self();
        session::run(daemon.clone(), tokio::io::stdin(), tokio::io::stdout(), peer, stop).await;
        daemon.registry.shutdown(WORKER_STOP_GRACE).await;
    });
    // stdin's reader thread may still be blocked in read(2); do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// `mlxd available`: the Hugging Face cache's snapshots, each with its kind and whether
/// this mlxd (its mlx-lm) can serve it, or why not.
fn available(json: bool, python: Option<&std::path::Path>) -> Result<()> {
    let cache = mlxd::hfcache::cache_dir();
    let site_packages = mlxd::pyenv::PythonEnv::discover(python).map(|env| env.site_packages).ok();
    let mut rows = Vec::new();
    for cached in mlxd::hfcache::list_in(&cache)? {
        let verdict = match &site_packages {
            Some(site) => mlxd::spec::check_servable(&cached.path, site),
            None => mlxd::spec::detect_kind(&cached.path),
        };
        let (kind, why_not) = match verdict {
            Ok(kind) => (format!("{kind:?}").to_lowercase(), None),
            Err(err) => ("-".to_owned(), Some(format!("{err:#}"))),
        };
        rows.push((cached, kind, why_not));
    }
    if json {
        for (cached, kind, why_not) in &rows {
            let row = serde_json::json!({
                "name": cached.name, "path": cached.path, "kind": kind,
                "servable": why_not.is_none(), "why_not": why_not,
            });
            println!("{row}");
        }
        return Ok(());
    }
    if rows.is_empty() {
        println!("no models in the Hugging Face cache at {}", cache.display());
        return Ok(());
    }
    println!("models in the Hugging Face cache at {}:", cache.display());
    for (cached, kind, why_not) in rows {
        match why_not {
            None => println!("  {:<50} {kind:<10} serve with --model NAME={}", cached.name, cached.name),
            Some(why) => println!("  {:<50} not servable: {why}", cached.name),
        }
    }
    Ok(())
}
