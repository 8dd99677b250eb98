//! Writes and checks the language-neutral conformance vectors
//! (`proto/conformance/vectors.json`) that every client's test suite decodes and re-encodes.
//!
//! Each vector pairs a message's JSON form (serde's externally tagged form, exactly as
//! `serde_json` writes the Rust types: a unit variant is a string, any other variant an
//! object with one key; `Option::None` is `null`; stop strings are arrays of bytes) with its
//! frame body in hex (no length prefix: every frame is a big-endian u32 length, then the
//! body). `varints` pins the integer encoding at every boundary, with values as decimal
//! strings so 64-bit values survive JSON parsers that use doubles. `invalid` lists bodies a
//! decoder must refuse.
//!
//! The file is checked in. If this test fails because a message changed on purpose, bump
//! PROTOCOL_VERSION, update PROTOCOL.md, and rewrite the file with
//! `MLXD_BLESS=1 cargo test -p mlxd-proto --test conformance`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use mlxd_proto::frame::{decode_body, encode_body};
use mlxd_proto::*;
use serde_json::{json, Value};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn vector<T>(name: &str, direction: &str, message: &T) -> Value
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let body = encode_body(message).unwrap();
    // The vector is only worth checking in if it round-trips here.
    assert_eq!(&decode_body::<T>(&body).unwrap(), message, "{name} does not round-trip");
    json!({ "name": name, "direction": direction, "message": message, "body": hex(&body) })
}

fn client(name: &str, message: ClientMessage) -> Value {
    vector(name, "client", &message)
}

fn server(name: &str, message: ServerMessage) -> Value {
    vector(name, "server", &message)
}

fn request(id: u64, body: Request) -> ClientMessage {
    ClientMessage::Request { id, body }
}

fn respond(id: u64, body: Response) -> ServerMessage {
    ServerMessage::Response { id, body }
}

fn model_info(name: &str, kind: ModelKind, state: ModelState) -> ModelInfo {
    ModelInfo {
        name: name.into(),
        kind,
        state,
        source: "/var/lib/mlxd/models/minilm".into(),
        leases: 2,
        in_flight: 1,
        queue_depth: 3,
        queue_capacity: 64,
        resident_bytes: 90_868_736,
        dim: 384,
        max_seq_len: 512,
        idle_ms: Some(1500),
        keep_alive_left_ms: None,
        backend: "cpu".into(),
        worker_pid: Some(4242),
        last_error: None,
        sched: SchedStats {
            queued: 3,
            running: 1,
            slots: 8,
            admitted: 1000,
            busy: 7,
            shed: 1,
            timeouts: 2,
            single_stream: 0,
            batches: 120,
            batched_requests: 990,
            service_us: 1834,
        },
        prompts: Vec::new(),
        default_prompt: None,
        estimated_bytes: 90_868_736,
        tools: kind == ModelKind::Generation,
    }
}

fn generate_raw() -> GenerateRequest {
    GenerateRequest {
        model: ModelRef::Name("smollm2".into()),
        input: PromptInput::Raw("Answer:".into()),
        params: params(),
        initial_credit: 16,
        priority: Priority::Interactive,
        deadline_ms: None,
    }
}

