//! `mlxctl`: talk to mlxd from a shell. Human-readable output by default, `--json` for
//! programs. Falls back to a private `mlxd stdio` when no daemon runs, unless
//! `--no-fallback`.

mod bench;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mlxd_client::proto::{
    ChatMessage, DaemonStatus, Embeddings, ErrorCode, GenerateParams, GenerateRequest, ModelInfo, ModelRef, ModelState,
    PromptInput,
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
    /// Daemon and model status.
    Status,
    /// The models the daemon can serve.
    Models,
    /// Embed texts (`-` reads one text per line from stdin).
    Embed {
        #[arg(long, short)]
        model: String,
        /// Return raw mean-pooled vectors instead of L2-normalised ones.
        #[arg(long)]
        no_normalize: bool,
        #[arg(required = true, value_name = "TEXT")]
        texts: Vec<String>,
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
    /// Load generator: N connections, embed or generate, closed or open loop.
    Bench(bench::BenchArgs),
    /// Show a text's token ids.
    Tokenize {
        #[arg(long, short)]
        model: String,
        text: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mlxctl: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&cli, err),
    }
}

fn report(cli: &Cli, err: ClientError) -> ExitCode {
    match &err {
        ClientError::Wire(wire) if wire.code == ErrorCode::Busy => {
            let hint = wire.retry_after_ms.map(|ms| format!(" (retry after {ms} ms)")).unwrap_or_default();
            eprintln!("busy: {}{hint}", wire.message);
            return ExitCode::from(75); // EX_TEMPFAIL
        }
        ClientError::NoDaemon { path, .. } => {
            eprintln!(
                "mlxctl: {err}\nhint: start one with `mlxd serve{}`, or drop --no-fallback",
                cli.socket.as_ref().map(|_| format!(" --socket {}", path.display())).unwrap_or_default()
            );
        }
        ClientError::Fallback { .. } => {
            eprintln!("mlxctl: {err}\nhint: build mlxd (`make build`) or set MLXD_BIN to its path");
        }
        _ => eprintln!("mlxctl: {err}"),
    }
    ExitCode::FAILURE
}

