//! `mlxctl top` and `mlxctl load` in a real terminal: each runs in a detached tmux session
//! and the screen is read back with `tmux capture-pane`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mlxd_tests::{bin, run_with_timeout, Daemon};

/// A tmux server of the test's own (its socket in the daemon's temp dir).
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        Tmux { socket: dir.join("tmux.sock") }
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let (status, stdout, stderr) = run_with_timeout(
            Command::new("tmux").arg("-S").arg(&self.socket).args(args).env_remove("TMUX"),
            Duration::from_secs(20),
        );
        (status.success(), stdout + &stderr)
    }

    /// Starts `command` in a new 120x30 session named `name`.
    fn start(&self, name: &str, command: &str) {
        let (ok, out) = self.run(&["new-session", "-d", "-x", "120", "-y", "30", "-s", name, command]);
        assert!(ok, "tmux new-session: {out}");
    }

    fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name]).1
    }

    fn alive(&self, name: &str) -> bool {
        self.run(&["has-session", "-t", name]).0
    }

    /// Screens captured every 30 ms until `done` holds for one, or `timeout`.
    fn watch(&self, name: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut frames: Vec<String> = Vec::new();
        loop {
            let screen = self.screen(name);
            let finished = done(&screen);
            if frames.last() != Some(&screen) {
                frames.push(screen);
            }
            if finished {
                return frames;
            }
            assert!(Instant::now() < deadline, "timed out; last screens:\n{}", frames.join("\n-----\n"));
            std::thread::sleep(Duration::from_millis(30));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn mlxctl_command(daemon: &Daemon, args: &str) -> String {
    format!("{} --socket {} --no-fallback {args}", bin("mlxctl").display(), daemon.socket.display())
}

#[test]
fn top_refreshes_the_status_table_live_and_quits_on_ctrl_c() {
    let daemon = Daemon::start(&[]);
    let tmux = Tmux::new(&daemon.dir.0);
    tmux.start("top", &mlxctl_command(&daemon, "top --interval 0.3"));
    let first = tmux.watch("top", Duration::from_secs(20), |s| s.contains("MODEL") && s.contains("REQ/S"));
    let screen = first.last().unwrap();
    assert!(screen.contains("mlxctl top: every 0.3 s") && screen.contains("minilm") && screen.contains("smollm2"));
    assert!(screen.contains(&format!("at {}", daemon.socket.display())), "{screen}");

    // Work shows up on the next refreshes: minilm turns ready with a worker's memory.
    let (status, _, stderr) = run_with_timeout(
        Command::new(bin("mlxctl")).arg("--socket").arg(&daemon.socket).args([
            "--no-fallback",
            "embed",
            "-m",
            "minilm",
            "hello",
        ]),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let frames = tmux.watch("top", Duration::from_secs(20), |s| {
        s.lines().any(|l| l.starts_with("minilm") && l.contains("ready") && l.contains("MiB"))
    });
    let screen = frames.last().unwrap();
    assert!(screen.contains("1 admitted, 0 busy"), "{screen}");

    tmux.run(&["send-keys", "-t", "top", "C-c"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive("top") {
        assert!(Instant::now() < deadline, "top did not quit on Ctrl-C:\n{}", tmux.screen("top"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn load_shows_a_progress_bar_fed_by_the_daemons_load_progress() {
    let daemon = Daemon::start(&[]);
    let tmux = Tmux::new(&daemon.dir.0);
    // The pane stays after mlxctl exits so its last words can be read.
    tmux.start("load", &format!("{}; sleep 60", mlxctl_command(&daemon, "load smollm2")));
    let frames = tmux.watch("load", Duration::from_secs(120), |s| s.contains("smollm2 is ready"));
    let bar = frames
        .iter()
        .find(|f| f.contains("smollm2: loading weights [") && f.contains("MiB/"))
        .unwrap_or_else(|| panic!("no progress bar among the screens:\n{}", frames.join("\n-----\n")));
    assert!(bar.contains('=') || bar.contains('>'), "{bar}");
    let last = frames.last().unwrap();
    assert!(!last.contains("loading weights"), "the bar is cleared when done:\n{last}");
}