fn params() -> GenerateParams {
    GenerateParams {
        max_tokens: 64,
        temperature: 0.0,
        top_p: 0.95,
        top_k: 40,
        min_p: 0.05,
        repetition_penalty: 1.1,
        seed: Some(1234),
        stop: vec![b"\n\n".to_vec(), "Ende ü".as_bytes().to_vec()],
        logprobs: Some(5),
        constraint: Some(Constraint::JsonSchema(r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#.into())),
        tools: Vec::new(),
        tool_choice: ToolChoice::Auto,
        parallel_tool_calls: true,
    }
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: "The weather in a city now.".into(),
        parameters: r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#.into(),
    }
}

fn weather_call() -> ToolCall {
    ToolCall {
        id: "call_0123456789abcdef01234567".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Oslo"}"#.into(),
    }
}

fn messages() -> Vec<Value> {
    let mut v = vec![
        client(
            "hello",
            ClientMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name: "my-indexer".into(),
                pid: 31337,
                max_frame_len: 16 * 1024 * 1024,
            }),
        ),
        client(
            "hello_unicode_name_pid_0",
            ClientMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name: "índice 🚀".into(),
                pid: 0,
                max_frame_len: 65_536,
            }),
        ),
        client("request_ping", request(0, Request::Ping)),
        client("request_status", request(1, Request::Status)),
        client("request_list_models", request(250, Request::ListModels)),
        client(
            "request_lease_default_keep_alive",
            request(251, Request::Lease(LeaseRequest { model: "minilm".into(), keep_alive_ms: None })),
        ),
        client(
            "request_lease_keep_forever",
            request(65_535, Request::Lease(LeaseRequest { model: "minilm".into(), keep_alive_ms: Some(-1) })),
        ),
        client(
            "request_lease_keep_alive_5m",
            request(65_536, Request::Lease(LeaseRequest { model: "smollm2".into(), keep_alive_ms: Some(300_000) })),
        ),
        client("request_release", request(7, Request::Release { lease: 3 })),
        client(
            "request_embed_by_name",
            request(
                8,
                Request::Embed(EmbedRequest {
                    model: ModelRef::Name("minilm".into()),
                    texts: vec!["hello world".into(), String::new(), "naïve café — 東京".into()],
                    normalize: true,
                    priority: Priority::Interactive,
                    deadline_ms: None,
                    prompt: None,
                }),
            ),
        ),
        client(
            "request_embed_by_lease_batch_deadline",
            request(
                9,
                Request::Embed(EmbedRequest {
                    model: ModelRef::Lease(1),
                    texts: vec!["x".repeat(300)],
                    normalize: false,
                    priority: Priority::Batch,
                    deadline_ms: Some(2_000),
                    prompt: Some("query".into()),
                }),
            ),
        ),
        client(
            "request_embed_without_prompt",
            request(
                19,
                Request::Embed(EmbedRequest {
                    model: ModelRef::Name("e5".into()),
                    texts: vec!["passage text".into()],
                    normalize: true,
                    priority: Priority::Interactive,
                    deadline_ms: None,
                    prompt: Some(String::new()),
                }),
            ),
        ),
        client(
            "request_rerank",
            request(
                20,
                Request::Rerank(RerankRequest {
                    model: ModelRef::Name("bge-reranker".into()),
                    query: "what is a panda?".into(),
                    documents: vec!["hi".into(), "The giant panda is a bear native to China.".into(), String::new()],
                    top_n: Some(2),
                    priority: Priority::Interactive,
                    deadline_ms: Some(5_000),
                }),
            ),
        ),
        client(
            "request_rerank_by_lease_all",
            request(
                21,
                Request::Rerank(RerankRequest {
                    model: ModelRef::Lease(9_007_199_254_740_991),
                    query: String::new(),
                    documents: Vec::new(),
                    top_n: None,
                    priority: Priority::Batch,
                    deadline_ms: None,
                }),
            ),
        ),
        client(
            "request_generate_raw",
            request(
                10,
                Request::Generate(GenerateRequest {
                    model: ModelRef::Name("smollm2".into()),
                    input: PromptInput::Raw("Once upon a time".into()),
                    params: GenerateParams::default(),
                    initial_credit: 16,
                    priority: Priority::Interactive,
                    deadline_ms: None,
                }),
            ),
        ),
        client(
            "request_generate_chat_all_params",
            request(
                11,
                Request::Generate(GenerateRequest {
                    model: ModelRef::Lease(2),
                    input: PromptInput::Chat(vec![
                        ChatMessage::new("system", "Be brief."),
                        ChatMessage::new("user", "What is 2+2?"),
                        ChatMessage::new("assistant", "4"),
                        ChatMessage::new("user", "And 3+3?"),
                    ]),
                    params: params(),
                    initial_credit: 0,
                    priority: Priority::Batch,
                    deadline_ms: Some(30_000),
                }),
            ),
        ),
        client(
            "request_generate_tools_round_trip",
            request(
                25,
                Request::Generate(GenerateRequest {
                    model: ModelRef::Name("qwen".into()),
                    input: PromptInput::Chat(vec![
                        ChatMessage::new("user", "Weather in Oslo?"),
                        ChatMessage { tool_calls: vec![weather_call()], ..ChatMessage::new("assistant", "") },
                        ChatMessage {
                            tool_call_id: Some(weather_call().id),
                            name: Some("get_weather".into()),
                            ..ChatMessage::new("tool", r#"{"celsius":-3}"#)
                        },
                    ]),
                    params: GenerateParams {
                        constraint: None,
                        tools: vec![weather_tool()],
                        tool_choice: ToolChoice::Auto,
                        ..params()
                    },
                    initial_credit: 64,
                    priority: Priority::Interactive,
                    deadline_ms: None,
                }),
            ),
        ),
    ];
    for (i, (choice, parallel)) in
        [(ToolChoice::None, true), (ToolChoice::Required, false), (ToolChoice::Function("get_weather".into()), true)]
            .into_iter()
            .enumerate()
    {
        let name = match &choice {
            ToolChoice::Function(_) => "function".to_owned(),
            other => format!("{other:?}").to_lowercase(),
        };
        v.push(client(
            &format!("request_generate_tool_choice_{name}"),
            request(
                26 + i as u64,
                Request::Generate(GenerateRequest {
                    input: PromptInput::Chat(vec![ChatMessage::new("user", "Weather in Oslo?")]),
                    params: GenerateParams {
                        constraint: None,
                        tools: vec![weather_tool()],
                        tool_choice: choice,
                        parallel_tool_calls: parallel,
                        ..params()
                    },
                    ..generate_raw()
                }),
            ),
        ));
    }
    v.extend([
        client(
            "request_generate_constraint_json_object",
            request(
                22,
                Request::Generate(GenerateRequest {
                    params: GenerateParams { constraint: Some(Constraint::JsonObject), ..params() },
                    ..generate_raw()
                }),
            ),
        ),
        client(
            "request_generate_constraint_regex",
            request(
                23,
                Request::Generate(GenerateRequest {
                    params: GenerateParams { constraint: Some(Constraint::Regex(r"\d{3}-\d{4}".into())), ..params() },
                    ..generate_raw()
                }),
            ),
        ),
        client(
            "request_generate_constraint_lark",
            request(
                24,
                Request::Generate(GenerateRequest {
                    params: GenerateParams {
                        constraint: Some(Constraint::Lark("start: \"yes\" | \"no\"".into())),
                        ..params()
                    },
                    ..generate_raw()
                }),
            ),
        ),
        client(
            "request_tokenize",
            request(
                12,
                Request::Tokenize {
                    model: ModelRef::Name("smollm2".into()),
                    text: "Hi!".into(),
                    add_special_tokens: true,
                },
            ),
        ),
        client(
            "request_detokenize",
            request(
                13,
                Request::Detokenize { model: ModelRef::Lease(2), tokens: vec![0, 1, 250, 251, 65_535, 65_536, 49_151] },
            ),
        ),
        client("request_load", request(14, Request::Load { model: "minilm".into() })),
        client("request_unload", request(15, Request::Unload { model: "minilm".into(), force: false })),
        client("request_unload_force", request(16, Request::Unload { model: "smollm2".into(), force: true })),
        client("request_weights", request(17, Request::Weights)),
        client("request_metrics", request(18, Request::Metrics)),
        client("cancel", ClientMessage::Cancel { id: 11 }),
        client("credit", ClientMessage::Credit { id: 11, events: 32 }),
        client("credit_large", ClientMessage::Credit { id: 9_007_199_254_740_991, events: u32::MAX }),
        server(
            "welcome",
            ServerMessage::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                daemon_version: "0.1.0".into(),
                session_id: 42,
                limits: Limits {
                    max_frame_len: 16 * 1024 * 1024,
                    max_texts_per_embed: 256,
                    max_text_bytes: 65_536,
                    max_in_flight: 64,
                    max_leases: 32,
                    max_tokens: 4096,
                },
            }),
        ),
        server("response_pong", respond(0, Response::Pong)),
        server(
            "response_status",
            respond(
                1,
                Response::Status(DaemonStatus {
                    daemon_version: "0.1.0".into(),
                    protocol_version: PROTOCOL_VERSION,
                    pid: 1234,
                    uptime_ms: 86_400_000,
                    endpoint: "/run/user/1000/mlxd/mlxd.sock".into(),
                    sessions: 3,
                    models: vec![
                        model_info("minilm", ModelKind::Embedding, ModelState::Ready),
                        ModelInfo {
                            idle_ms: None,
                            keep_alive_left_ms: Some(299_000),
                            worker_pid: None,
                            last_error: Some("worker exited with status 1".into()),
                            sched: SchedStats::default(),
                            ..model_info("smollm2", ModelKind::Generation, ModelState::Failed)
                        },
                    ],
                }),
            ),
        ),
        server(
            "response_models",
            respond(
                2,
                Response::Models(vec![
                    model_info("a", ModelKind::Embedding, ModelState::Unloaded),
                    model_info("b", ModelKind::Generation, ModelState::Loading),
                    model_info("c", ModelKind::Generation, ModelState::Unloading),
                    ModelInfo {
                        prompts: vec!["document".into(), "query".into()],
                        default_prompt: Some("query".into()),
                        ..model_info("e5", ModelKind::Embedding, ModelState::Unloaded)
                    },
                    ModelInfo { dim: 0, ..model_info("r", ModelKind::Rerank, ModelState::Ready) },
                ]),
            ),
        ),
        server("response_models_empty", respond(3, Response::Models(Vec::new()))),
        server(
            "response_leased",
            respond(
                4,
                Response::Leased(LeaseInfo {
                    lease: 1,
                    model: model_info("minilm", ModelKind::Embedding, ModelState::Ready),
                }),
            ),
        ),
        server("response_released", respond(5, Response::Released)),
        server(
            "response_embeddings",
            respond(
                6,
                Response::Embeddings(Embeddings {
                    model: "minilm".into(),
                    count: 2,
                    dim: 3,
                    vectors: vec![0.5, -0.25, 0.1, 1.0, 0.0, -3.4028235e38],
                    prompt_tokens: 9,
                }),
            ),
        ),
        server(
            "response_generated_stop",
            respond(
                7,
                Response::Generated(GenerationSummary {
                    finish_reason: FinishReason::Stop,
                    prompt_tokens: 12,
                    completion_tokens: 30,
                    prompt_tokens_per_s: 812.5,
                    generation_tokens_per_s: 41.25,
                    cached_prompt_tokens: 8,
                }),
            ),
        ),
    ]);
    for (i, reason) in [FinishReason::Length, FinishReason::Cancelled, FinishReason::Error, FinishReason::ToolCalls]
        .into_iter()
        .enumerate()
    {
        v.push(server(
            &format!("response_generated_{}", format!("{reason:?}").to_lowercase()),
            respond(
                8 + i as u64,
                Response::Generated(GenerationSummary {
                    finish_reason: reason,
                    prompt_tokens: 5,
                    completion_tokens: if reason == FinishReason::Length { 64 } else { 0 },
                    prompt_tokens_per_s: 0.0,
                    generation_tokens_per_s: 0.0,
                    cached_prompt_tokens: 0,
                }),
            ),
        ));
    }
    v.extend([
        server("response_tokens", respond(11, Response::Tokens(vec![1, 9_906, 0, 300]))),
        server("response_text", respond(12, Response::Text("Hello, wörld\n".into()))),
        server(
            "response_loaded",
            respond(13, Response::Loaded(model_info("minilm", ModelKind::Embedding, ModelState::Ready))),
        ),
        server(
            "response_unloaded",
            respond(14, Response::Unloaded(model_info("minilm", ModelKind::Embedding, ModelState::Unloaded))),
        ),
        server(
            "response_weights",
            respond(
                15,
                Response::Weights(vec![MappedWeights {
                    path: "/var/lib/mlxd/blobs/ab12.safetensors".into(),
                    bytes: 90_868_736,
                    tensors: 101,
                    aligned: true,
                    models: vec!["minilm".into()],
                }]),
            ),
        ),
        server(
            "response_metrics",
            respond(16, Response::Metrics("# TYPE mlxd_sessions gauge\nmlxd_sessions 1\n# EOF\n".into())),
        ),
        server(
            "response_reranked",
            respond(
                20,
                Response::Reranked(Reranked {
                    model: "bge-reranker".into(),
                    results: vec![RerankResult { index: 1, score: 0.9985 }, RerankResult { index: 0, score: 1.5e-5 }],
                    prompt_tokens: 31,
                }),
            ),
        ),
        server(
            "response_reranked_empty",
            respond(21, Response::Reranked(Reranked { model: "r".into(), results: Vec::new(), prompt_tokens: 0 })),
        ),
        server(
            "event_token",
            ServerMessage::Event {
                id: 11,
                event: Event::Token { text: " upon".into(), token: Some(5_289), logprobs: None },
            },
        ),
        server(
            "event_token_held_back_text",
            ServerMessage::Event {
                id: 11,
                event: Event::Token { text: String::new(), token: Some(49_151), logprobs: None },
            },
        ),
        server(
            "event_token_flush",
            ServerMessage::Event { id: 11, event: Event::Token { text: "é".into(), token: None, logprobs: None } },
        ),
        server(
            "event_token_with_logprobs",
            ServerMessage::Event {
                id: 11,
                event: Event::Token {
                    text: " Paris".into(),
                    token: Some(7_042),
                    logprobs: Some(TokenLogprobs {
                        text: " Paris".into(),
                        logprob: -0.015_625,
                        top: vec![
                            TopLogprob { token: 7_042, text: " Paris".into(), logprob: -0.015_625 },
                            TopLogprob { token: 17, text: "\u{fffd}".into(), logprob: -4.5 },
                            TopLogprob { token: 0, text: String::new(), logprob: f32::MIN },
                        ],
                    }),
                },
            },
        ),
        server(
            "event_token_with_logprobs_no_alternatives",
            ServerMessage::Event {
                id: 12,
                event: Event::Token {
                    text: "東".into(),
                    token: Some(1),
                    logprobs: Some(TokenLogprobs { text: "東".into(), logprob: 0.0, top: Vec::new() }),
                },
            },
        ),
    ]);
    v.push(server("event_tool_call", ServerMessage::Event { id: 11, event: Event::ToolCall(weather_call()) }));
    for (stage, done, total) in
        [(LoadStage::Starting, 0, 0), (LoadStage::Weights, 16_777_216, 90_868_736), (LoadStage::Ready, 1, 1)]
    {
        v.push(server(
            &format!("event_load_progress_{}", format!("{stage:?}").to_lowercase()),
            ServerMessage::Event {
                id: 14,
                event: Event::LoadProgress(LoadProgress { model: "minilm".into(), stage, done, total }),
            },
        ));
    }
    let codes = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::Busy,
        ErrorCode::Loading,
        ErrorCode::WorkerFailed,
        ErrorCode::Cancelled,
        ErrorCode::Unauthorized,
        ErrorCode::TooLarge,
        ErrorCode::Shutdown,
        ErrorCode::Internal,
        ErrorCode::VersionMismatch,
        ErrorCode::NotImplemented,
        ErrorCode::InvalidLease,
        ErrorCode::Timeout,
        ErrorCode::OutOfMemory,
        ErrorCode::Unsupported,
    ];
    for (i, code) in codes.into_iter().enumerate() {
        let mut error = WireError::new(code, format!("{code}: something went wrong"));
        if matches!(code, ErrorCode::Busy | ErrorCode::Loading) {
            error = error.with_retry_after(250);
        }
        v.push(server(&format!("error_{code}"), ServerMessage::Error { id: 100 + i as u64, error }));
    }
    v.push(server(
        "fatal_version_mismatch",
        ServerMessage::Fatal(WireError::new(ErrorCode::VersionMismatch, "client speaks protocol 1, daemon 3")),
    ));
    v.push(server(
        "fatal_shutdown",
        ServerMessage::Fatal(WireError::new(ErrorCode::Shutdown, "the daemon is shutting down").with_retry_after(1000)),
    ));
    v
}

