//! Garbage, truncated frames, absurd lengths and wrong versions: each ends only its own
//! connection (with a clear error where one can be sent), the daemon keeps serving, and
//! its memory does not jump, because lengths are refused before anything is allocated.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mlxd_client::proto::frame::{body_len, decode_body, encode_frame, PREFIX_LEN};
use mlxd_client::proto::{ClientMessage, ErrorCode, Hello, ServerMessage, WireError, PROTOCOL_VERSION};
use mlxd_tests::{cosine, minilm_reference, rss_kib, Daemon};

fn connect(daemon: &Daemon) -> UnixStream {
    let stream = UnixStream::connect(&daemon.socket).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream
}

/// Reads frames until EOF; returns the Fatal error if one came. Panics on a timeout:
/// the daemon must close a connection it refuses.
fn read_until_closed(stream: &mut UnixStream) -> Option<WireError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(err) => panic!("the daemon neither answered nor closed the connection: {err}"),
        }
    }
    let mut fatal = None;
    let mut rest = &buf[..];
    while let Ok(Some(len)) = body_len(rest, 1 << 24) {
        if rest.len() < PREFIX_LEN + len {
            break;
        }
        if let Ok(ServerMessage::Fatal(err)) = decode_body(&rest[PREFIX_LEN..PREFIX_LEN + len]) {
            fatal = Some(err);
        }
        rest = &rest[PREFIX_LEN + len..];
    }
    fatal
}

fn frame(message: &ClientMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(message, 1 << 20, &mut out).unwrap();
    out
}

fn hello(version: u32) -> Vec<u8> {
    frame(&ClientMessage::Hello(Hello {
        protocol_version: version,
        client_name: "hostile".into(),
        pid: std::process::id(),
        max_frame_len: 1 << 20,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_end_only_their_connection() {
    let daemon = Daemon::start(&[]);
    let good = daemon.client().await;
    let reference = minilm_reference();
    let check_good_client = || async {
        let e = good.embed("minilm", vec![reference[0].text.clone()]).await.expect("good client still served");
        assert!(cosine(&e.vectors, &reference[0].embedding) >= 0.999);
    };
    check_good_client().await;
    let rss_before = rss_kib(daemon.pid());

    // Garbage instead of a Hello.
    let mut s = connect(&daemon);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let err = read_until_closed(&mut s).expect("an error frame for garbage");
    assert!(matches!(err.code, ErrorCode::BadRequest | ErrorCode::TooLarge), "{err}");

    // A 4 GiB length prefix, before and after the handshake.
    let mut s = connect(&daemon);
    s.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    let err = read_until_closed(&mut s).expect("an error frame for a 4 GiB Hello");
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");
    let mut s = connect(&daemon);
    s.write_all(&hello(PROTOCOL_VERSION)).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xf0, 1, 2, 3]).unwrap();
    let err = read_until_closed(&mut s).expect("an error frame for a 4 GiB request");
    assert_eq!(err.code, ErrorCode::TooLarge, "{err}");
    assert!(err.message.contains("4294967280"), "the error names the length: {err}");

    // A truncated frame: the prefix promises 100 bytes, 10 arrive, then the client leaves.
    let mut s = connect(&daemon);
    s.write_all(&hello(PROTOCOL_VERSION)).unwrap();
    s.write_all(&[0, 0, 0, 100]).unwrap();
    s.write_all(&[1; 10]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let err = read_until_closed(&mut s).expect("an error frame for a truncated frame");
    assert_eq!(err.code, ErrorCode::BadRequest, "{err}");

    // A well-framed body that is not a message.
    let mut s = connect(&daemon);
    s.write_all(&hello(PROTOCOL_VERSION)).unwrap();
    s.write_all(&[0, 0, 0, 3, 0xee, 0xee, 0xee]).unwrap();
    let err = read_until_closed(&mut s).expect("an error frame for an undecodable body");
    assert_eq!(err.code, ErrorCode::BadRequest, "{err}");

    // A protocol version from the future.
    let mut s = connect(&daemon);
    s.write_all(&hello(PROTOCOL_VERSION + 1)).unwrap();
    let err = read_until_closed(&mut s).expect("an error frame for a wrong version");
    assert_eq!(err.code, ErrorCode::VersionMismatch);
    assert!(
        err.message.contains(&format!("version {}", PROTOCOL_VERSION + 1))
            && err.message.contains(&format!("version {PROTOCOL_VERSION}")),
        "the error names both versions: {err}"
    );

    // A request before Hello.
    let mut s = connect(&daemon);
    s.write_all(&frame(&ClientMessage::Cancel { id: 1 })).unwrap();
    let err = read_until_closed(&mut s).expect("an error frame for a missing Hello");
    assert_eq!(err.code, ErrorCode::BadRequest);

    // Many of them at once, then check memory and the good client.
    let bursts: Vec<_> = (0..32)
        .map(|_| {
            let mut s = connect(&daemon);
            s.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
            s
        })
        .collect();
    for mut s in bursts {
        read_until_closed(&mut s);
    }
    check_good_client().await;
    let rss_after = rss_kib(daemon.pid());
    assert!(
        rss_after < rss_before + 32 * 1024,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB after hostile frames"
    );
    assert!(daemon.log_text().contains("bad frame"), "bad frames are logged");
}
