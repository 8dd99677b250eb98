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

    // Garbage instead of a Hello (not an HTTP request line: that is served as HTTP).
    let mut s = connect(&daemon);
    s.write_all(b"\x01\x02garbage\r\n\r\n").unwrap();
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

/// splitmix64: a reproducible stream of random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Up to `max` - 1 random bytes.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Valid requests to mutate (none that would run for long if a mutation kept them valid).
fn templates() -> Vec<Vec<u8>> {
    use mlxd_client::proto::{EmbedRequest, ModelRef, Priority, Request};
    let request = |id, body| frame(&ClientMessage::Request { id, body });
    vec![
        request(1, Request::Ping),
        request(2, Request::Status),
        request(3, Request::ListModels),
        request(
            4,
            Request::Embed(EmbedRequest {
                model: ModelRef::Name("minilm".into()),
                texts: vec!["a short text".into(), "another".into()],
                normalize: true,
                priority: Priority::Interactive,
                deadline_ms: Some(2000),
                prompt: None,
            }),
        ),
        request(
            5,
            Request::Tokenize {
                model: ModelRef::Name("minilm".into()),
                text: "hello".into(),
                add_special_tokens: true,
            },
        ),
        request(6, Request::Release { lease: 77 }),
        frame(&ClientMessage::Cancel { id: 4 }),
        frame(&ClientMessage::Credit { id: 4, events: 3 }),
    ]
}

fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            2 => bytes.truncate(rng.below(bytes.len() + 1)),
            3 => bytes.extend(rng.bytes(16)),
            _ if bytes.len() > PREFIX_LEN => {
                // A body with a consistent length prefix, so the mutation reaches the decoder.
                let len = (bytes.len() - PREFIX_LEN) as u32;
                bytes[..PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// Sends `bytes`, closes the write side, and reads whatever comes until the daemon closes
/// the connection (or a second passes: then this side hangs up, which cancels its work).
fn send_and_drain(daemon: &Daemon, bytes: &[u8]) {
    let mut stream = UnixStream::connect(&daemon.socket).expect("the daemon still accepts connections");
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_random_and_mutated_frames_leave_correct_embeddings() {
    let daemon = Daemon::start(&[]);
    let seed = std::env::var("MLXD_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f00d);
    eprintln!("random frames with seed {seed} (MLXD_FUZZ_SEED to repeat)");
    let mut rng = Rng(seed);
    let hello = hello(PROTOCOL_VERSION);
    let templates = templates();
    let pid = daemon.pid();
    let daemon_ref = &daemon;
    let sent = tokio::task::block_in_place(|| {
        let mut sent = 0;
        for _ in 0..2500 {
            let mut bytes = Vec::new();
            match rng.below(4) {
                // Noise from the first byte.
                0 => bytes = rng.bytes(64),
                // A valid length prefix around random bytes, before or after a Hello.
                1 => {
                    if rng.below(2) == 0 {
                        bytes.extend(&hello);
                    }
                    let body = rng.bytes(48);
                    bytes.extend((body.len() as u32).to_be_bytes());
                    bytes.extend(body);
                }
                // A mutated Hello.
                2 => bytes = mutate(&mut rng, hello.clone()),
                // A Hello, then a few requests of which some are mutated.
                _ => {
                    bytes.extend(&hello);
                    for _ in 0..=rng.below(3) {
                        let template = templates[rng.below(templates.len())].clone();
                        bytes.extend(if rng.below(3) == 0 { template } else { mutate(&mut rng, template) });
                    }
                }
            }
            send_and_drain(daemon_ref, &bytes);
            sent += 1;
        }
        sent
    });
    assert_eq!(sent, 2500);
    let log = daemon.log_text();
    let (sessions, bad) = (log.matches("session opened").count(), log.matches("bad frame").count());
    eprintln!("{sessions} sessions opened, {bad} ended on a bad frame");
    assert!(
        sessions > 500 && bad > 100,
        "the frames did not reach the decoder ({sessions} sessions, {bad} bad frames)"
    );
    // Still serving, and correctly.
    let client = daemon.client().await;
    let reference = minilm_reference();
    let texts: Vec<String> = reference.iter().map(|r| r.text.clone()).collect();
    let got = client.embed("minilm", texts).await.expect("served after the random frames");
    let dim = got.dim as usize;
    for (item, vector) in reference.iter().zip(got.vectors.chunks(dim)) {
        assert!(cosine(vector, &item.embedding) > 0.9999, "wrong vector for {:?} after random frames", item.text);
    }
    assert_eq!(client.status().await.unwrap().pid, pid, "the daemon restarted");
}