/// Unsigned LEB-free "varint" of bincode's standard configuration: < 251 is one byte;
/// 251 + u16 LE, 252 + u32 LE, 253 + u64 LE. Signed values are zigzagged first.
fn varints() -> Vec<Value> {
    let unsigned: [u64; 10] =
        [0, 1, 250, 251, 65_535, 65_536, 4_294_967_295, 4_294_967_296, 9_007_199_254_740_993, u64::MAX];
    let mut v: Vec<Value> = unsigned
        .into_iter()
        .map(|n| json!({ "type": "u64", "value": n.to_string(), "body": hex(&encode_body(&n).unwrap()) }))
        .collect();
    for n in [0_i64, -1, 1, -2, 300_000, -126, i64::MAX, i64::MIN] {
        v.push(json!({ "type": "i64", "value": n.to_string(), "body": hex(&encode_body(&n).unwrap()) }));
    }
    for n in [0_u32, 250, 251, u32::MAX] {
        v.push(json!({ "type": "u32", "value": n.to_string(), "body": hex(&encode_body(&n).unwrap()) }));
    }
    v
}

/// Bodies a decoder must refuse, each with the reason. Checked here against the Rust decoder.
fn invalid() -> Vec<Value> {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("empty_body", "client", "", "a body holds exactly one message"),
        (
            "unknown_client_variant",
            "client",
            "04",
            "ClientMessage has 4 variants (0-3); an unknown tag is never skipped",
        ),
        ("unknown_request_variant", "client", "01050d", "Request has 13 variants (0-12)"),
        ("marker_255", "client", "0105ff", "255 is never a valid varint marker (here: the Request tag)"),
        ("trailing_byte", "client", "01050000", "one byte after a complete Request::Ping"),
        ("truncated_string", "client", "0001056d6c78", "client_name declares 5 bytes, 3 follow"),
        ("invalid_utf8", "client", "000102c328fb2c01fc00000001", "strings are UTF-8"),
        (
            "non_minimal_varint_u16_marker",
            "client",
            "01fb050000",
            "id 5 written with the u16 marker: varints are minimal",
        ),
        ("non_minimal_varint_u32_marker", "client", "01fc0500000000", "id 5 written with the u32 marker"),
        ("non_minimal_varint_u64_marker", "client", "01fd050000000000000000", "id 5 written with the u64 marker"),
        (
            "marker_254",
            "client",
            "01fe0500000000000000000000000000000000",
            "254 (u128) is invalid in every field of this protocol",
        ),
        (
            "u64_value_in_a_u32_field",
            "client",
            "0301fd0000000001000000",
            "Credit.events is a u32; 2^32 needs the u64 marker",
        ),
        ("bool_out_of_range", "client", "01010a016102", "a bool is 0 or 1 (Unload.force = 2)"),
        ("option_tag_out_of_range", "client", "010103016102", "an Option is 0 (None) or 1 then the value"),
        ("unknown_server_variant", "server", "05", "ServerMessage has 5 variants (0-4)"),
        ("unknown_error_code", "server", "0300100000", "ErrorCode has 16 variants (0-15)"),
    ];
    cases
        .iter()
        .map(|(name, direction, body, why)| json!({ "name": name, "direction": direction, "body": body, "why": why }))
        .collect()
}

