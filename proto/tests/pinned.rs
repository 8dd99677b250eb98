//! Pins the exact wire bytes of representative messages. bincode encodes enum variants by
//! index and struct fields in order, so reordering a variant or a field changes these
//! bytes: if this test fails, the change broke protocol compatibility. Append variants
//! instead, or bump PROTOCOL_VERSION and update PROTOCOL.md together with this file.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use mlxd_proto::frame::{encode_body, encode_frame};
use mlxd_proto::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn pinned<T: serde::Serialize>(message: &T, expected: &str) {
    assert_eq!(hex(&encode_body(message).unwrap()), expected, "wire bytes changed for {}", std::any::type_name::<T>());
}

#[test]
fn hello_frame_with_prefix() {
    let hello = ClientMessage::Hello(Hello {
        protocol_version: 1,
        client_name: "ab".into(),
        pid: 300,
        max_frame_len: 16 * 1024 * 1024,
    });
    let mut frame = Vec::new();
    encode_frame(&hello, 1024, &mut frame).unwrap();
    // length 13 (big-endian u32) | variant 0 Hello | version 1 | "ab" | pid 300 = fb 2c 01 |
    // max_frame_len 16777216 = fc 00 00 00 01
    assert_eq!(hex(&frame), "00 00 00 0d 00 01 02 61 62 fb 2c 01 fc 00 00 00 01");
}

#[test]
fn welcome() {
    pinned(
        &ServerMessage::Welcome(Welcome {
            protocol_version: 1,
            daemon_version: "0.1".into(),
            session_id: 7,
            limits: Limits {
                max_frame_len: 1000,
                max_texts_per_embed: 2,
                max_text_bytes: 3,
                max_in_flight: 4,
                max_leases: 5,
                max_tokens: 6,
            },
        }),
        "00 01 03 30 2e 31 07 fb e8 03 02 03 04 05 06",
    );
}

#[test]
fn requests() {
    pinned(&ClientMessage::Request { id: 5, body: Request::Ping }, "01 05 00");
    pinned(&ClientMessage::Request { id: 5, body: Request::Status }, "01 05 01");
    pinned(&ClientMessage::Request { id: 5, body: Request::ListModels }, "01 05 02");
    pinned(
        &ClientMessage::Request {
            id: 1,
            body: Request::Lease(LeaseRequest { model: "m".into(), keep_alive_ms: Some(-1) }),
        },
        // keep_alive_ms: Some(1) then zigzag(-1) = 1
        "01 01 03 01 6d 01 01",
    );
    pinned(&ClientMessage::Request { id: 2, body: Request::Release { lease: 9 } }, "01 02 04 09");
    pinned(
        &ClientMessage::Request {
            id: 3,
            body: Request::Embed(EmbedRequest {
                model: ModelRef::Lease(4),
                texts: vec!["hi".into()],
                normalize: true,
                priority: Priority::Batch,
                deadline_ms: None,
                prompt: Some("query".into()),
            }),
        },
        // ... deadline_ms None | prompt Some("query") (since v4)
        "01 03 05 01 04 01 02 68 69 01 01 00 01 05 71 75 65 72 79",
    );
    pinned(
        &ClientMessage::Request {
            id: 8,
            body: Request::Rerank(RerankRequest {
                model: ModelRef::Name("r".into()),
                query: "q".into(),
                documents: vec!["a".into(), "b".into()],
                top_n: Some(1),
                priority: Priority::Interactive,
                deadline_ms: None,
            }),
        },
        // Rerank is Request variant 13 (appended in v4)
        "01 08 0d 00 01 72 01 71 02 01 61 01 62 01 01 00 00",
    );
    pinned(
        &ClientMessage::Request {
            id: 4,
            body: Request::Tokenize { model: ModelRef::Name("m".into()), text: "x".into(), add_special_tokens: false },
        },
        "01 04 07 00 01 6d 01 78 00",
    );
    pinned(
        &ClientMessage::Request { id: 6, body: Request::Unload { model: "m".into(), force: true } },
        "01 06 0a 01 6d 01",
    );
    pinned(&ClientMessage::Request { id: 7, body: Request::Weights }, "01 07 0b");
    pinned(&ClientMessage::Request { id: 7, body: Request::Metrics }, "01 07 0c");
    pinned(&ClientMessage::Cancel { id: 3 }, "02 03");
    pinned(&ClientMessage::Credit { id: 3, events: 16 }, "03 03 10");
}

