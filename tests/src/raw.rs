//! Speaking the protocol byte by byte, for tests that must do what a well-behaved client
//! never would (forged frames, reused ids, half-sent frames) or act as another user.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mlxd_proto::frame::{body_len, decode_body, encode_frame, ABSOLUTE_MAX_FRAME_LEN, PREFIX_LEN};
use mlxd_proto::{ClientMessage, Hello, Request, RequestId, ServerMessage, PROTOCOL_VERSION};

/// One whole frame (prefix and body) for `message`.
pub fn frame(message: &ClientMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(message, ABSOLUTE_MAX_FRAME_LEN, &mut out).expect("encode a frame");
    out
}

pub fn hello(client_name: &str) -> ClientMessage {
    ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: client_name.into(),
        pid: std::process::id(),
        max_frame_len: mlxd_proto::frame::DEFAULT_MAX_FRAME_LEN,
    })
}

pub fn request(id: RequestId, body: Request) -> Vec<u8> {
    frame(&ClientMessage::Request { id, body })
}

/// A blocking connection that sends bytes as given and reads frames.
#[derive(Debug)]
pub struct Raw {
    pub stream: UnixStream,
}

impl Raw {
    /// Connects and completes the handshake.
    pub fn connect(socket: &Path, client_name: &str) -> Raw {
        let stream = UnixStream::connect(socket).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut raw = Raw { stream };
        raw.send(&frame(&hello(client_name)));
        match raw.read() {
            Some(ServerMessage::Welcome(_)) => raw,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next frame, or `None` when the daemon closed the connection (or the read
    /// timed out).
    pub fn read(&mut self) -> Option<ServerMessage> {
        let mut prefix = [0u8; PREFIX_LEN];
        self.stream.read_exact(&mut prefix).ok()?;
        let len = body_len(&prefix, ABSOLUTE_MAX_FRAME_LEN).expect("length").expect("prefix");
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).ok()?;
        Some(decode_body(&body).expect("a frame from the daemon decodes"))
    }

    /// Frames until the final one (`Response` or `Error`) of request `id`; panics on a
    /// `Fatal` or a closed connection.
    pub fn until_final(&mut self, id: RequestId) -> (Vec<ServerMessage>, ServerMessage) {
        let mut events = Vec::new();
        loop {
            match self.read() {
                Some(
                    final_frame @ (ServerMessage::Response { id: got, .. } | ServerMessage::Error { id: got, .. }),
                ) if got == id => return (events, final_frame),
                Some(other) => events.push(other),
                None => panic!("the connection closed before request {id} was answered; after {events:?}"),
            }
        }
    }
}

/// Runs a client as another user (`setpriv`, no supplementary groups but `groups`): it
/// connects to `socket`, sends the first of `frames` (a Hello) and the second, then each
/// next one after a final frame (`Response`, `Error`, `Fatal`) arrives, and returns every
/// frame the daemon sends until `finals` final frames have arrived, the daemon closes, or
/// `timeout` passes. The client is the
/// system's `python3` with the socket module: nothing of ours runs as that user.
pub fn exchange_as(
    uid: u32,
    gid: u32,
    groups: &[u32],
    socket: &Path,
    frames: &[Vec<u8>],
    finals: usize,
    timeout: Duration,
) -> Vec<ServerMessage> {
    let groups_arg = if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        format!("--groups={}", groups.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
    };
    let output = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups_arg)
        .args(["--", "/usr/bin/python3", "-c", EXCHANGE_PY])
        .arg(socket)
        .arg(finals.to_string())
        .arg(timeout.as_secs_f64().to_string())
        .args(frames.iter().map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        .output()
        .expect("run python3 as another user");
    assert!(output.status.success(), "the client as uid {uid} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .expect("hex")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|hex| {
            let body: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
            decode_body(&body).expect("a frame from the daemon decodes")
        })
        .collect()
}

const EXCHANGE_PY: &str = r#"
import socket, struct, sys, time
path, finals, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
frames = [bytes.fromhex(frame) for frame in sys.argv[4:]]
for frame in frames[:2]:
    s.sendall(frame)
pending = frames[2:]
deadline, buf, seen = time.monotonic() + timeout, b"", 0
while seen < finals and time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        chunk = s.recv(1 << 16)
    except socket.timeout:
        break
    if not chunk:
        break
    buf += chunk
    while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
        n = struct.unpack(">I", buf[:4])[0]
        body, buf = buf[4:4 + n], buf[4 + n:]
        print(body.hex(), flush=True)
        if body[0] in (1, 3, 4):  # Response, Error, Fatal
            seen += 1
            if pending:
                s.sendall(pending.pop(0))
"#;

/// VmHWM (the peak resident set) of a process in KiB, from /proc (Linux).
pub fn peak_rss_kib(pid: u32) -> u64 {
    crate::proc_status_kib(pid, "VmHWM:")
}
