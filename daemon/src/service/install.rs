//! `mlxd install` / `mlxd uninstall`: the service files from `systemd/` (Linux) or
//! `launchd/` (macOS), filled in for this binary, its virtualenv and store, written where
//! the service manager reads them, and socket activation enabled. Idempotent: a file
//! that already has the right content is left alone, and running it twice changes nothing.
//!
//! A system service is installed by root for every user of the host, so it refuses a
//! binary or virtualenv that anyone but root could replace, down to every file the
//! interpreter may import: see `service::root_owned`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::root_owned::{check_root_owned, check_site_packages};

const SYSTEM_SERVICE: &str = include_str!("../../../systemd/system/mlxd.service");
const SYSTEM_SOCKET: &str = include_str!("../../../systemd/system/mlxd.socket");
const USER_SERVICE: &str = include_str!("../../../systemd/user/mlxd.service");
const USER_SOCKET: &str = include_str!("../../../systemd/user/mlxd.socket");
const LAUNCH_AGENT: &str = include_str!("../../../launchd/io.mlxd.agent.plist");
const LAUNCH_DAEMON: &str = include_str!("../../../launchd/io.mlxd.daemon.plist");

/// Where the system service keeps its store (systemd's `StateDirectory=mlxd`).
pub const SYSTEM_STORE: &str = "/var/lib/mlxd";
/// The system service's user and group (Linux; `_mlxd` on macOS).
pub const SYSTEM_USER: &str = "mlxd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// For the invoking user (systemd user units, a LaunchAgent).
    User,
    /// For the whole host (system units, a LaunchDaemon), run as the `mlxd` user.
    System,
}

#[derive(Debug, Clone)]
pub struct InstallArgs {
    pub scope: Scope,
    pub store: Option<PathBuf>,
    pub python: Option<PathBuf>,
    /// Write here instead of the service manager's directory (packaging, tests).
    pub unit_dir: Option<PathBuf>,
    /// Print what would be done; change nothing.
    pub dry_run: bool,
    /// Write the files but leave the service manager alone.
    pub no_enable: bool,
}

/// One file to write.
#[derive(Debug)]
struct Planned {
    path: PathBuf,
    content: String,
}

pub fn install(args: &InstallArgs) -> Result<()> {
    let binary = std::env::current_exe().context("finding this binary")?;
    let binary = binary.canonicalize().unwrap_or(binary);
    let python_env = crate::pyenv::PythonEnv::discover(args.python.as_deref())
        .context("finding the virtualenv with MLX the service will use (pass --python DIR)")?;
    if args.scope == Scope::System {
        check_root_owned(&binary, "the mlxd binary")?;
        check_root_owned(&python_env.root, "the virtualenv")?;
        let venv_python = python_env.root.join("bin/python");
        if venv_python.exists() {
            check_root_owned(&venv_python, "the virtualenv's python")?;
        }
        check_site_packages(&python_env.site_packages)?;
    }
    let python = python_env.root;
    let store = match (args.scope, &args.store) {
        (_, Some(store)) => store.clone(),
        (Scope::User, None) => crate::store::store_root(None),
        (Scope::System, None) if cfg!(target_os = "macos") => PathBuf::from("/usr/local/var/mlxd"),
        (Scope::System, None) => PathBuf::from(SYSTEM_STORE),
    };
    let dir = target_dir(args)?;
    let files = plan(args.scope, &dir, &binary, &python, &store)?;
    let verb = if args.dry_run { "would write" } else { "wrote" };
    for file in &files {
        let current = std::fs::read_to_string(&file.path).ok();
        if current.as_deref() == Some(file.content.as_str()) {
            println!("{} is up to date", file.path.display());
            continue;
        }
        if !args.dry_run {
            write_atomically(&file.path, &file.content)?;
        }
        println!("{verb} {}", file.path.display());
    }
    if args.scope == Scope::System {
        let in_home =
            |path: &Path| path.starts_with("/root") || path.starts_with("/home") || path.starts_with("/Users");
        if in_home(&python) {
            println!(
                "note: the virtualenv {} is in a home directory; the service's user must be able to read it \
                 (or pass --python with a venv elsewhere, e.g. /opt/mlxd/venv)",
                python.display()
            );
        }
        if in_home(&binary) {
            println!(
                "note: {} is in a home directory; the service's user must be able to run it (or copy it to \
                 /usr/local/bin and run `mlxd install` from there)",
                binary.display()
            );
        }
    }
    if args.dry_run || args.no_enable || args.unit_dir.is_some() {
        println!("service manager left alone{}", if args.dry_run { " (dry run)" } else { "" });
        print_next_steps(args.scope, &store);
        return Ok(());
    }
    if args.scope == Scope::System {
        ensure_system_user()?;
        if !cfg!(target_os = "macos") {
            // StateDirectory= creates it at start; created here too so imports work now.
            std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
            run(Command::new("chown").arg(format!("{SYSTEM_USER}:{SYSTEM_USER}")).arg(&store))?;
        }
    }
    enable(args.scope, &files)?;
    print_next_steps(args.scope, &store);
    Ok(())
}

