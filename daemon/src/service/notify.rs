//! systemd's readiness protocol (`Type=notify`): `READY=1` once the socket is served,
//! `STATUS=` lines as models load and unload, `STOPPING=1` at shutdown. A no-op unless
//! systemd set `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! The messages and the send to a path socket are the `sd-notify` crate's. It connects to
//! `NOTIFY_SOCKET` as a file path only, so `@name` (Linux's abstract namespace, which
//! `sd_notify(3)` accepts and systemd uses in some setups, e.g. containers) would fail with
//! "no such file"; that one case is sent here, with the same message the crate builds.

use sd_notify::NotifyState;

/// Sends one notification; failures are logged at debug, never fatal.
fn send(states: &[NotifyState]) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let result = match std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()).split_first() {
        Some((b'@', name)) => send_abstract(name, states),
        _ => sd_notify::notify(states),
    };
    if let Err(err) = result {
        tracing::debug!(%err, "sd_notify failed");
    }
}

/// The message `sd_notify::notify` sends: one `KEY=VALUE` line per state.
fn message(states: &[NotifyState]) -> String {
    states.iter().map(|state| format!("{state}\n")).collect()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(name: &[u8], states: &[NotifyState]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.send_to_addr(message(states).as_bytes(), &addr).map(drop)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_name: &[u8], _states: &[NotifyState]) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "abstract sockets are Linux-only"))
}

/// The daemon serves its socket.
pub fn ready(endpoint: &str) {
    let status = format!("serving {endpoint}");
    send(&[NotifyState::Ready, NotifyState::Status(&status), NotifyState::MainPid(std::process::id())]);
}

/// A line for `systemctl status`.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining requests and stopping workers")]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// `send` reads `NOTIFY_SOCKET`; the tests that set it take turns.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn send_with(target: &std::ffi::OsStr, states: &[NotifyState]) {
        let _turn = ENV.lock().unwrap_or_else(|p| p.into_inner());
        std::env::set_var("NOTIFY_SOCKET", target);
        send(states);
        std::env::remove_var("NOTIFY_SOCKET");
    }

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("mlxd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_nonblocking(true).unwrap();
        send_with(path.as_os_str(), &[NotifyState::Ready]);
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("mlxd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        receiver.set_nonblocking(true).unwrap();
        send_with(std::ffi::OsStr::new(&format!("@{name}")), &[NotifyState::Status("x"), NotifyState::Stopping]);
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=x\nSTOPPING=1\n");
    }
}
