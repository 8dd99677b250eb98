//! `mlxctl`: talk to mlxd from a shell. Human-readable output by default, `--json` for
//! programs. Falls back to a private `mlxd stdio` when no daemon runs, unless
//! `--no-fallback`.

mod bench;
mod output;
mod progress;
mod view;

use output::{embeddings_json, model_json, print_embeddings, print_json, status_json};

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mlxd_client::proto::{
    ChatMessage, ErrorCode, GenerateParams, GenerateRequest, ModelRef, PromptInput, Tool, ToolChoice,
};
use mlxd_client::{ClientError, ConnectOptions, StreamItem};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "mlxctl", version, about = "Control and use a running mlxd")]
struct Cli {
    /// Daemon socket [default: $MLXD_SOCKET, $XDG_RUNTIME_DIR/mlxd/mlxd.sock, /tmp/mlxd-$UID/mlxd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Fail when no daemon answers instead of starting a private `mlxd stdio`.
    #[arg(long, global = true)]
    no_fallback: bool,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Times an idempotent request refused with Busy is retried (after the daemon's hint).
    #[arg(long, global = true, default_value_t = 3)]
    retries: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the daemon answers.
    Ping,
    /// Daemon and model status (with --json: the metrics too).
    Status,
    /// The status table, refreshed live until Ctrl-C.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes.
        #[arg(long, hide = true)]
        iterations: Option<u64>,
    },
    /// The daemon's Prometheus metrics (OpenMetrics text; JSON with --json).
    Metrics,
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the bearer token of the daemon's HTTP API on TCP (`mlxd serve --http`),
    /// creating it if none exists yet; run as the daemon's user (it is that user's file).
    Token {
        /// Model store [default: $MLXD_STORE, $XDG_DATA_HOME/mlxd, or ~/.local/share/mlxd]
        #[arg(long, value_name = "DIR")]
        store: Option<std::path::PathBuf>,
    },
    /// The models the daemon can serve.
    Models {
        /// Instead, the models in the local Hugging Face cache that mlxd could serve
        /// (`mlxd serve --model NAME=hf:ORG/NAME`, `mlxd import hf:ORG/NAME`).
        #[arg(long)]
        available: bool,
    },
    /// Embed texts (`-` reads one text per line from stdin).
    Embed {
        #[arg(long, short)]
        model: String,
        /// Return the model's vectors as it pools them instead of L2-normalised ones.
        #[arg(long)]
        no_normalize: bool,
        /// One of the model's named prompts (e.g. query, document; "" for none); without
        /// it the model's default prompt, if it has one (`mlxctl models` lists them).
        #[arg(long)]
        prompt: Option<String>,
        #[arg(required = true, value_name = "TEXT")]
        texts: Vec<String>,
    },
    /// Score documents against a query with a reranking model, best first (`-` reads
    /// one document per line from stdin).
    Rerank {
        #[arg(long, short)]
        model: String,
        /// Show only the best N.
        #[arg(long)]
        top_n: Option<u32>,
        #[arg(value_name = "QUERY")]
        query: String,
        #[arg(required = true, value_name = "DOCUMENT")]
        documents: Vec<String>,
    },
    /// Generate text, printed as it streams (chat template applied unless --raw).
    Generate {
        #[arg(long, short)]
        model: String,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        top_k: u32,
        #[arg(long, default_value_t = 0.0)]
        min_p: f32,
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Stop when this text appears (repeatable); it is not printed.
        #[arg(long)]
        stop: Vec<String>,
        /// A system message for the chat template.
        #[arg(long)]
        system: Option<String>,
        /// Send the prompt as is, without the chat template.
        #[arg(long)]
        raw: bool,
        /// With --json: each token's log probability and the N most likely tokens (0-20).
        #[arg(long, value_name = "N")]
        logprobs: Option<u32>,
        /// The output is one JSON value valid against the JSON schema in FILE.
        #[arg(long, value_name = "FILE", group = "constraint")]
        json_schema: Option<std::path::PathBuf>,
        /// The output is a JSON object.
        #[arg(long, group = "constraint")]
        json_object: bool,
        /// The output matches this regular expression as a whole.
        #[arg(long, value_name = "REGEX", group = "constraint")]
        regex: Option<String>,
        /// The output is derived by the Lark grammar in FILE (rule `start`).
        #[arg(long, value_name = "FILE", group = "constraint")]
        grammar: Option<std::path::PathBuf>,
        /// Functions the model may call: a JSON array in FILE, in OpenAI's shape
        /// (`[{"type": "function", "function": {"name", "description", "parameters"}}]`).
        #[arg(long, value_name = "FILE")]
        tools: Option<std::path::PathBuf>,
        /// With --tools: auto (the model decides), none, required, or a function's name.
        #[arg(long, value_name = "CHOICE", default_value = "auto")]
        tool_choice: String,
        prompt: String,
    },
    /// Load a model (showing progress) without leasing it.
    Load { model: String },
    /// Unload a model; a leased model is refused unless --force, which revokes the leases.
    Unload {
        model: String,
        #[arg(long)]
        force: bool,
    },
    /// Load generator: N connections, embed, generate or ping, closed or open loop.
    Bench(bench::BenchArgs),
    /// Be one tenant: lease an embedding and a generation model, then embed and generate in
    /// turn until --seconds pass or stdin closes. Prints `ready` after the first round and a
    /// JSON summary at the end (memory benchmarks, soak tests).
    Tenant {
        #[arg(long, default_value = "minilm")]
        embed_model: String,
        #[arg(long, default_value = "smollm2")]
        generate_model: String,
        #[arg(long, default_value_t = 3600.0)]
        seconds: f64,
        /// Tokens per generation.
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
    },
    /// Show a text's token ids.
    Tokenize {
        #[arg(long, short)]
        model: String,
        text: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The load generator uses every core; everything else needs one thread.
    let mut builder = match cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mlxctl: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&cli));
    // A blocking read of stdin (`tenant`) may still be waiting: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&cli, err),
    }
}

