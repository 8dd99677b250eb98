//! Tool calls through the real daemon, with the openai and ollama SDKs and mlxctl.
//!
//! No small instruction model with a tool-calling template is in a package registry (the
//! bundled SmolLM2-135M-Instruct's template takes no tools), so the model is a tiny random
//! one (`tests/tools/tiny_mlx_lm.py`) with Qwen 2.5's real template
//! (`python/tests/fixtures/templates`); what is meaningful on random weights is what the
//! daemon enforces: calls forced by `tool_choice` and the prompt the template renders for a
//! conversation with calls and results (`tests/sdk/tools_sdk.py` checks it token for token
//! against transformers). Each family's parsing, rendering and grammar is tested on its
//! real template in `python/tests/test_tools.py`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mlxd_tests::{bin, repo_root, run_with_timeout, tiny_mlx_lm, venv_python, Daemon, TempDir};

/// A tiny random model with Qwen 2.5's tool-calling template, built into `out`.
fn tiny_tool_model(out: &Path) {
    let template = repo_root().join("python/tests/fixtures/templates/Qwen-Qwen2.5-7B-Instruct.jinja");
    tiny_mlx_lm(out, &["--chat-template".as_ref(), template.as_os_str()]);
}

#[test]
fn tool_calls_round_trip_through_the_openai_and_ollama_sdks_and_mlxctl() {
    let dir = TempDir::new();
    let model = dir.join("tiny");
    tiny_tool_model(&model);
    let spec = format!("tiny={}", model.display());
    let daemon = Daemon::start(&["--model", &spec]);

    let mut command = Command::new(venv_python());
    command.arg(repo_root().join("tests/sdk/tools_sdk.py")).arg(&daemon.socket).arg(&model);
    let (status, stdout, stderr) = run_with_timeout(&mut command, Duration::from_secs(600));
    assert!(status.success(), "{stderr}\n{}", daemon.log_text());
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let refusals = &report["refusals"];
    assert!(refusals["unknown_function"].as_str().unwrap().contains("\"nope\", which is not among the tools"));
    assert!(refusals["no_tool_template"].as_str().unwrap().contains("does not take tools"), "{refusals}");
    assert!(refusals["with_response_format"].as_str().unwrap().contains("cannot be combined"), "{refusals}");
    assert!(refusals["bad_name"].as_str().unwrap().contains("must be 1 to 64 of"), "{refusals}");
    // The forced call is the same through both APIs (greedy, the same prompt).
    assert_eq!(report["ollama"]["forced"], report["named"]["arguments"], "{report}");

    // mlxctl: --tools FILE (OpenAI's shape) and --tool-choice NAME print the call.
    let tools = dir.join("tools.json");
    let weather = serde_json::json!([{ "type": "function", "function": {
        "name": "get_weather",
        "parameters": { "type": "object", "properties": { "city": { "type": "string", "enum": ["Oslo", "Rome"] } },
                        "required": ["city"], "additionalProperties": false },
    }}]);
    std::fs::write(&tools, weather.to_string()).unwrap();
    let socket = daemon.socket.to_str().unwrap();
    let args = ["--socket", socket, "generate", "--model", "tiny", "--temperature", "0", "--max-tokens", "40"];
    let (status, stdout, stderr) = run_with_timeout(
        Command::new(bin("mlxctl")).args(args).arg("--tools").arg(&tools).args(["--tool-choice", "get_weather", "Hi"]),
        Duration::from_secs(120),
    );
    assert!(status.success(), "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["tool_call"]["name"], "get_weather", "{stdout}");
    let arguments: serde_json::Value = serde_json::from_str(line["tool_call"]["arguments"].as_str().unwrap()).unwrap();
    assert!(["Oslo", "Rome"].contains(&arguments["city"].as_str().unwrap()), "{arguments}");
    assert!(stderr.contains("[tool_calls:"), "{stderr}");

    // ModelInfo.tools: from the template in the model's files, loaded or not.
    let (status, stdout, stderr) = run_with_timeout(
        Command::new(bin("mlxctl")).args(["--socket", socket, "status", "--json"]),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let tools: Vec<(String, bool)> = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_owned(), m["tools"].as_bool().unwrap()))
        .collect();
    assert!(tools.contains(&("tiny".into(), true)) && tools.contains(&("smollm2".into(), false)), "{tools:?}");
}