async fn run(cli: &Cli) -> Result<(), ClientError> {
    let options = ConnectOptions {
        socket: cli.socket.clone(),
        fallback: !cli.no_fallback,
        client_name: "mlxctl".into(),
        retry: mlxd_client::RetryPolicy { max_retries: cli.retries, ..Default::default() },
        ..ConnectOptions::default()
    };
    if let Command::Bench(args) = &cli.command {
        return bench::run(options, args.clone(), cli.json).await;
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
                print_json(&status_json(&status));
            } else {
                print_status(&status);
            }
        }
        Command::Models => {
            let models = client.models().await?;
            if cli.json {
                print_json(&json!(models.iter().map(model_json).collect::<Vec<_>>()));
            } else {
                print_models(&models);
            }
        }
        Command::Embed { model, no_normalize, texts } => {
            let texts = expand_stdin(texts)?;
            let request = mlxd_client::proto::EmbedRequest {
                model: ModelRef::Name(model.clone()),
                texts: texts.clone(),
                normalize: !no_normalize,
                priority: Default::default(),
                deadline_ms: None,
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
            prompt,
        } => {
            let params = GenerateParams {
                max_tokens: *max_tokens,
                temperature: *temperature,
                top_p: *top_p,
                top_k: *top_k,
                min_p: *min_p,
                repetition_penalty: *repetition_penalty,
                seed: *seed,
                stop: stop.iter().map(|s| s.as_bytes().to_vec()).collect(),
            };
            let chat = {
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(ChatMessage { role: "system".into(), content: system.clone() });
                }
                messages.push(ChatMessage { role: "user".into(), content: prompt.clone() });
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
                Err(ClientError::Wire(err)) if !*raw && err.message.contains("no chat template") => {
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
            let json = cli.json;
            let on_event = |event| {
                if let mlxd_client::proto::Event::LoadProgress(p) = event {
                    if json {
                        print_json(
                            &json!({ "stage": format!("{:?}", p.stage).to_lowercase(), "done": p.done, "total": p.total }),
                        );
                    } else {
                        eprintln!("{}: {:?} {}/{}", p.model, p.stage, p.done, p.total);
                    }
                }
            };
            match client.call_with_events(request, on_event).await? {
                mlxd_client::proto::Response::Loaded(info) => {
                    if cli.json {
                        print_json(&model_json(&info));
                    } else {
                        println!(
                            "{} is {} ({:.1} s)",
                            info.name,
                            state_name(info.state),
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
                        println!("{} is {}", info.name, state_name(info.state));
                    }
                }
                other => return Err(ClientError::Wire(mlxd_client::proto::WireError::internal(format!("{other:?}")))),
            }
        }
        Command::Bench(_) => unreachable!("handled above"),
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
            StreamItem::Token { text, token } => {
                if json {
                    print_json(&json!({ "text": text, "token": token }));
                } else {
                    let _ = write!(stdout, "{text}");
                    let _ = stdout.flush();
                }
            }
            StreamItem::Done(summary) => {
                let reason = format!("{:?}", summary.finish_reason).to_lowercase();
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

fn print_json(value: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, value);
    let _ = writeln!(stdout);
}

fn embeddings_json(e: &Embeddings) -> serde_json::Value {
    let rows: Vec<&[f32]> = e.rows().collect();
    json!({ "model": e.model, "count": e.count, "dim": e.dim, "prompt_tokens": e.prompt_tokens, "embeddings": rows })
}

fn print_embeddings(texts: &[String], e: &Embeddings) {
    println!("{}: {} vector(s) of {} dims, {} tokens", e.model, e.count, e.dim, e.prompt_tokens);
    for (text, row) in texts.iter().zip(e.rows()) {
        let head: Vec<String> = row.iter().take(6).map(|v| format!("{v:+.4}")).collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let shown: String =
            if text.chars().count() > 40 { text.chars().take(37).chain("...".chars()).collect() } else { text.clone() };
        println!("  {shown:?}: [{} ...] |v|={norm:.3}", head.join(", "));
    }
}

fn state_name(state: ModelState) -> &'static str {
    match state {
        ModelState::Unloaded => "unloaded",
        ModelState::Loading => "loading",
        ModelState::Ready => "ready",
        ModelState::Unloading => "unloading",
        ModelState::Failed => "failed",
    }
}

fn model_json(m: &ModelInfo) -> serde_json::Value {
    json!({
        "name": m.name,
        "kind": format!("{:?}", m.kind).to_lowercase(),
        "state": state_name(m.state),
        "source": m.source,
        "leases": m.leases,
        "in_flight": m.in_flight,
        "queue_depth": m.queue_depth,
        "queue_capacity": m.queue_capacity,
        "resident_bytes": m.resident_bytes,
        "idle_ms": m.idle_ms,
        "keep_alive_left_ms": m.keep_alive_left_ms,
        "dim": m.dim,
        "max_seq_len": m.max_seq_len,
        "backend": m.backend,
        "worker_pid": m.worker_pid,
        "last_error": m.last_error,
        "sched": {
            "queued": m.sched.queued,
            "running": m.sched.running,
            "slots": m.sched.slots,
            "admitted": m.sched.admitted,
            "busy": m.sched.busy,
            "shed": m.sched.shed,
            "timeouts": m.sched.timeouts,
            "single_stream": m.sched.single_stream,
            "batches": m.sched.batches,
            "batched_requests": m.sched.batched_requests,
            "service_us": m.sched.service_us,
        },
    })
}

fn status_json(s: &DaemonStatus) -> serde_json::Value {
    json!({
        "daemon_version": s.daemon_version,
        "protocol_version": s.protocol_version,
        "pid": s.pid,
        "uptime_ms": s.uptime_ms,
        "endpoint": s.endpoint,
        "sessions": s.sessions,
        "models": s.models.iter().map(model_json).collect::<Vec<_>>(),
    })
}

fn print_status(s: &DaemonStatus) {
    let uptime = s.uptime_ms / 1000;
    println!(
        "mlxd {} (protocol v{}) pid {} up {}h{:02}m{:02}s at {}, {} session(s)",
        s.daemon_version,
        s.protocol_version,
        s.pid,
        uptime / 3600,
        uptime / 60 % 60,
        uptime % 60,
        s.endpoint,
        s.sessions
    );
    print_models(&s.models);
}

fn print_models(models: &[ModelInfo]) {
    println!(
        "{:<12} {:<10} {:<9} {:>6} {:>6} {:>7} {:>9} {:>7} {:>10}  SOURCE",
        "MODEL", "KIND", "STATE", "LEASES", "IN-FL", "QUEUE", "RESIDENT", "IDLE", "KEEP-ALIVE"
    );
    let seconds = |ms: Option<u64>| ms.map_or_else(|| "-".to_string(), |ms| format!("{}s", ms / 1000));
    for m in models {
        let kind = format!("{:?}", m.kind).to_lowercase();
        let queue = format!("{}/{}", m.queue_depth, m.queue_capacity);
        let resident =
            if m.resident_bytes == 0 { "-".to_string() } else { format!("{} MB", m.resident_bytes / 1_000_000) };
        println!(
            "{:<12} {:<10} {:<9} {:>6} {:>6} {:>7} {:>9} {:>7} {:>10}  {}",
            m.name,
            kind,
            state_name(m.state),
            m.leases,
            m.in_flight,
            queue,
            resident,
            seconds(m.idle_ms),
            seconds(m.keep_alive_left_ms),
            m.source
        );
        let q = &m.sched;
        if q.admitted > 0 {
            let mut line = format!("{:<12} {} admitted, {} busy", "", q.admitted, q.busy);
            if q.shed + q.timeouts > 0 {
                line += &format!(", {} shed, {} timed out", q.shed, q.timeouts);
            }
            if q.batches > 0 {
                line += &format!(", {:.1} requests per batch", q.batched_requests as f64 / q.batches as f64);
            }
            if m.kind == mlxd_client::proto::ModelKind::Generation {
                line += &format!(", streams {}/{}", q.running, q.slots);
                if q.single_stream > 0 {
                    line += &format!(", {} not batched (single-stream fallback)", q.single_stream);
                }
            }
            println!("{line}");
        }
        if let Some(err) = &m.last_error {
            println!("{:<12} last error: {err}", "");
        }
    }
}
