//! The models people have: an mlx-lm model directory (here MLX-quantized, as the
//! mlx-community publishes them) found in a Hugging Face cache laid out as the hub client
//! lays it out, imported or served by `hf:` name, answering exactly as mlx-lm does; and an
//! architecture mlx-lm does not implement refused by name. Tiny random models are built
//! by `tests/tools/tiny_mlx_lm.py`; nothing is downloaded.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mlxd_tests::{
    bin, blas_preload, http_post_json, repo_root, run_with_timeout, tiny_mlx_lm, venv_python, Daemon, TempDir,
};

/// Lays `files` (name → bytes) out as `huggingface_hub` caches a repository: content in
/// `blobs/`, the snapshot's files as relative symbolic links to them, and `refs/main`.
fn cache_repo(cache: &Path, repo: &str, files: &[(String, Vec<u8>)]) {
    let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "1f6e0a0b2c3d4e5f60718293a4b5c6d7e8f90a1b";
    let snapshot = dir.join("snapshots").join(commit);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (i, (name, bytes)) in files.iter().enumerate() {
        let blob = format!("blob{i:04}");
        std::fs::write(dir.join("blobs").join(&blob), bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(name)).unwrap();
    }
    std::fs::write(dir.join("refs/main"), commit).unwrap();
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// Builds the tiny model into `out` and returns mlx-lm's own greedy continuation of `prompt`.
fn tiny_model(out: &Path, quantize: u32, prompt: &str) -> String {
    let quantize = quantize.to_string();
    let args = ["--quantize", &quantize, "--greedy", prompt, "--max-tokens", "8"].map(std::ffi::OsStr::new);
    let stdout = tiny_mlx_lm(out, &args);
    let line: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    line["text"].as_str().unwrap().to_owned()
}

fn mlxd(args: &[&str], cache: &Path) -> (bool, String, String) {
    let (status, stdout, stderr) =
        run_with_timeout(Command::new(bin("mlxd")).args(args).env("HF_HUB_CACHE", cache), Duration::from_secs(120));
    (status.success(), stdout, stderr)
}

fn greedy_completion(socket: &Path, model: &str, prompt: &str) -> String {
    let body = serde_json::json!({ "model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0 });
    let (status, answer) = http_post_json(socket, "/v1/completions", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 8, "{answer}");
    answer["choices"][0]["text"].as_str().unwrap().to_owned()
}

#[test]
fn a_quantized_mlx_lm_model_in_the_hf_cache_is_served_by_name_as_mlx_lm_answers() {
    let dir = TempDir::new();
    let prompt = "Once upon a time";
    let built = dir.join("built");
    let expected = tiny_model(&built, 4, prompt);
    let cache: PathBuf = dir.join("hub");
    cache_repo(&cache, "test-org/tiny-llama-4bit", &files_of(&built));
    // An architecture the installed mlx-lm does not implement.
    let mut strange = files_of(&built);
    for (name, bytes) in &mut strange {
        if name == "config.json" {
            *bytes = br#"{"model_type": "no_such_arch", "vocab_size": 8}"#.to_vec();
        }
    }
    cache_repo(&cache, "test-org/strange", &strange);

    // Listed, with what can be served.
    let (status, listed, stderr) = run_with_timeout(
        Command::new(bin("mlxctl"))
            .args(["--json", "models", "--available"])
            .env("HF_HUB_CACHE", &cache)
            .env("MLXD_BIN", bin("mlxd")),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}: {listed}"));
    let tiny = row("hf:test-org/tiny-llama-4bit");
    assert!(tiny["servable"] == true && tiny["kind"] == "generation", "{tiny}");
    let odd = row("hf:test-org/strange");
    assert!(odd["servable"] == false && odd["why_not"].as_str().unwrap().contains("no_such_arch"), "{odd}");

    // Imported by hf: name; refused by architecture; absent ones say how to get them.
    let store = dir.join("store");
    let store_arg = store.to_str().unwrap();
    let (ok, out, err) =
        mlxd(&["import", "hf:test-org/tiny-llama-4bit", "--name", "tiny4", "--store", store_arg], &cache);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = mlxd(&["import", "hf:test-org/strange", "--name", "odd", "--store", store_arg], &cache);
    assert!(!ok && err.contains("\"no_such_arch\" is not supported"), "{err}");
    let (ok, _, err) = mlxd(&["import", "hf:test-org/absent", "--name", "absent", "--store", store_arg], &cache);
    assert!(!ok && err.contains("not in the Hugging Face cache") && err.contains("never downloads"), "{err}");

    // Served from the store and straight from the cache, each answering as mlx-lm does.
    let socket = dir.join("s.sock");
    let daemon = Daemon::start_with_env(
        TempDir::new(),
        socket.clone(),
        &["--store", store_arg, "--model", "tinyhf=hf:test-org/tiny-llama-4bit"],
        &[("HF_HUB_CACHE", cache.to_str().unwrap())],
    );
    assert_eq!(greedy_completion(&socket, "tiny4", prompt), expected, "{}", daemon.log_text());
    assert_eq!(greedy_completion(&socket, "tinyhf", prompt), expected, "{}", daemon.log_text());
}

/// Every GGUF architecture mlxd imports, each file carrying K-quants beside the other
/// common types (written by `tests/tools/tiny_gguf.py` as llama.cpp writes them, random
/// weights): `mlxd import` takes it into the store, and the daemon serves it, encoding the
/// prompt as the original tokenizer does and generating mlx-lm's greedy tokens on the same
/// weights in HF layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gguf_of_each_architecture_with_k_quants_imports_and_generates_as_mlx_lm_does() {
    const VARIANTS: &[&str] = &["llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"];
    const PROMPT: &str = "Hello world, it's 12345 café";
    let dir = TempDir::new();
    let mut command = Command::new(venv_python());
    command.arg(repo_root().join("tests/tools/tiny_gguf.py")).arg(dir.join("built")).args(VARIANTS);
    command.args(["--prompt", PROMPT, "--max-tokens", "6"]);
    if let Some(blas) = blas_preload() {
        command.env("LD_PRELOAD", blas);
    }
    let (status, stdout, stderr) = run_with_timeout(&mut command, Duration::from_secs(300));
    assert!(status.success(), "building the GGUFs failed: {stderr}");
    let built: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(built.len(), VARIANTS.len());
    let store = dir.join("store");
    for model in &built {
        let name = model["variant"].as_str().unwrap();
        let types: Vec<&str> = model["types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert!(types.iter().any(|t| t.ends_with("_K")), "{name}: no K-quant in {types:?}");
        let (status, stdout, stderr) = run_with_timeout(
            Command::new(bin("mlxd"))
                .arg("import")
                .arg(model["gguf"].as_str().unwrap())
                .args(["--name", name, "--store"])
                .arg(&store),
            Duration::from_secs(300),
        );
        assert!(status.success(), "{name}: import failed: {stdout}{stderr}");
    }
    let daemon = Daemon::start(&["--store", store.to_str().unwrap(), "--max-loaded-models", "2"]);
    let client = daemon.client().await;
    for model in &built {
        let name = model["variant"].as_str().unwrap();
        let ids = |key: &str| -> Vec<u32> {
            model[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
        };
        let (prompt, greedy, eos) = (ids("prompt_ids"), ids("greedy"), ids("eos"));
        let request = mlxd_client::proto::GenerateRequest {
            model: mlxd_client::proto::ModelRef::Name(name.into()),
            input: mlxd_client::proto::PromptInput::Raw(PROMPT.into()),
            params: mlxd_client::proto::GenerateParams { max_tokens: 6, temperature: 0.0, ..Default::default() },
            initial_credit: 0,
            priority: mlxd_client::proto::Priority::Interactive,
            deadline_ms: None,
        };
        let mut stream = client.generate(request).await.unwrap();
        let mut tokens = Vec::new();
        let summary = loop {
            match stream.next().await.unwrap() {
                Some(mlxd_client::StreamItem::Token { token, .. }) => tokens.extend(token),
                Some(mlxd_client::StreamItem::Done(summary)) => break summary,
                Some(mlxd_client::StreamItem::ToolCall(call)) => panic!("{name}: no tools, yet {call:?}"),
                None => panic!("{name}: the stream ended without a summary"),
            }
        };
        assert_eq!(
            summary.prompt_tokens as usize,
            prompt.len(),
            "{name}: the prompt encodes as the original tokenizer"
        );
        // mlx-lm's greedy tokens, up to the end-of-sequence token if the model chose one.
        let until_eos = greedy.iter().position(|t| eos.contains(t)).unwrap_or(greedy.len());
        assert_eq!(
            tokens[..until_eos.min(tokens.len())],
            greedy[..until_eos.min(tokens.len())],
            "{name}: {tokens:?} vs {greedy:?}"
        );
        assert!(tokens.len() >= until_eos.min(6), "{name}: stopped early: {tokens:?} vs {greedy:?}");
    }
}
