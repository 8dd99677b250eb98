//! systemd's readiness protocol (`Type=notify`): `READY=1` once the socket is served,
//! `STATUS=` lines as models load and unload, `STOPPING=1` at shutdown. A no-op unless
//! systemd set `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).

use std::os::unix::net::UnixDatagram;

/// Sends one notification (`KEY=VALUE` lines); failures are logged at debug, never fatal.
pub fn send(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(err) = send_to(&target, state) {
        tracing::debug!(%err, "sd_notify failed");
    }
}

fn send_to(target: &std::ffi::OsStr, state: &str) -> std::io::Result<usize> {
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target);
    match bytes.first() {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            socket.send_to_addr(state.as_bytes(), &addr)
        }
        Some(b'/') => socket.send_to(state.as_bytes(), target),
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is neither a path nor @name")),
    }
}

/// The daemon serves its socket.
pub fn ready(endpoint: &str) {
    send(&format!("READY=1\nSTATUS=serving {endpoint}\nMAINPID={}", std::process::id()));
}

/// A line for `systemctl status`.
pub fn status(line: &str) {
    send(&format!("STATUS={line}"));
}

pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining requests and stopping workers");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("mlxd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("mlxd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(std::ffi::OsStr::new(&format!("@{name}")), "STATUS=x").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=x");
    }
}
