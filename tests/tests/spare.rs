//! The spare worker: a load adopts it (its pid becomes the model's worker), a new spare is
//! started afterwards, a spare that dies is replaced, and none outlives the daemon.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::time::Duration;

use mlxd_tests::{eventually, model_named, Daemon};

/// The pids of every spare the daemon logged as ready (imports done), in order; a load
/// adopts only a ready spare.
fn spares_started(daemon: &Daemon) -> Vec<u32> {
    daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("spare worker ready"))
        .filter_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is dead too: only a process that is not reaped-and-gone and not a zombie counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_adopts_the_spare_which_is_replaced_and_none_outlives_the_daemon() {
    let mut daemon = Daemon::start(&["--spare-workers", "1"]);
    assert!(eventually(Duration::from_secs(60), || !spares_started(&daemon).is_empty()), "{}", daemon.log_text());
    let first = spares_started(&daemon)[0];
    assert!(cmdline(first).contains("worker --spare"), "{}", cmdline(first));
    assert!(daemon.log_text().contains(&format!("spare worker started pid={first}")));

    // The first load adopts it: the model's worker is the spare's process.
    let client = daemon.client().await;
    let embeddings = client.embed("minilm", vec!["hello world".into()]).await.unwrap();
    assert_eq!(embeddings.dim, 384);
    let status = client.status().await.unwrap();
    assert_eq!(model_named(&status.models, "minilm").worker_pid, Some(first), "{}", daemon.log_text());
    assert!(daemon.log_text().contains("adopting the spare worker"), "{}", daemon.log_text());

    // A new spare is started once that load is done.
    assert!(eventually(Duration::from_secs(30), || spares_started(&daemon).len() >= 2), "{}", daemon.log_text());
    let second = spares_started(&daemon)[1];
    assert_ne!(second, first);
    assert!(alive(second));

    // A spare that dies is replaced.
    // SAFETY: kill(2) on a process this test's daemon started.
    unsafe { libc::kill(second as i32, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(30), || spares_started(&daemon).len() >= 3), "{}", daemon.log_text());
    let third = spares_started(&daemon)[2];
    assert!(daemon.log_text().contains("the spare worker was killed by signal 9"), "{}", daemon.log_text());

    // The next load adopts the replacement.
    let out = client.tokenize(mlxd_client::proto::ModelRef::Name("smollm2".into()), "Hello").await.unwrap();
    assert!(!out.is_empty());
    let status = client.status().await.unwrap();
    assert_eq!(model_named(&status.models, "smollm2").worker_pid, Some(third), "{}", daemon.log_text());
    assert!(eventually(Duration::from_secs(30), || spares_started(&daemon).len() >= 4), "{}", daemon.log_text());
    let fourth = spares_started(&daemon)[3];

    // No worker, spare or not, outlives the daemon.
    drop(client);
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    assert!(
        eventually(Duration::from_secs(5), || ![first, third, fourth].iter().any(|&pid| alive(pid))),
        "a worker outlived the daemon"
    );
}
