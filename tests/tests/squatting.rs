//! Nobody else's socket is talked to or taken over: another user's listener in the default
//! socket directory gets nothing from mlxctl (a default in someone else's directory is
//! passed over for the next one, and a socket named explicitly is checked for the
//! server's uid before anything is sent) and its directory is refused by `mlxd serve`; a
//! socket someone serves without a lock file (a socket-activated daemon) is never removed
//! as stale.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlxd_tests::{as_user, bin, cannot_switch_users, run_with_timeout, TempDir};

/// Two uids no account uses: the user whose default socket directory is taken, and the
/// user who takes it.
const VICTIM: u32 = 40111;
const ATTACKER: u32 = 40112;

/// The victim's default socket directory when `$XDG_RUNTIME_DIR` is unset.
fn victim_directory() -> PathBuf {
    PathBuf::from(format!("/tmp/mlxd-{VICTIM}"))
}

/// The attacker's listener: creates the victim's default directory (mode 0777), listens
/// where the victim's daemon would, and appends to RECORD how many bytes each connection
/// sent before closing (or going quiet for 2 s).
const LISTENER: &str = r#"
import os, socket, sys
directory, record = sys.argv[1], sys.argv[2]
os.mkdir(directory)
os.chmod(directory, 0o777)
server = socket.socket(socket.AF_UNIX)
server.bind(os.path.join(directory, "mlxd.sock"))
os.chmod(os.path.join(directory, "mlxd.sock"), 0o777)
server.listen(8)
open(record, "w").close()
while True:
    connection, _ = server.accept()
    connection.settimeout(2)
    received = 0
    try:
        while True:
            data = connection.recv(65536)
            if not data:
                break
            received += len(data)
    except socket.timeout:
        pass
    connection.close()
    with open(record, "a") as f:
        f.write(f"{received}\n")
"#;