#[test]
fn generate_request() {
    pinned(
        &ClientMessage::Request {
            id: 1,
            body: Request::Generate(GenerateRequest {
                model: ModelRef::Name("g".into()),
                input: PromptInput::Chat(vec![ChatMessage::new("user", "hi")]),
                params: GenerateParams {
                    max_tokens: 8,
                    temperature: 0.0,
                    top_p: 1.0,
                    top_k: 0,
                    min_p: 0.0,
                    repetition_penalty: 1.0,
                    seed: Some(42),
                    stop: vec![b"\n".to_vec()],
                    logprobs: Some(5),
                    constraint: Some(Constraint::Regex("y|n".into())),
                    tools: vec![Tool { name: "f".into(), description: String::new(), parameters: "{}".into() }],
                    tool_choice: ToolChoice::Function("f".into()),
                    parallel_tool_calls: false,
                },
                initial_credit: 32,
                priority: Priority::Interactive,
                deadline_ms: Some(1000),
            }),
        },
        // v7: each chat message ends with tool_calls (00: none), tool_call_id and name
        // (00 00: None); the params end with tools (01: one, "f", "", "{}"), tool_choice
        // (03 = Function, "f") and parallel_tool_calls (00).
        "01 01 06 00 01 67 01 01 04 75 73 65 72 02 68 69 00 00 00 08 00 00 00 00 00 00 80 3f 00 00 00 00 00 00 00 80 3f 01 2a 01 01 0a 01 05 01 02 03 79 7c 6e 01 01 66 00 02 7b 7d 03 01 66 00 20 00 01 fb e8 03",
    );
}

#[test]
fn responses_events_and_errors() {
    pinned(&ServerMessage::Response { id: 5, body: Response::Pong }, "01 05 00");
    pinned(
        &ServerMessage::Response { id: 5, body: Response::Metrics("# EOF\n".into()) },
        "01 05 0c 06 23 20 45 4f 46 0a",
    );
    pinned(
        &ServerMessage::Response {
            id: 2,
            body: Response::Embeddings(Embeddings {
                model: "m".into(),
                count: 1,
                dim: 2,
                vectors: vec![1.0, -2.0],
                prompt_tokens: 3,
            }),
        },
        "01 02 05 01 6d 01 02 02 00 00 80 3f 00 00 00 c0 03",
    );
    // v3: the summary ends with cached_prompt_tokens.
    pinned(
        &ServerMessage::Response {
            id: 3,
            body: Response::Generated(GenerationSummary {
                finish_reason: FinishReason::Length,
                prompt_tokens: 5,
                completion_tokens: 2,
                prompt_tokens_per_s: 0.0,
                generation_tokens_per_s: 0.0,
                cached_prompt_tokens: 4,
            }),
        },
        "01 03 06 01 05 02 00 00 00 00 00 00 00 00 04",
    );
    pinned(
        &ServerMessage::Event { id: 9, event: Event::Token { text: "a".into(), token: Some(300), logprobs: None } },
        // ... logprobs None (since v5)
        "02 09 00 01 61 01 fb 2c 01 00",
    );
    // v7: tool calls (Event 2) and FinishReason::ToolCalls (4).
    pinned(
        &ServerMessage::Event {
            id: 9,
            event: Event::ToolCall(ToolCall { id: "c".into(), name: "f".into(), arguments: "{}".into() }),
        },
        "02 09 02 01 63 01 66 02 7b 7d",
    );
    pinned(
        &ServerMessage::Response {
            id: 3,
            body: Response::Generated(GenerationSummary {
                finish_reason: FinishReason::ToolCalls,
                prompt_tokens: 5,
                completion_tokens: 2,
                prompt_tokens_per_s: 0.0,
                generation_tokens_per_s: 0.0,
                cached_prompt_tokens: 0,
            }),
        },
        "01 03 06 04 05 02 00 00 00 00 00 00 00 00 00",
    );
    pinned(
        &ServerMessage::Event {
            id: 9,
            event: Event::LoadProgress(LoadProgress {
                model: "m".into(),
                stage: LoadStage::Weights,
                done: 1,
                total: 2,
            }),
        },
        "02 09 01 01 6d 01 01 02",
    );
    pinned(
        &ServerMessage::Error { id: 4, error: WireError::new(ErrorCode::Busy, "q").with_retry_after(250) },
        "03 04 02 01 71 01 fa",
    );
    pinned(&ServerMessage::Fatal(WireError::new(ErrorCode::VersionMismatch, "v")), "04 0a 01 76 00");
}

#[test]
fn error_codes_keep_their_indices() {
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
    for (index, code) in codes.iter().enumerate() {
        assert_eq!(encode_body(code).unwrap(), vec![index as u8], "{code:?}");
    }
}
