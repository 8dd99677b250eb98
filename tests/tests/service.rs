//! Running as a service: socket activation (the test plays systemd: it binds the socket,
//! passes it as fd 3 with LISTEN_FDS/LISTEN_PID, and listens on NOTIFY_SOCKET), the unit
//! files verified by `systemd-analyze verify`, the plists parsed, `mlxd install` being
//! idempotent, the hardening's W^X policy holding for real workers, and JSON logs.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mlxd_client::proto::{ModelRef, Request};
use mlxd_client::ConnectOptions;
use mlxd_tests::{bin, cosine, minilm_reference, repo_root, run_with_timeout, venv_python, wait_timeout, TempDir};

async fn connect(socket: &std::path::Path) -> mlxd_client::Client {
    ConnectOptions { socket: Some(socket.to_path_buf()), fallback: false, ..ConnectOptions::default() }
        .connect()
        .await
        .unwrap()
}

/// Everything received on `notify` until `want` arrives (or 60 s pass).
fn notifications_until(notify: &UnixDatagram, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if seen.last().unwrap().contains(want) {
                return seen;
            }
        }
    }
    panic!("no {want:?} notification; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_passed_by_systemd_is_served_and_readiness_is_notified() {
    let dir = TempDir::new();
    let socket = dir.join("activated.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();

    // As systemd does: the socket becomes fd 3 of the service, and LISTEN_PID is the
    // service's own pid, known only once forked: `sh` sets it to $$ and execs the daemon.
    let fd = listener.as_raw_fd();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" serve --log-format human")
        .arg(bin("mlxd"))
        .env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("MLXD_LOG", "debug")
        .env("XDG_CONFIG_HOME", &dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the new descriptor: fd 3 survives the exec.
            Ok(())
        });
    }
    let mut daemon = mlxd_tests::Reaped(command.spawn().unwrap());
    drop(listener); // the daemon has its own copy, like a socket unit's

    let ready = notifications_until(&notify, "READY=1");
    assert!(ready.last().unwrap().contains(&format!("MAINPID={}", daemon.id())), "{ready:?}");

    let client = connect(&socket).await;
    let reference = minilm_reference();
    let texts: Vec<String> = reference.iter().take(4).map(|r| r.text.clone()).collect();
    let embeddings = client.embed("minilm", texts).await.unwrap();
    for (row, item) in embeddings.rows().zip(&reference) {
        assert!(cosine(row, &item.embedding) > 0.9999, "{}", item.text);
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.endpoint, socket.display().to_string(), "the endpoint is the inherited socket's path");
    let loads = notifications_until(&notify, "STATUS=minilm ready");
    assert!(loads.iter().any(|n| n.lines().eq(["STATUS=loading minilm"])), "{loads:?}");
    let tokens = client.tokenize(ModelRef::Name("minilm".into()), "hello").await.unwrap();
    assert!(!tokens.is_empty());
    drop(client);

    // Workers must not inherit the activation variables or the socket.
    let status = connect(&socket).await.status().await.unwrap();
    let worker = status.models.iter().find_map(|m| m.worker_pid).unwrap();
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("LISTEN_FDS"), "LISTEN_FDS leaked to a worker");
    let socket_inode =
        std::fs::metadata(format!("/proc/{}/fd/3", daemon.id())).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let worker_fds: Vec<u64> = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.unwrap().path()).ok())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .collect();
    assert!(!worker_fds.contains(&socket_inode.unwrap()), "the listening socket leaked to a worker");

    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let exit = wait_timeout(&mut daemon, Duration::from_secs(30)).expect("daemon stops on SIGTERM");
    assert!(exit.success(), "{exit:?}");
    notifications_until(&notify, "STOPPING=1");
    assert!(socket.exists(), "the socket belongs to the service manager and stays");
}

/// A plainly failing `systemd-analyze verify` prints why and exits non-zero; a unit it
/// merely warns about exits 0 with the warning on stderr. Both fail here.
fn verify(args: &[&str], files: &[std::path::PathBuf], env: &[(&str, &std::path::Path)]) {
    let mut command = Command::new("systemd-analyze");
    command.args(args).arg("verify").args(files).env("SYSTEMD_LOG_COLOR", "0");
    for (key, value) in env {
        command.env(key, value);
    }
    let (status, stdout, stderr) = run_with_timeout(&mut command, Duration::from_secs(60));
    assert!(
        status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "{args:?} {files:?}:\n{stdout}{stderr}"
    );
}