/// A Python the attacker's uid can run (the project's venv Python lives under /root).
fn system_python() -> Option<PathBuf> {
    ["/usr/bin/python3", "/usr/local/bin/python3"].iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Removes the victim's directory now and again when dropped; kills the listener.
struct Squat {
    listener: Option<Child>,
    record: PathBuf,
}

impl Squat {
    fn start(python: &Path) -> Squat {
        let _ = std::fs::remove_dir_all(victim_directory());
        let record = victim_directory().join("received");
        let listener = as_user(ATTACKER, ATTACKER, python)
            .arg("-c")
            .arg(LISTENER)
            .arg(victim_directory())
            .arg(&record)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut squat = Squat { listener: Some(listener), record };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !squat.record.exists() {
            assert!(Instant::now() < deadline, "the attacker's listener did not start");
            if let Some(status) = squat.listener.as_mut().unwrap().try_wait().unwrap() {
                panic!("the attacker's listener exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        squat
    }

    /// Bytes received by each connection so far, once `connections` have been recorded.
    fn received(&self, connections: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.record).unwrap();
            let counts: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
            if counts.len() >= connections {
                return counts;
            }
            assert!(Instant::now() < deadline, "the listener recorded {counts:?}, expected {connections} connections");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Squat {
    fn drop(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = listener.kill();
            let _ = listener.wait();
        }
        let _ = std::fs::remove_dir_all(victim_directory());
    }
}

/// `program` as the victim, with the default socket path in force: no `$XDG_RUNTIME_DIR`,
/// no `$MLXD_SOCKET`, and nobody trusted beyond the usual.
fn as_victim(program: &Path, home: &Path) -> Command {
    let mut command = as_user(VICTIM, VICTIM, program);
    command
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("MLXD_SOCKET")
        .env_remove("MLXD_TRUSTED_UIDS")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("XDG_DATA_HOME", home)
        .stdin(Stdio::null());
    command
}

#[test]
fn another_users_listener_in_the_default_directory_gets_nothing_and_keeps_its_files() {
    if let Some(why) = cannot_switch_users() {
        eprintln!("SKIPPED another_users_listener_in_the_default_directory_gets_nothing_and_keeps_its_files: {why}");
        return;
    }
    let Some(python) = system_python() else {
        eprintln!("SKIPPED another_users_listener_in_the_default_directory_gets_nothing_and_keeps_its_files: no system python3 for the attacker's listener");
        return;
    };
    let home = TempDir::new();
    std::os::unix::fs::chown(&home.0, Some(VICTIM), Some(VICTIM)).unwrap();
    let squat = Squat::start(&python);
    let socket = victim_directory().join("mlxd.sock");

    // (a) mlxctl, with and without the stdio fallback: the default in the attacker's
    // directory is passed over for the system service's socket, where no daemon answers
    // here (or a legitimate one does).
    let system_socket = Path::new(mlxd_client::proto::paths::SYSTEM_SOCKET_PATH);
    for args in [&["--no-fallback", "status"][..], &["status"][..]] {
        let (status, _, stderr) =
            run_with_timeout(as_victim(&bin("mlxctl"), &home.0).args(args), Duration::from_secs(60));
        assert!(
            stderr.contains(&format!("passed over {}: its directory belongs to uid {ATTACKER}", socket.display())),
            "mlxctl {args:?} says why it did not use the default: {stderr}"
        );
        assert!(!stderr.contains("refusing to talk to"), "mlxctl {args:?} never connected to it: {stderr}");
        if args[0] == "--no-fallback" && !system_socket.exists() {
            assert!(!status.success());
            assert!(stderr.contains(&format!("no daemon at {}", system_socket.display())), "{stderr}");
        }
    }

    // Named explicitly, the socket is used, and refused before the Hello.
    let (status, _, stderr) = run_with_timeout(
        as_victim(&bin("mlxctl"), &home.0).args(["--no-fallback", "status"]).env("MLXD_SOCKET", &socket),
        Duration::from_secs(60),
    );
    assert!(!status.success(), "mlxctl talked to another user's socket");
    assert!(
        stderr.contains(&format!("refusing to talk to {}", socket.display()))
            && stderr.contains(&format!("served by uid {ATTACKER}"))
            && stderr.contains("MLXD_TRUSTED_UIDS"),
        "mlxctl says why: {stderr}"
    );
    assert!(!stderr.contains("passed over"), "an explicit socket is never passed over: {stderr}");

    // The same listener does receive what a client that trusts it sends (so the zero
    // above means something): the Hello.
    let (status, _, _) = run_with_timeout(
        as_victim(&bin("mlxctl"), &home.0)
            .args(["--no-fallback", "status"])
            .env("MLXD_SOCKET", &socket)
            .env("MLXD_TRUSTED_UIDS", ATTACKER.to_string()),
        Duration::from_secs(60),
    );
    assert!(!status.success(), "the listener never answers");
    // Connections are accepted and recorded one at a time, so these are the only two: the
    // runs at the default path never connected.
    let received = squat.received(2);
    assert!(received.len() == 2 && received[0] == 0 && received[1] > 0, "{received:?}");

    // (b) mlxd serve at the default path refuses the directory and touches nothing in it.
    for mode in [0o777, 0o700] {
        std::fs::set_permissions(victim_directory(), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        let (status, _, stderr) =
            run_with_timeout(as_victim(&bin("mlxd"), &home.0).arg("serve"), Duration::from_secs(60));
        assert!(!status.success(), "mlxd served in another user's directory (mode {mode:o})");
        assert!(
            stderr.contains(&format!("refusing socket directory {}", victim_directory().display()))
                && stderr.contains(&format!("belongs to uid {ATTACKER}"))
                && stderr.contains(&format!("mode {mode:04o}")),
            "mlxd names the directory, its owner and mode (mode {mode:o}): {stderr}"
        );
        let directory = std::fs::symlink_metadata(victim_directory()).unwrap();
        assert_eq!((directory.uid(), directory.mode() & 0o7777), (ATTACKER, mode), "the directory is untouched");
        let listening = std::fs::symlink_metadata(&socket).unwrap();
        assert!(listening.file_type().is_socket() && listening.uid() == ATTACKER, "the socket is untouched");
        assert_eq!(listening.mode() & 0o777, 0o777, "the socket's mode is untouched");
        assert!(!victim_directory().join("mlxd.sock.lock").exists(), "no lock file was created in it");
    }
    std::fs::set_permissions(victim_directory(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    drop(std::os::unix::net::UnixStream::connect(&socket).expect("the attacker's listener still serves"));
    assert_eq!(squat.received(3).len(), 3);
}

#[test]
fn a_socket_served_without_a_lock_is_never_replaced() {
    let dir = TempDir::new();
    let socket = dir.join("s.sock");
    // As a socket-activated daemon: listening, no lock file beside it.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (status, _, stderr) = run_with_timeout(
        Command::new(bin("mlxd"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .env("XDG_CONFIG_HOME", &dir.0)
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    assert!(!status.success(), "mlxd took over a socket in use");
    assert!(
        stderr.contains(&format!("a daemon is already serving {}", socket.display()))
            && stderr.contains("holds no lock"),
        "{stderr}"
    );
    assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket(), "the socket file is still there");
    let _client = std::os::unix::net::UnixStream::connect(&socket).expect("the socket still accepts connections");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok(), "and the connection reaches its listener");
}
