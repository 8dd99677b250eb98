//! Fuzzes request handling: a real daemon session (`mlxd::server::session::run`: the
//! handshake, framing, per-session admission and limits, dispatch of every request family,
//! cancels and credits) fed a valid Hello and then arbitrary bytes over an in-memory
//! stream. The daemon has no models, so nothing starts a worker; every input must end
//! with the session closing, the task finishing, and no panic.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 PYO3_PYTHON=$PWD/../.venv/bin/python cargo fuzz run sessions -- -max_total_time=60`

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mlxd::catalog::Catalog;
use mlxd::config::DaemonConfig;
use mlxd::core::Peer;
use mlxd::server::session;
use mlxd::server::Daemon;
use mlxd_proto::frame::encode_frame;
use mlxd_proto::{ClientMessage, Hello, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct World {
    runtime: tokio::runtime::Runtime,
    daemon: Arc<Daemon>,
    hello: Vec<u8>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // No models: nothing starts a worker.
        let mut config = DaemonConfig::for_tests();
        config.max_connections = 8;
        config.max_streams_per_session = 4;
        config.max_connections_per_uid = 8;
        config.stream_pause_limit = Duration::from_secs(1);
        config.frame_read_timeout = Duration::from_secs(1);
        config.drain_timeout = Duration::from_secs(1);
        config.max_loaded_models = 1;
        config.store = std::env::temp_dir().join("mlxd-fuzz-store");
        let daemon = runtime.block_on(async { Daemon::new(config, Catalog::default(), "fuzz".into()) });
        let mut hello = Vec::new();
        let message = ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "fuzz".into(),
            pid: 1,
            max_frame_len: 1 << 20,
        });
        encode_frame(&message, 1 << 20, &mut hello).unwrap();
        World { runtime, daemon, hello }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let world = world();
    world.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (server_read, server_write) = tokio::io::split(server);
        let stop = CancellationToken::new();
        let session = tokio::spawn(session::run(world.daemon.clone(), server_read, server_write, Peer::of_self(), stop.clone()));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let writer = async {
            let _ = client_write.write_all(&world.hello).await;
            let _ = client_write.write_all(data).await;
            let _ = client_write.shutdown().await;
        };
        let reader = async {
            let mut sink = vec![0u8; 1 << 16];
            while let Ok(n) = client_read.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let both = async { tokio::join!(writer, reader) };
        if tokio::time::timeout(Duration::from_secs(5), both).await.is_err() {
            stop.cancel();
        }
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("a session did not end after its client closed")
            .expect("the session task panicked");
    });
});