fn mlxd(args: &[&str]) -> String {
    let (status, stdout, stderr) = run_with_timeout(Command::new(bin("mlxd")).args(args), Duration::from_secs(60));
    assert!(status.success(), "mlxd {args:?}: {stderr}");
    stdout
}

/// A virtualenv like the project's (same Python, same pyvenv.cfg) at `venv`, with an empty
/// site-packages: the project's own has an editable install, which a system service refuses.
fn bare_venv(venv: &std::path::Path) {
    let real_venv = repo_root().join(".venv").canonicalize().unwrap();
    let version = std::fs::read_dir(real_venv.join("lib")).unwrap().next().unwrap().unwrap().file_name();
    std::fs::create_dir_all(venv.join("lib").join(&version).join("site-packages")).unwrap();
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::copy(real_venv.join("pyvenv.cfg"), venv.join("pyvenv.cfg")).unwrap();
    std::os::unix::fs::symlink(real_venv.join("bin/python").canonicalize().unwrap(), venv.join("bin/python")).unwrap();
}

#[test]
fn installed_units_pass_systemd_analyze_verify_and_install_is_idempotent() {
    let dir = TempDir::new();
    for scope in ["--user", "--system"] {
        let units = dir.join(scope.trim_start_matches('-'));
        let units_arg = units.to_str().unwrap();
        if scope == "--system" && std::fs::metadata(bin("mlxd")).unwrap().uid() != 0 {
            // A build owned by a developer is refused for a system service (see
            // a_system_install_refuses_what_another_user_can_replace).
            eprintln!("system units not checked: {} is not owned by root", bin("mlxd").display());
            continue;
        }
        // Canonical, as the unit names it (.venv may be a link, e.g. in a git worktree).
        let venv = if scope == "--user" {
            repo_root().join(".venv").canonicalize().unwrap()
        } else {
            bare_venv(&dir.join("venv"));
            dir.join("venv").canonicalize().unwrap()
        };
        let venv = venv.to_str().unwrap();
        let first = mlxd(&["install", scope, "--python", venv, "--unit-dir", units_arg]);
        assert!(first.contains("wrote") && first.contains("mlxd.service"), "{first}");
        let service = std::fs::read_to_string(units.join("mlxd.service")).unwrap();
        let exec_start = service.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(exec_start.starts_with(&format!("ExecStart={} serve", bin("mlxd").canonicalize().unwrap().display())));
        assert!(exec_start.contains(&format!("--python {venv}")), "{exec_start}");
        let files = [units.join("mlxd.socket"), units.join("mlxd.service")];
        if scope == "--user" {
            let runtime = dir.join("runtime");
            std::fs::create_dir_all(&runtime).unwrap();
            verify(&["--user"], &files, &[("XDG_RUNTIME_DIR", &runtime)]);
        } else {
            verify(&[], &files, &[]);
            assert!(service.contains("--socket-group mlxd"), "group members pass the peer check too");
            for hardening in [
                "NoNewPrivileges=yes",
                "ProtectSystem=strict",
                "ProtectHome=read-only",
                "PrivateTmp=yes",
                "StateDirectory=mlxd",
                "RestrictAddressFamilies=AF_UNIX",
                "MemoryDenyWriteExecute=yes",
                "Type=notify",
            ] {
                assert!(service.lines().any(|l| l == hardening), "{hardening} missing");
            }
            let socket = std::fs::read_to_string(units.join("mlxd.socket")).unwrap();
            for line in ["ListenStream=/run/mlxd/mlxd.sock", "SocketGroup=mlxd", "SocketMode=0660"] {
                assert!(socket.lines().any(|l| l == line), "{line} missing");
            }
        }
        let again = mlxd(&["install", scope, "--python", venv, "--unit-dir", units_arg]);
        assert_eq!(again.matches("is up to date").count(), 2, "a second install changes nothing:\n{again}");
        let removed = mlxd(&["uninstall", scope, "--unit-dir", units_arg]);
        assert_eq!(removed.matches("removed").count(), 2, "{removed}");
        assert!(!units.join("mlxd.service").exists());
        let nothing = mlxd(&["uninstall", scope, "--unit-dir", units_arg]);
        assert!(nothing.contains("nothing to remove"), "{nothing}");
    }
    // The user socket is where clients look by default.
    let user_socket = std::fs::read_to_string(repo_root().join("systemd/user/mlxd.socket")).unwrap();
    assert!(user_socket.lines().any(|l| l == "ListenStream=%t/mlxd/mlxd.sock"));
}