fn document() -> Value {
    json!({
        "about": "mlxd protocol conformance vectors, generated by proto/tests/conformance.rs; see proto/PROTOCOL.md. \
                  body = one frame body in hex, without the 4-byte big-endian length prefix. \
                  message = serde's externally tagged JSON of the Rust type (unit variants as strings).",
        "protocol_version": PROTOCOL_VERSION,
        "messages": messages(),
        "varints": varints(),
        "invalid": invalid(),
    })
}

#[test]
fn invalid_bodies_are_refused_by_the_rust_decoder() {
    for case in invalid() {
        let body = unhex(case["body"].as_str().unwrap());
        let refused = match case["direction"].as_str().unwrap() {
            "client" => decode_body::<ClientMessage>(&body).is_err(),
            _ => decode_body::<ServerMessage>(&body).is_err(),
        };
        assert!(refused, "{} was accepted: {}", case["name"], case["why"]);
    }
}

#[test]
fn the_checked_in_vectors_match_the_protocol() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/vectors.json");
    let text = serde_json::to_string_pretty(&document()).unwrap() + "\n";
    if std::env::var_os("MLXD_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "{} is out of date: if the protocol changed on purpose, bump PROTOCOL_VERSION, update PROTOCOL.md and run \
         MLXD_BLESS=1 cargo test -p mlxd-proto --test conformance",
        path.display()
    );
}