pub fn uninstall(args: &InstallArgs) -> Result<()> {
    let dir = target_dir(args)?;
    let names = file_names(args.scope);
    let manage = !(args.dry_run || args.no_enable || args.unit_dir.is_some());
    if manage {
        disable(args.scope, &dir);
    }
    let mut removed = 0;
    for name in names {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        if !args.dry_run {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        removed += 1;
        println!("{} {}", if args.dry_run { "would remove" } else { "removed" }, path.display());
    }
    if removed == 0 {
        println!("nothing to remove in {}", dir.display());
    }
    if manage && !cfg!(target_os = "macos") {
        let _ = run(systemctl(args.scope).arg("daemon-reload"));
    }
    println!("the model store and any `mlxd` user are left in place");
    Ok(())
}

fn file_names(scope: Scope) -> Vec<&'static str> {
    match (cfg!(target_os = "macos"), scope) {
        (true, Scope::User) => vec!["io.mlxd.agent.plist"],
        (true, Scope::System) => vec!["io.mlxd.daemon.plist"],
        (false, _) => vec!["mlxd.socket", "mlxd.service"],
    }
}

fn target_dir(args: &InstallArgs) -> Result<PathBuf> {
    if let Some(dir) = &args.unit_dir {
        return Ok(dir.clone());
    }
    let home = || std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set");
    Ok(match (cfg!(target_os = "macos"), args.scope) {
        (true, Scope::User) => home()?.join("Library/LaunchAgents"),
        (true, Scope::System) => PathBuf::from("/Library/LaunchDaemons"),
        (false, Scope::User) => match std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from) {
            Some(config) if config.is_absolute() => config.join("systemd/user"),
            _ => home()?.join(".config/systemd/user"),
        },
        (false, Scope::System) => PathBuf::from("/etc/systemd/system"),
    })
}

/// The files for this platform and scope, filled in.
fn plan(scope: Scope, dir: &Path, binary: &Path, python: &Path, store: &Path) -> Result<Vec<Planned>> {
    if cfg!(target_os = "macos") {
        let (template, name) = match scope {
            Scope::User => (LAUNCH_AGENT, "io.mlxd.agent.plist"),
            Scope::System => (LAUNCH_DAEMON, "io.mlxd.daemon.plist"),
        };
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let (socket, log) = match scope {
            Scope::User => {
                (mlxd_proto::paths::agent_socket_path().context("HOME is not set")?, home.join("Library/Logs/mlxd.log"))
            }
            Scope::System => {
                (PathBuf::from(mlxd_proto::paths::SYSTEM_SOCKET_PATH), PathBuf::from("/Library/Logs/mlxd.log"))
            }
        };
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let content = render_plist(template, binary, python, store, &socket, &log)?;
        return Ok(vec![Planned { path: dir.join(name), content }]);
    }
    let (service, socket) = match scope {
        Scope::User => (USER_SERVICE, USER_SOCKET),
        Scope::System => (SYSTEM_SERVICE, SYSTEM_SOCKET),
    };
    let mut command = vec![binary.to_path_buf(), "serve".into(), "--store".into(), store.to_path_buf()];
    command.extend(["--python".into(), python.to_path_buf()]);
    if scope == Scope::System {
        command.extend(["--socket-group".into(), SYSTEM_USER.into()]);
    }
    let exec_start = command.iter().map(|arg| systemd_quote(arg)).collect::<Result<Vec<_>>>()?.join(" ");
    let mut service = render_unit(service, &exec_start);
    if scope == Scope::System && store != Path::new(SYSTEM_STORE) {
        // A store outside StateDirectory= must be writable despite ProtectSystem=strict.
        service = service.replace(
            "StateDirectory=mlxd\n",
            &format!("StateDirectory=mlxd\nReadWritePaths={}\n", systemd_quote(store)?),
        );
    }
    Ok(vec![
        Planned { path: dir.join("mlxd.socket"), content: socket.to_owned() },
        Planned { path: dir.join("mlxd.service"), content: service },
    ])
}