/// One line saying what went wrong, and where it helps, one line saying what to do.
fn report(cli: &Cli, err: ClientError) -> ExitCode {
    if let ClientError::Wire(wire) = &err {
        if wire.code == ErrorCode::Busy {
            let hint = wire.retry_after_ms.map(|ms| format!(" (retry after {ms} ms)")).unwrap_or_default();
            eprintln!("busy: {}{hint}", wire.message);
            return ExitCode::from(75); // EX_TEMPFAIL
        }
    }
    eprintln!("mlxctl: {err}");
    if let Some(hint) = hint(cli, &err) {
        eprintln!("hint: {hint}");
    }
    ExitCode::FAILURE
}

fn hint(cli: &Cli, err: &ClientError) -> Option<String> {
    Some(match err {
        ClientError::NoDaemon { path, .. } => format!(
            "start one with `mlxd serve{}` (or `mlxd install` to have it start on first use), or drop --no-fallback",
            cli.socket.as_ref().map(|_| format!(" --socket {}", path.display())).unwrap_or_default()
        ),
        ClientError::Fallback { .. } => "build mlxd (`make setup`) or set MLXD_BIN to its path".into(),
        ClientError::Closed => "the daemon went away; `mlxctl status` shows whether one is running".into(),
        ClientError::Wire(wire) | ClientError::Handshake(wire) => match wire.code {
            ErrorCode::NotFound => "`mlxctl models` lists the models this daemon serves".into(),
            ErrorCode::Unauthorized => {
                "the daemon's owner can allow you with --allow-uid, --allow-group or --socket-group".into()
            }
            ErrorCode::VersionMismatch => {
                "mlxctl and mlxd come from different builds; use the pair from one build".into()
            }
            ErrorCode::WorkerFailed => {
                "`mlxctl status` shows the model's last error; `mlxctl load MODEL` tries it again now".into()
            }
            ErrorCode::OutOfMemory => "unload a model (`mlxctl unload NAME`) or raise --memory-budget".into(),
            _ => return None,
        },
        _ => return None,
    })
}