/// `mlxd install --system` with a binary or virtualenv that another user owns, or may
/// write, is refused (a dry run is enough: the check comes before anything is written).
#[test]
fn a_system_install_refuses_what_another_user_can_replace() {
    const NOBODY: u32 = 65534;
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("SKIPPED a_system_install_refuses_what_another_user_can_replace: not root, cannot chown");
        return;
    }
    let dir = TempDir::new();
    let install = |binary: &std::path::Path, venv: &std::path::Path| {
        run_with_timeout(
            Command::new(binary)
                .args(["install", "--system", "--dry-run", "--unit-dir"])
                .arg(dir.join("units"))
                .arg("--python")
                .arg(venv),
            Duration::from_secs(60),
        )
    };

    // A virtualenv like the real one (same Python), made by another user.
    let venv = dir.join("venv");
    bare_venv(&venv);
    std::os::unix::fs::chown(&venv, Some(NOBODY), Some(NOBODY)).unwrap();
    let (status, _, stderr) = install(&bin("mlxd"), &venv);
    assert!(!status.success(), "installed a system service with another user's virtualenv");
    assert!(stderr.contains(&format!("{} belongs to uid {NOBODY}", venv.display())), "{stderr}");

    // Root's, but anyone may write it.
    std::os::unix::fs::chown(&venv, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&venv, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (status, _, stderr) = install(&bin("mlxd"), &venv);
    assert!(!status.success(), "installed a system service with a world-writable virtualenv");
    assert!(stderr.contains("writable by group or others (mode 0777)"), "{stderr}");

    // Root's and private: accepted (so the refusals above are about ownership and mode).
    std::fs::set_permissions(&venv, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, _, stderr) = install(&bin("mlxd"), &venv);
    assert!(status.success(), "{stderr}");

    // The worker's site.addsitedir follows .pth files: a directory one names (an editable
    // install's checkout) is imported from, so another user's is refused, and root's passes.
    let site_packages =
        std::fs::read_dir(venv.join("lib")).unwrap().next().unwrap().unwrap().path().join("site-packages");
    let checkout = dir.join("checkout");
    std::fs::create_dir_all(checkout.join("mlxd_runtime")).unwrap();
    std::fs::write(checkout.join("mlxd_runtime/__init__.py"), "").unwrap();
    let pth = site_packages.join("__editable__.mlxd_runtime-0.1.0.pth");
    std::fs::write(&pth, format!("{}\n", checkout.display())).unwrap();
    std::os::unix::fs::chown(&checkout, Some(NOBODY), Some(NOBODY)).unwrap();
    let (status, _, stderr) = install(&bin("mlxd"), &venv);
    assert!(!status.success(), "installed a system service importing another user's checkout");
    assert!(
        stderr.contains(&pth.display().to_string())
            && stderr.contains(&format!("{} belongs to uid {NOBODY}", checkout.display())),
        "names the .pth file and the directory's owner: {stderr}"
    );
    std::os::unix::fs::chown(&checkout, Some(0), Some(0)).unwrap();
    let (status, _, stderr) = install(&bin("mlxd"), &venv);
    assert!(status.success(), "a root-owned checkout passes: {stderr}");
    // What site.addsitedir executes (an editable finder maps modules to anywhere) is refused.
    std::fs::write(&pth, "import __editable___mlxd_runtime_finder; __editable___mlxd_runtime_finder.install()\n")
        .unwrap();
    let (status, _, stderr) = install(&bin("mlxd"), &venv);
    assert!(!status.success() && stderr.contains("runs code when Python starts"), "{stderr}");
    std::fs::remove_file(&pth).unwrap();

    // A copy of the binary that another user owns.
    let binary = dir.join("mlxd");
    std::fs::copy(bin("mlxd"), &binary).unwrap();
    std::os::unix::fs::chown(&binary, Some(NOBODY), Some(NOBODY)).unwrap();
    let (status, _, stderr) = install(&binary, &venv);
    assert!(!status.success(), "installed a system service running another user's binary");
    assert!(
        stderr.contains("the mlxd binary") && stderr.contains(&format!("{} belongs to uid {NOBODY}", binary.display())),
        "{stderr}"
    );
    assert!(!dir.join("units").exists(), "nothing was written");
}

