//! Logging to stderr (stdout is the protocol in stdio mode), filtered by `MLXD_LOG`
//! (tracing-subscriber's EnvFilter syntax; default `info`).
//!
//! Format (`--log-format`, or `MLXD_LOG_FORMAT`): `human` on a terminal (with colour);
//! `json`, one object per line with the current span's fields (session id, client, request
//! id, kind, model) when stderr is not a terminal, unless journald is reading it
//! (`JOURNAL_STREAM` names stderr), where `human` without colour or timestamps reads best
//! in `journalctl` (which adds its own). Workers always log `human` without colour: the
//! daemon reads their stderr and logs each line under the target `mlxd::worker`.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// human on a terminal or under journald, json otherwise
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Terminal,
    Journal,
    Plain,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MLXD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let resolved = match format {
        LogFormat::Json => Resolved::Json,
        LogFormat::Human if terminal => Resolved::Terminal,
        LogFormat::Human if journald_reads_stderr() => Resolved::Journal,
        LogFormat::Human => Resolved::Plain,
        LogFormat::Auto if terminal => Resolved::Terminal,
        LogFormat::Auto if journald_reads_stderr() => Resolved::Journal,
        LogFormat::Auto => Resolved::Json,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match resolved {
        Resolved::Terminal => builder.with_ansi(true).try_init(),
        Resolved::Plain => builder.with_ansi(false).try_init(),
        Resolved::Journal => builder.with_ansi(false).without_time().try_init(),
        Resolved::Json => {
            builder.json().with_current_span(true).with_span_list(true).flatten_event(true).with_ansi(false).try_init()
        }
    };
}

/// Worker processes: plain lines, for the daemon to relay.
pub fn init_worker() {
    let filter = EnvFilter::try_from_env("MLXD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr goes to the
/// journal; it counts only if stderr is still that stream (not redirected since).
fn journald_reads_stderr() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2").or_else(|_| std::fs::metadata("/dev/stderr")) else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