async fn run(cli: &Cli) -> Result<(), ClientError> {
    let options = ConnectOptions {
        socket: cli.socket.clone(),
        fallback: !cli.no_fallback,
        client_name: "mlxctl".into(),
        retry: mlxd_client::RetryPolicy { max_retries: cli.retries, ..Default::default() },
        ..ConnectOptions::default()
    };
    match &cli.command {
        Command::Bench(args) => return bench::run(options, args.clone(), cli.json).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "mlxctl",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Command::Token { store } => return token(store.as_deref()),
        Command::Models { available: true } => return run_mlxd(&["available"], cli.json),
        _ => {}
    }
    let client = options.connect().await?;
    match &cli.command {
        Command::Ping => {
            let started = std::time::Instant::now();
            client.ping().await?;
            let rtt_us = started.elapsed().as_micros();
            if cli.json {
                print_json(&json!({ "ok": true, "rtt_us": rtt_us }));
            } else {
                println!("pong from mlxd {} in {rtt_us} µs", client.welcome().daemon_version);
            }
        }
        Command::Status => {
            let status = client.status().await?;
            if cli.json {
                let mut value = status_json(&status);
                value["metrics"] = view::metrics_json(&client.metrics().await?);
                print_json(&value);
            } else {
                print!("{}", view::render_status(&status, None));
            }
        }
        Command::Top { interval, iterations } => {
            let interval = std::time::Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
            view::top(&client, interval, *iterations).await?;
        }
        Command::Metrics => {
            let text = client.metrics().await?;
            if cli.json {
                print_json(&view::metrics_json(&text));
            } else {
                print!("{text}");
            }
        }
        Command::Models { .. } => {
            let models = client.models().await?;
            if cli.json {
                print_json(&json!(models.iter().map(model_json).collect::<Vec<_>>()));
            } else {
                print!("{}", view::render_models(&models, None));
            }
        }
        Command::Rerank { model, top_n, query, documents } => {
            let documents = expand_stdin(documents)?;
            let reranked = client.rerank(model, query, documents.clone(), *top_n).await?;
            if cli.json {
                print_json(&json!({
                    "model": reranked.model,
                    "prompt_tokens": reranked.prompt_tokens,
                    "results": reranked.results.iter().map(|r| json!({
                        "index": r.index,
                        "score": r.score,
                        "document": documents.get(r.index as usize),
                    })).collect::<Vec<_>>(),
                }));
            } else {
                for r in &reranked.results {
                    let document = documents.get(r.index as usize).map_or("", String::as_str);
                    println!("{:.4}  [{}] {}", r.score, r.index, document);
                }
            }
        }
        Command::Embed { model, no_normalize, prompt, texts } => {
            let texts = expand_stdin(texts)?;
            let request = mlxd_client::proto::EmbedRequest {
                model: ModelRef::Name(model.clone()),
                texts: texts.clone(),
                normalize: !no_normalize,
                priority: Default::default(),
                deadline_ms: None,
                prompt: prompt.clone(),
            };
            let embeddings = client.embed_with(request).await?;
            if cli.json {
                print_json(&embeddings_json(&embeddings));
            } else {
                print_embeddings(&texts, &embeddings);
            }
        }
        Command::Generate {
            model,
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            seed,
            stop,
            system,
            raw,
            logprobs,
            json_schema,
            json_object,
            regex,
            grammar,
            tools,
            tool_choice,
            prompt,
        } => {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path).map_err(|err| {
                    ClientError::Io(std::io::Error::new(err.kind(), format!("reading {}: {err}", path.display())))
                })
            };
            let constraint = match (json_schema, json_object, regex, grammar) {
                (Some(path), ..) => Some(mlxd_client::proto::Constraint::JsonSchema(read(path)?)),
                (_, true, ..) => Some(mlxd_client::proto::Constraint::JsonObject),
                (_, _, Some(regex), _) => Some(mlxd_client::proto::Constraint::Regex(regex.clone())),
                (.., Some(path)) => Some(mlxd_client::proto::Constraint::Lark(read(path)?)),
                _ => None,
            };
            let params = GenerateParams {
                max_tokens: *max_tokens,
                temperature: *temperature,
                top_p: *top_p,
                top_k: *top_k,
                min_p: *min_p,
                repetition_penalty: *repetition_penalty,
                seed: *seed,
                stop: stop.iter().map(|s| s.as_bytes().to_vec()).collect(),
                logprobs: *logprobs,
                constraint,
                tools: match tools {
                    Some(path) => tools_from(&read(path)?)?,
                    None => Vec::new(),
                },
                tool_choice: match tool_choice.as_str() {
                    "auto" => ToolChoice::Auto,
                    "none" => ToolChoice::None,
                    "required" => ToolChoice::Required,
                    name => ToolChoice::Function(name.to_owned()),
                },
                parallel_tool_calls: true,
            };
            let chat = {
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(ChatMessage::new("system", system.clone()));
                }
                messages.push(ChatMessage::new("user", prompt.clone()));
                PromptInput::Chat(messages)
            };
            let input = if *raw { PromptInput::Raw(prompt.clone()) } else { chat };
            let request = GenerateRequest {
                model: ModelRef::Name(model.clone()),
                input,
                params,
                initial_credit: 0,
                priority: Default::default(),
                deadline_ms: None,
            };
            match stream_generation(&client, request.clone(), cli.json).await {
                // A model without a chat template gets the prompt as is.
                Err(ClientError::Wire(err)) if !*raw && err.code == ErrorCode::Unsupported => {
                    eprintln!("mlxctl: {model} has no chat template; sending the prompt as is");
                    let request = GenerateRequest { input: PromptInput::Raw(prompt.clone()), ..request };
                    stream_generation(&client, request, cli.json).await?;
                }
                other => other?,
            }
        }
        Command::Load { model } => {
            let started = std::time::Instant::now();
            let request = mlxd_client::proto::Request::Load { model: model.clone() };
            let mut bar = progress::LoadBar::new(model, cli.json);
            let result = client.call_with_events(request, |event| bar.update(event)).await;
            bar.finish(result.is_ok());
            match result? {
                mlxd_client::proto::Response::Loaded(info) => {
                    if cli.json {
                        print_json(&model_json(&info));
                    } else {
                        println!(
                            "{} is {} ({:.1} s)",
                            info.name,
                            view::state_name(info.state),
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
                other => return Err(ClientError::Wire(mlxd_client::proto::WireError::internal(format!("{other:?}")))),
            }
        }
        Command::Unload { model, force } => {
            let request = mlxd_client::proto::Request::Unload { model: model.clone(), force: *force };
            match client.call(request).await? {
                mlxd_client::proto::Response::Unloaded(info) => {
                    if cli.json {
                        print_json(&model_json(&info));
                    } else {
                        println!("{} is {}", info.name, view::state_name(info.state));
                    }
                }
                other => return Err(ClientError::Wire(mlxd_client::proto::WireError::internal(format!("{other:?}")))),
            }
        }
        Command::Bench(_) | Command::Completions { .. } | Command::Token { .. } => unreachable!("handled above"),
        Command::Tenant { embed_model, generate_model, seconds, max_tokens } => {
            tenant(&client, embed_model, generate_model, *seconds, *max_tokens).await?;
        }
        Command::Tokenize { model, text } => {
            let tokens = client.tokenize(ModelRef::Name(model.clone()), text).await?;
            if cli.json {
                print_json(&json!({ "model": model, "tokens": tokens }));
            } else {
                println!("{} tokens: {tokens:?}", tokens.len());
            }
        }
    }
    Ok(())
}

/// `mlxctl tenant`: what one client process of a shared daemon does, in a loop.
async fn tenant(
    client: &mlxd_client::Client,
    embed_model: &str,
    generate_model: &str,
    seconds: f64,
    max_tokens: u32,
) -> Result<(), ClientError> {
    let embedder = client.lease(embed_model).await?;
    let generator = client.lease(generate_model).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs_f64(seconds.max(0.0));
    // Ends the loop when whoever started us closes our stdin.
    let stdin_closed = tokio::spawn(async {
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
    });
    let (mut rounds, mut tokens) = (0u64, 0u64);
    loop {
        let text = format!("tenant {} round {rounds}: a sentence to embed", std::process::id());
        embedder.embed(vec![text]).await?;
        let request = GenerateRequest {
            model: ModelRef::Lease(generator.lease_id()),
            input: PromptInput::Raw(format!("Round {rounds}. Once upon a time")),
            params: GenerateParams { max_tokens, temperature: 0.0, ..Default::default() },
            initial_credit: 0,
            priority: Default::default(),
            deadline_ms: None,
        };
        let mut stream = client.generate(request).await?;
        while let Some(item) = stream.next().await? {
            if let StreamItem::Token { token: Some(_), .. } = item {
                tokens += 1;
            }
        }
        rounds += 1;
        if rounds == 1 {
            println!("ready");
            let _ = std::io::stdout().flush();
        }
        if tokio::time::Instant::now() >= deadline || stdin_closed.is_finished() {
            break;
        }
    }
    print_json(&json!({ "rounds": rounds, "tokens": tokens }));
    Ok(())
}

/// `--tools`: OpenAI's tool objects (`{"type": "function", "function": {...}}`), or the
/// function objects alone.
fn tools_from(text: &str) -> Result<Vec<Tool>, ClientError> {
    let bad = |why: String| ClientError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|err| bad(format!("--tools: {err}")))?;
    let items = value.as_array().ok_or_else(|| bad("--tools: a JSON array of tools".into()))?;
    items
        .iter()
        .map(|item| {
            let function = item.get("function").unwrap_or(item);
            let name = function
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or_else(|| bad("--tools: a tool without a name".into()))?;
            Ok(Tool {
                name: name.to_owned(),
                description: function.get("description").and_then(|d| d.as_str()).unwrap_or_default().to_owned(),
                parameters: function
                    .get("parameters")
                    .map_or_else(|| r#"{"type":"object","properties":{}}"#.to_owned(), |p| p.to_string()),
            })
        })
        .collect()
}

/// Prints a generation as it streams: text to stdout (or one JSON object per event).
async fn stream_generation(
    client: &mlxd_client::Client,
    request: GenerateRequest,
    json: bool,
) -> Result<(), ClientError> {
    let mut stream = client.generate(request).await?;
    let mut stdout = std::io::stdout();
    while let Some(item) = stream.next().await? {
        match item {
            StreamItem::Token { text, token, logprobs } => {
                if json {
                    let mut line = json!({ "text": text, "token": token });
                    if let Some(l) = logprobs {
                        let top: Vec<_> = l
                            .top
                            .iter()
                            .map(|a| json!({ "token": a.token, "text": a.text, "logprob": a.logprob }))
                            .collect();
                        line["logprob"] = json!(l.logprob);
                        line["top_logprobs"] = json!(top);
                    }
                    print_json(&line);
                } else {
                    let _ = write!(stdout, "{text}");
                    let _ = stdout.flush();
                }
            }
            StreamItem::ToolCall(call) => {
                let line = json!({ "tool_call": { "id": call.id, "name": call.name, "arguments": call.arguments } });
                if json {
                    print_json(&line);
                } else {
                    let _ = writeln!(stdout, "{line}");
                }
            }
            StreamItem::Done(summary) => {
                let reason = match summary.finish_reason {
                    mlxd_client::proto::FinishReason::ToolCalls => "tool_calls".to_owned(),
                    other => format!("{other:?}").to_lowercase(),
                };
                if json {
                    print_json(&json!({
                        "finish_reason": reason,
                        "prompt_tokens": summary.prompt_tokens,
                        "completion_tokens": summary.completion_tokens,
                        "prompt_tokens_per_s": summary.prompt_tokens_per_s,
                        "generation_tokens_per_s": summary.generation_tokens_per_s,
                    }));
                } else {
                    println!();
                    eprintln!(
                        "[{reason}: {} prompt + {} generated tokens, {:.1} tok/s]",
                        summary.prompt_tokens, summary.completion_tokens, summary.generation_tokens_per_s
                    );
                }
            }
        }
    }
    Ok(())
}

/// `-` stands for stdin, one text per line.
fn expand_stdin(texts: &[String]) -> Result<Vec<String>, ClientError> {
    let mut out = Vec::new();
    for text in texts {
        if text == "-" {
            for line in std::io::stdin().lock().lines() {
                out.push(line?);
            }
        } else {
            out.push(text.clone());
        }
    }
    Ok(out)
}

/// `mlxctl token`: the token is the daemon's file in its store, so `mlxd token` (the
/// binary the stdio fallback would run) reads or creates it; its output is passed through.
fn token(store: Option<&std::path::Path>) -> Result<(), ClientError> {
    match store {
        Some(store) => run_mlxd(&["token", "--store", &store.to_string_lossy()], false),
        None => run_mlxd(&["token"], false),
    }
}

/// Runs `mlxd ARGS` (the binary the stdio fallback would run) for what only it can answer
/// (files the daemon owns, its Python environment), passing its output through.
fn run_mlxd(args: &[&str], json: bool) -> Result<(), ClientError> {
    let binary = mlxd_client::connection::find_mlxd();
    let mut command = std::process::Command::new(&binary);
    command.args(args);
    if json {
        command.arg("--json");
    }
    let status = command.status().map_err(|err| {
        std::io::Error::new(err.kind(), format!("cannot run `{} {}`: {err}", binary.display(), args.join(" ")))
    })?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