#[test]
fn launchd_plists_parse_and_have_the_keys_launchd_needs() {
    let script = r#"
import json, plistlib, sys
print(json.dumps({path: plistlib.load(open(path, "rb")) for path in sys.argv[1:]}))
"#;
    let agent = repo_root().join("launchd/io.mlxd.agent.plist");
    let daemon = repo_root().join("launchd/io.mlxd.daemon.plist");
    let (status, stdout, stderr) = run_with_timeout(
        Command::new(venv_python()).arg("-c").arg(script).arg(&agent).arg(&daemon),
        Duration::from_secs(30),
    );
    assert!(status.success(), "plistlib could not parse them: {stderr}");
    let plists: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for (path, label, mode) in [(&agent, "io.mlxd.agent", 0o600), (&daemon, "io.mlxd.daemon", 0o660)] {
        let plist = &plists[path.to_str().unwrap()];
        assert_eq!(plist["Label"], label);
        let program: Vec<&str> =
            plist["ProgramArguments"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(&program[..2], &["@MLXD@", "serve"], "{program:?}");
        assert!(
            program.windows(2).any(|w| w == ["--store", "@STORE@"])
                && program.windows(2).any(|w| w == ["--python", "@PYTHON@"])
        );
        // The name the daemon passes to launch_activate_socket.
        let listeners = &plist["Sockets"]["Listeners"];
        assert_eq!(listeners["SockPathName"], "@SOCKET@");
        assert_eq!(listeners["SockPathMode"], mode);
        assert_eq!(listeners["SockType"], "stream");
        assert_eq!(listeners["SockFamily"], "Unix");
        assert!(plist.get("KeepAlive").is_none() && plist.get("RunAtLoad").is_none(), "started on demand only");
        assert!(plist["StandardErrorPath"].is_string());
    }
    let daemon_plist = &plists[daemon.to_str().unwrap()];
    assert_eq!(daemon_plist["UserName"], "_mlxd");
    assert_eq!(daemon_plist["GroupName"], "_mlxd");
    let program = daemon_plist["ProgramArguments"].as_array().unwrap();
    assert!(program.windows(2).any(|w| w[0] == "--socket-group" && w[1] == "_mlxd"));
}

/// `MemoryDenyWriteExecute=yes` in the unit: the kernel's own W^X policy (PR_SET_MDWE, the
/// same rule, inherited by every worker) must let real workers embed and generate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_under_the_memory_deny_write_execute_policy() {
    const PR_SET_MDWE: libc::c_int = 65;
    const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
    let dir = TempDir::new();
    let socket = dir.join("s.sock");
    let mut command = Command::new(bin("mlxd"));
    command
        .args(["serve", "--log-format", "human", "--socket"])
        .arg(&socket)
        .env("XDG_CONFIG_HOME", &dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap());
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = match command.spawn() {
        Ok(child) => mlxd_tests::Reaped(child),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            panic!("this kernel has no PR_SET_MDWE (Linux < 6.3): cannot check MemoryDenyWriteExecute here");
        }
        Err(err) => panic!("{err}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = connect(&socket).await;
    let reference = minilm_reference();
    let embeddings = client.embed("minilm", vec![reference[0].text.clone()]).await.unwrap();
    assert!(cosine(embeddings.rows().next().unwrap(), &reference[0].embedding) > 0.9999);
    let mut stream = client
        .generate(mlxd_client::proto::GenerateRequest {
            model: ModelRef::Name("smollm2".into()),
            input: mlxd_client::proto::PromptInput::Raw("Once upon a time".into()),
            params: mlxd_client::proto::GenerateParams { max_tokens: 4, temperature: 0.0, ..Default::default() },
            initial_credit: 16,
            priority: Default::default(),
            deadline_ms: None,
        })
        .await
        .unwrap();
    let mut tokens = 0;
    while let Some(item) = stream.next().await.unwrap() {
        if let mlxd_client::StreamItem::Token { .. } = item {
            tokens += 1;
        }
    }
    assert!(tokens > 0, "generated under W^X");
    // Not vacuous: a process started the same way is refused a writable+executable mapping
    // (the workers were started under the policy too: it is inherited across fork and exec).
    let probe = "import mmap\ntry:\n    mmap.mmap(-1, 4096, prot=7)\n    print('allowed')\nexcept OSError:\n    print('refused')";
    let mut python = Command::new(venv_python());
    python.arg("-c").arg(probe);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        python.pre_exec(|| {
            if libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (status, stdout, stderr) = run_with_timeout(&mut python, Duration::from_secs(30));
    assert!(status.success() && stdout.trim() == "refused", "W+X under the policy: {stdout}{stderr}");
    drop(client);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(wait_timeout(&mut daemon, Duration::from_secs(30)).is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_session_and_the_clients_request_id() {
    let dir = TempDir::new();
    let socket = dir.join("s.sock");
    let log_path = dir.join("daemon.log");
    let mut daemon =
        mlxd_tests::Reaped(mlxd_tests::spawn_daemon_env(&socket, &log_path, &["--log-format", "json"], &[]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = connect(&socket).await;
    // Fails inside its request task, which logs it (at debug) within the request's span.
    let err = client.call(Request::Load { model: "no-such-model".into() }).await.unwrap_err();
    assert_eq!(err.code(), Some(mlxd_client::proto::ErrorCode::NotFound));
    drop(client);
    let closed = || std::fs::read_to_string(&log_path).unwrap_or_default().contains("session closed");
    assert!(mlxd_tests::eventually(Duration::from_secs(10), closed), "the session never closed");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    wait_timeout(&mut daemon, Duration::from_secs(30)).unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string()));
    let failed = lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.contains("request failed")))
        .unwrap_or_else(|| panic!("no request failure logged:\n{log}"));
    let span = &failed["span"];
    assert_eq!(span["name"], "request");
    assert_eq!(span["kind"], "load");
    assert!(span["id"].is_u64(), "the client's request id: {failed}");
    let session = failed["spans"].as_array().unwrap().iter().find(|s| s["name"] == "session").unwrap();
    // The client library names a session after the program (this test binary).
    assert!(session["client"].as_str().is_some_and(|c| c.starts_with("service")), "{session}");
    assert!(session["id"].is_u64() && session["pid"].as_i64() == Some(std::process::id() as i64), "{session}");
}

#[test]
fn shell_completions_are_generated_for_both_binaries() {
    for (binary, shell, marker) in
        [("mlxctl", "bash", "_mlxctl()"), ("mlxctl", "zsh", "#compdef mlxctl"), ("mlxd", "fish", "complete -c mlxd")]
    {
        let (status, stdout, stderr) =
            run_with_timeout(Command::new(bin(binary)).args(["completions", shell]), Duration::from_secs(30));
        assert!(status.success(), "{binary} completions {shell}: {stderr}");
        assert!(stdout.contains(marker), "{binary} {shell}: no {marker:?}");
        assert!(stdout.contains("top") || binary == "mlxd", "subcommands are completed");
        assert!(stdout.contains("install") || binary == "mlxctl");
    }
}

/// No systemd runs in the test environment, so `systemctl` here is a stand-in on PATH that
/// records its arguments: this checks what `mlxd install` asks the service manager to do,
/// in order, not systemd itself (the units themselves are checked by systemd-analyze).
#[test]
fn install_and_uninstall_drive_systemctl_for_socket_activation() {
    let dir = TempDir::new();
    let fake_bin = dir.join("bin");
    std::fs::create_dir_all(&fake_bin).unwrap();
    let calls = dir.join("calls");
    let script = format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display());
    std::fs::write(fake_bin.join("systemctl"), script).unwrap();
    std::fs::set_permissions(fake_bin.join("systemctl"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", fake_bin.display(), std::env::var("PATH").unwrap_or_default());
    let config = dir.join("config");
    let run = |args: &[&str]| {
        let (status, stdout, stderr) = run_with_timeout(
            Command::new(bin("mlxd")).args(args).env("PATH", &path).env("XDG_CONFIG_HOME", &config),
            Duration::from_secs(60),
        );
        assert!(status.success(), "mlxd {args:?}: {stdout}{stderr}");
        stdout
    };
    let venv = repo_root().join(".venv");
    let out = run(&["install", "--user", "--python", venv.to_str().unwrap()]);
    assert!(config.join("systemd/user/mlxd.service").exists() && config.join("systemd/user/mlxd.socket").exists());
    assert!(out.contains("ran systemctl --user enable --now mlxd.socket"), "{out}");
    let recorded = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        recorded.lines().collect::<Vec<_>>(),
        ["--user daemon-reload", "--user enable --now mlxd.socket", "--user try-restart mlxd.service"]
    );
    std::fs::remove_file(&calls).unwrap();
    run(&["uninstall", "--user"]);
    let recorded = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        recorded.lines().collect::<Vec<_>>(),
        ["--user disable --now mlxd.socket mlxd.service", "--user daemon-reload"]
    );
    assert!(!config.join("systemd/user/mlxd.service").exists());
}