/// The template with its `ExecStart=` line replaced.
fn render_unit(template: &str, exec_start: &str) -> String {
    template
        .lines()
        .map(|line| if line.starts_with("ExecStart=") { format!("ExecStart={exec_start}") } else { line.to_owned() })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A path as one ExecStart= word: `%` doubled (systemd specifiers), quoted when needed.
fn systemd_quote(path: &Path) -> Result<String> {
    let text = path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
    if text.contains(['"', '\\', '\n']) {
        bail!("{text:?} cannot be written into a unit file; use a plainer path");
    }
    let text = text.replace('%', "%%");
    Ok(if text.contains([' ', '\t', '\'', ';', '$']) { format!("\"{}\"", text.replace('$', "$$")) } else { text })
}

fn render_plist(
    template: &str,
    binary: &Path,
    python: &Path,
    store: &Path,
    socket: &Path,
    log: &Path,
) -> Result<String> {
    let xml = |path: &Path| -> Result<String> {
        let text = path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
        Ok(text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"))
    };
    Ok(template
        .replace("@MLXD@", &xml(binary)?)
        .replace("@PYTHON@", &xml(python)?)
        .replace("@STORE@", &xml(store)?)
        .replace("@SOCKET@", &xml(socket)?)
        .replace("@LOG@", &xml(log)?))
}

fn write_atomically(path: &Path, content: &str) -> Result<()> {
    let dir = path.parent().context("a file path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = dir.join(format!(".{}.mlxd-tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("unit")));
    std::fs::write(&temp, content).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("writing {}", path.display()))
}

fn systemctl(scope: Scope) -> Command {
    let mut command = Command::new("systemctl");
    if scope == Scope::User {
        command.arg("--user");
    }
    command
}

fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}").replace('"', "");
    let output = command.output().with_context(|| format!("running {shown}"))?;
    if !output.status.success() {
        bail!("{shown} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    println!("ran {shown}");
    Ok(())
}

fn enable(scope: Scope, files: &[Planned]) -> Result<()> {
    let hint = |err: anyhow::Error, what: &str| {
        err.context(format!("the files are written; {what} failed (is the service manager running here?)"))
    };
    if cfg!(target_os = "macos") {
        let path = &files[0].path;
        let domain = match scope {
            Scope::User => format!("gui/{}", nix::unistd::getuid()),
            Scope::System => "system".to_owned(),
        };
        // bootout first so a changed plist takes effect; it fails harmlessly when not loaded.
        let _ = Command::new("launchctl").arg("bootout").arg(&domain).arg(path).output();
        return run(Command::new("launchctl").arg("bootstrap").arg(&domain).arg(path))
            .map_err(|err| hint(err, "launchctl bootstrap"));
    }
    run(systemctl(scope).arg("daemon-reload")).map_err(|err| hint(err, "systemctl daemon-reload"))?;
    run(systemctl(scope).args(["enable", "--now", "mlxd.socket"])).map_err(|err| hint(err, "systemctl enable"))?;
    // A running service keeps its old command line until restarted.
    let _ = run(systemctl(scope).args(["try-restart", "mlxd.service"]));
    Ok(())
}

fn disable(scope: Scope, dir: &Path) {
    if cfg!(target_os = "macos") {
        let domain = match scope {
            Scope::User => format!("gui/{}", nix::unistd::getuid()),
            Scope::System => "system".to_owned(),
        };
        for name in file_names(scope) {
            let _ = run(Command::new("launchctl").arg("bootout").arg(&domain).arg(dir.join(name)));
        }
        return;
    }
    if let Err(err) = run(systemctl(scope).args(["disable", "--now", "mlxd.socket", "mlxd.service"])) {
        println!("note: {err:#}");
    }
}

/// Creates the system service's user and group if missing (Linux: useradd; macOS: says how).
fn ensure_system_user() -> Result<()> {
    if cfg!(target_os = "macos") {
        if nix::unistd::User::from_name("_mlxd").ok().flatten().is_none() {
            bail!(
                "the LaunchDaemon runs as _mlxd, which does not exist; create it (e.g. with `sysadminctl` or \
                 `dscl . -create /Users/_mlxd` and a matching group), then run `sudo mlxd install` again"
            );
        }
        return Ok(());
    }
    if nix::unistd::User::from_name(SYSTEM_USER).ok().flatten().is_some() {
        println!("user {SYSTEM_USER} exists");
        return Ok(());
    }
    run(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--home-dir",
        SYSTEM_STORE,
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "mlxd model supervisor",
        SYSTEM_USER,
    ]))
    .context("creating the mlxd system user")
}

fn print_next_steps(scope: Scope, store: &Path) {
    let socket = match scope {
        Scope::System => PathBuf::from(mlxd_proto::paths::SYSTEM_SOCKET_PATH),
        Scope::User if cfg!(target_os = "macos") => mlxd_proto::paths::agent_socket_path().unwrap_or_default(),
        Scope::User => PathBuf::from("$XDG_RUNTIME_DIR/mlxd/mlxd.sock"),
    };
    println!("clients reach it at {} (mlxctl finds it there by itself)", socket.display());
    match scope {
        Scope::System => {
            println!("users who may use it: add them to the group (sudo usermod -aG {SYSTEM_USER} USER)");
            println!(
                "models imported with `mlxd import` go into {} (run it as the service's user: sudo -u {SYSTEM_USER} \
                 mlxd import FILE --name NAME --store {})",
                store.display(),
                store.display()
            );
        }
        Scope::User => println!("models imported with `mlxd import` go into {}", store.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_words_are_escaped() {
        assert_eq!(systemd_quote(Path::new("/opt/mlxd/venv")).unwrap(), "/opt/mlxd/venv");
        assert_eq!(systemd_quote(Path::new("/srv/100%/m")).unwrap(), "/srv/100%%/m");
        assert_eq!(systemd_quote(Path::new("/Models/My Store")).unwrap(), "\"/Models/My Store\"");
        assert!(systemd_quote(Path::new("/a\"b")).is_err());
    }

    #[test]
    fn only_the_exec_start_line_changes() {
        let rendered = render_unit(SYSTEM_SERVICE, "/x/mlxd serve");
        assert!(rendered.contains("\nExecStart=/x/mlxd serve\n"));
        assert_eq!(rendered.lines().count(), SYSTEM_SERVICE.lines().count());
        assert!(rendered.contains("MemoryDenyWriteExecute=yes"));
    }

    #[test]
    fn plists_are_filled_in_and_escaped() {
        let plist = render_plist(
            LAUNCH_AGENT,
            Path::new("/usr/local/bin/mlxd"),
            Path::new("/opt/venv"),
            Path::new("/Users/a&b/store"),
            Path::new("/Users/a&b/mlxd.sock"),
            Path::new("/tmp/log"),
        )
        .unwrap();
        assert!(!plist.contains('@'), "{plist}");
        assert!(plist.contains("<string>/Users/a&amp;b/store</string>"));
    }
}
