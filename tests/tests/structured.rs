//! Structured output through the real daemon and the SDKs people use: twenty JSON schemas
//! (nested objects, arrays, enums, bounded numbers, required and optional properties)
//! through openai-python's `response_format`, eight at a time with unconstrained streams in
//! the same batch, each output validated with the `jsonschema` package; Ollama's `format`
//! (a schema, and "json"); vLLM's `guided_regex`; a schema that cannot compile is a 400.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::process::Command;
use std::time::Duration;

use mlxd_tests::{http_post_json, repo_root, run_with_timeout, venv_python, Daemon};

const SCRIPT: &str = r#"
import json, sys, concurrent.futures as cf
import httpx, httpx2, jsonschema, ollama, openai
sys.path.insert(0, sys.argv[2])
from structured_schemas import SCHEMAS
socket = sys.argv[1]
oa = openai.OpenAI(base_url="http://localhost/v1", api_key="unused",
                   http_client=openai.DefaultHttpx2Client(transport=httpx2.HTTPTransport(uds=socket)))

def constrained(i):
    prompt, schema = SCHEMAS[i]
    reply = oa.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt + " Answer in JSON."}], max_tokens=120,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}})
    choice = reply.choices[0]
    value = json.loads(choice.message.content)
    jsonschema.validate(value, schema)
    return {"i": i, "finish": choice.finish_reason, "value": value}

def free(i):
    reply = oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": f"Count to {i + 3}."}],
                                       max_tokens=16, temperature=0)
    return {"free": i, "text": reply.choices[0].message.content}

with cf.ThreadPoolExecutor(8) as pool:
    jobs = [pool.submit(constrained, i) for i in range(len(SCHEMAS))] + [pool.submit(free, i) for i in range(4)]
    results = [job.result() for job in jobs]
ol = ollama.Client(host="http://localhost", transport=httpx.HTTPTransport(uds=socket))
schema = SCHEMAS[0][1]
reply = ol.chat(model="smollm2", messages=[{"role": "user", "content": SCHEMAS[0][0]}], format=schema,
                options={"temperature": 0, "num_predict": 120}, stream=False)
jsonschema.validate(json.loads(reply.message.content), schema)
anything = ol.generate(model="smollm2", prompt="Any JSON object.", format="json", options={"temperature": 0, "num_predict": 60})
assert isinstance(json.loads(anything.response), dict), anything.response
regex = oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "A phone number?"}],
                                   max_tokens=20, temperature=0, extra_body={"guided_regex": r"[0-9]{3}-[0-9]{4}"})
import re
assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", regex.choices[0].message.content), regex
try:
    oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], max_tokens=4,
                               response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "frob"}}})
    raise SystemExit("a schema that cannot compile was accepted")
except openai.BadRequestError as err:
    bad = str(err)
print(json.dumps({"results": results, "bad": bad}))
"#;

#[test]
fn twenty_schemas_through_the_openai_sdk_validate_also_when_sharing_a_batch() {
    let daemon = Daemon::start(&[]);
    let mut command = Command::new(venv_python());
    command.arg("-c").arg(SCRIPT).arg(&daemon.socket).arg(repo_root().join("tests/tools"));
    let (status, stdout, stderr) = run_with_timeout(&mut command, Duration::from_secs(600));
    assert!(status.success(), "{stderr}\n{}", daemon.log_text());
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let results = report["results"].as_array().unwrap();
    let constrained: Vec<_> = results.iter().filter(|r| r.get("i").is_some()).collect();
    assert_eq!(constrained.len(), 20);
    for result in &constrained {
        assert_eq!(result["finish"], "stop", "a complete answer: {result}");
    }
    assert_eq!(results.iter().filter(|r| r.get("free").is_some()).count(), 4);
    assert!(report["bad"].as_str().unwrap().contains("frob"), "names what is unsupported: {report}");
}

#[test]
fn a_constraint_too_large_or_not_json_is_refused_before_any_work() {
    let daemon = Daemon::start(&[]);
    let body = |format: serde_json::Value| serde_json::json!({ "model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "response_format": format });
    let (status, answer) =
        http_post_json(&daemon.socket, "/v1/chat/completions", &body(serde_json::json!({ "type": "json_schema" })));
    assert_eq!(status, 400, "{answer}");
    let (status, answer) =
        http_post_json(&daemon.socket, "/v1/chat/completions", &body(serde_json::json!({ "type": "xml" })));
    assert_eq!(status, 400, "{answer}");
    let huge = serde_json::json!({ "type": "object", "description": "x".repeat(70_000) });
    let (status, answer) = http_post_json(
        &daemon.socket,
        "/v1/chat/completions",
        &body(serde_json::json!({ "type": "json_schema", "json_schema": { "name": "h", "schema": huge } })),
    );
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = http_post_json(
        &daemon.socket,
        "/api/chat",
        &serde_json::json!({ "model": "smollm2", "messages": [{"role": "user", "content": "x"}], "format": 5, "stream": false }),
    );
    assert_eq!(status, 400, "{answer}");

    // mlxctl, as a person would use it.
    let mlxctl = |args: &[&str]| {
        let (status, stdout, stderr) = run_with_timeout(
            Command::new(mlxd_tests::bin("mlxctl"))
                .arg("--socket")
                .arg(&daemon.socket)
                .args(["--no-fallback", "generate", "--model", "smollm2", "--temperature", "0", "--max-tokens", "60"])
                .args(args),
            Duration::from_secs(120),
        );
        assert!(status.success(), "{stderr}");
        stdout.trim().to_owned()
    };
    let object: serde_json::Value = serde_json::from_str(&mlxctl(&["--json-object", "Describe Paris."])).unwrap();
    assert!(object.is_object(), "{object}");
    let answer = mlxctl(&["--regex", "(yes|no)", "Is Paris in France?"]);
    assert!(answer == "yes" || answer == "no", "{answer:?}");
}
