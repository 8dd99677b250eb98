//! `mlxctl bench`: a closed-loop or open-loop load generator over N connections.
//!
//! Closed loop: each connection sends its next request when the previous one is answered.
//! Open loop (`--rate R`): requests are started at R per second overall, whatever the
//! answers, each on the next connection in turn, and at most `--max-outstanding` wait at
//! once (more are counted as `dropped` by the generator, not the daemon). Reports
//! throughput, latency percentiles, Busy refusals and errors by code.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlxd_client::proto::{
    ChatMessage, EmbedRequest, ErrorCode, GenerateParams, GenerateRequest, ModelRef, Priority, PromptInput,
};
use mlxd_client::{Client, ClientError, ConnectOptions, StreamItem};
use tokio::sync::Mutex;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model to load (not needed for ping).
    #[arg(long, short)]
    pub model: Option<String>,
    /// What to send: embed, generate, or ping (the protocol round trip, no model).
    #[arg(long, default_value = "embed", value_parser = ["embed", "generate", "ping"])]
    pub kind: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Closed loop: requests each connection keeps in flight (frames pipelined on one
    /// connection).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub pipeline: usize,
    /// Seconds to run [default: 10, or until --requests are done].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Requests to send in all (with --duration too, whichever comes first).
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: most requests outstanding before the generator drops new ones.
    #[arg(long, default_value_t = 4096)]
    pub max_outstanding: usize,
    /// Texts per embed request.
    #[arg(long, default_value_t = 1)]
    pub texts: usize,
    /// Tokens per generation.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    /// Send with batch priority instead of interactive.
    #[arg(long)]
    pub batch_priority: bool,
}

#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    /// How long each Busy refusal took to arrive.
    busy_latencies: Vec<Duration>,
    items: u64,
    busy: u64,
    dropped: u64,
    errors: BTreeMap<String, u64>,
}

pub async fn run(options: ConnectOptions, args: BenchArgs, json: bool) -> Result<(), ClientError> {
    if args.kind != "ping" && args.model.is_none() {
        return Err(ClientError::Wire(mlxd_client::proto::WireError::bad_request(format!(
            "mlxctl bench --kind {} needs --model",
            args.kind
        ))));
    }
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        // No client-side retries: a benchmark counts every Busy the daemon answers.
        let options = ConnectOptions {
            client_name: "mlxctl-bench".into(),
            retry: mlxd_client::RetryPolicy::NONE,
            ..options.clone()
        };
        clients.push(options.connect().await?);
    }
    // Warm up: the model is loaded before the clock starts.
    one_request(&clients[0], &args, 0).await.map(drop)?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let duration = match (args.duration, args.requests) {
        (Some(seconds), _) => Some(seconds),
        (None, Some(_)) => None,
        (None, None) => Some(10.0),
    };
    let deadline = duration.map(|seconds| started + Duration::from_secs_f64(seconds));
    // Requests not yet started, when counted.
    let budget = Arc::new(Budget { left: AtomicU64::new(args.requests.unwrap_or(u64::MAX)), deadline });
    let goal = match (duration, args.requests) {
        (Some(seconds), _) => Goal::Seconds(seconds),
        (None, requests) => Goal::Requests(requests.unwrap_or(0)),
    };
    let progress = tokio::spawn(show_progress(tally.clone(), started, goal, json));
    match args.rate {
        None => {
            let tasks: Vec<_> = (0..clients.len() * args.pipeline.max(1))
                .map(|index| {
                    let client = clients[index % clients.len()].clone();
                    let (args, tally, budget) = (args.clone(), tally.clone(), budget.clone());
                    tokio::spawn(async move {
                        let mut n = 0;
                        while budget.take() {
                            let sent = Instant::now();
                            let result = one_request(&client, &args, index * 1_000_000 + n).await;
                            record(&tally, result, sent.elapsed()).await;
                            n += 1;
                        }
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let outstanding = Arc::new(tokio::sync::Semaphore::new(args.max_outstanding.max(1)));
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let tasks = tokio_util::task::TaskTracker::new();
            let mut n = 0usize;
            loop {
                tick.tick().await;
                if !budget.take() {
                    break;
                }
                let Ok(slot) = outstanding.clone().try_acquire_owned() else {
                    tally.lock().await.dropped += 1;
                    continue;
                };
                let (client, args, tally) = (clients[n % clients.len()].clone(), args.clone(), tally.clone());
                tasks.spawn(async move {
                    let sent = Instant::now();
                    let result = one_request(&client, &args, n).await;
                    record(&tally, result, sent.elapsed()).await;
                    drop(slot);
                });
                n += 1;
            }
            tasks.close();
            tasks.wait().await;
        }
    }
    let elapsed = started.elapsed();
    progress.abort();
    report(&args, &*tally.lock().await, elapsed, json);
    Ok(())
}

/// When to stop: a deadline, a number of requests, or both (whichever comes first).
struct Budget {
    left: AtomicU64,
    deadline: Option<Instant>,
}

impl Budget {
    /// Takes one request's place; false when the run is over.
    fn take(&self) -> bool {
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return false;
        }
        self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
    }
}

/// What the progress bar counts towards.
#[derive(Debug, Clone, Copy)]
enum Goal {
    Seconds(f64),
    Requests(u64),
}

/// One request; returns how many items (texts or tokens) it produced.
async fn one_request(client: &Client, args: &BenchArgs, n: usize) -> Result<u64, ClientError> {
    let priority = if args.batch_priority { Priority::Batch } else { Priority::Interactive };
    let model = args.model.clone().unwrap_or_default();
    if args.kind == "ping" {
        return client.ping().await.map(|()| 1);
    }
    if args.kind == "generate" {
        let request = GenerateRequest {
            model: ModelRef::Name(model),
            input: PromptInput::Chat(vec![ChatMessage::new("user", "Tell me a story.")]),
            params: GenerateParams { max_tokens: args.max_tokens, temperature: 0.0, ..Default::default() },
            initial_credit: 0,
            priority,
            deadline_ms: None,
        };
        let mut stream = client.generate(request).await?;
        let mut tokens = 0;
        while let Some(item) = stream.next().await? {
            if let StreamItem::Token { token: Some(_), .. } = item {
                tokens += 1;
            }
        }
        return Ok(tokens);
    }
    let texts = (0..args.texts).map(|i| format!("benchmark sentence number {n} part {i}")).collect();
    let request = EmbedRequest {
        model: ModelRef::Name(model),
        texts,
        normalize: true,
        priority,
        deadline_ms: None,
        prompt: None,
    };
    Ok(u64::from(client.embed_with(request).await?.count))
}

async fn record(tally: &Mutex<Tally>, result: Result<u64, ClientError>, latency: Duration) {
    let mut tally = tally.lock().await;
    match result {
        Ok(items) => {
            tally.latencies.push(latency);
            tally.items += items;
        }
        Err(ClientError::Wire(err)) if err.code == ErrorCode::Busy => {
            tally.busy += 1;
            tally.busy_latencies.push(latency);
        }
        Err(ClientError::Wire(err)) => *tally.errors.entry(err.code.to_string()).or_default() += 1,
        Err(other) => *tally.errors.entry(format!("client: {other}")).or_default() += 1,
    }
}

async fn show_progress(tally: Arc<Mutex<Tally>>, started: Instant, goal: Goal, json: bool) {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let tally = tally.lock().await;
        let answered = tally.latencies.len() as u64 + tally.busy + tally.errors.values().sum::<u64>();
        let (fraction, label) = match goal {
            Goal::Seconds(total) => {
                let done = started.elapsed().as_secs_f64().min(total);
                (done / total.max(1e-9), format!("{done:4.1}/{total:.0}s"))
            }
            Goal::Requests(total) => (answered as f64 / total.max(1) as f64, format!("{answered}/{total}")),
        };
        let width = 30;
        let filled = ((fraction.clamp(0.0, 1.0)) * width as f64) as usize;
        eprint!(
            "\r[{}{}] {label}  {} ok  {} busy  {} errors ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            tally.latencies.len(),
            tally.busy,
            tally.errors.values().sum::<u64>()
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn report(args: &BenchArgs, tally: &Tally, elapsed: Duration, json: bool) {
    let mut sorted = tally.latencies.clone();
    sorted.sort();
    let seconds = elapsed.as_secs_f64();
    let requests = sorted.len() as f64 / seconds;
    let items = tally.items as f64 / seconds;
    let unit = match args.kind.as_str() {
        "generate" => "tokens",
        "ping" => "pongs",
        _ => "texts",
    };
    let (p50, p90, p99, max) =
        (percentile(&sorted, 0.5), percentile(&sorted, 0.9), percentile(&sorted, 0.99), percentile(&sorted, 1.0));
    let mut busy = tally.busy_latencies.clone();
    busy.sort();
    let (busy_p50, busy_p99, busy_max) = (percentile(&busy, 0.5), percentile(&busy, 0.99), percentile(&busy, 1.0));
    if json {
        let value = serde_json::json!({
            "model": args.model, "kind": args.kind, "connections": args.connections, "pipeline": args.pipeline,
            "mode": args.rate.map_or("closed".to_string(), |r| format!("open {r}/s")),
            "seconds": seconds, "ok": sorted.len(), "requests_per_s": requests,
            format!("{unit}_per_s"): items,
            "latency_ms": { "p50": p50, "p90": p90, "p99": p99, "max": max },
            "busy": tally.busy, "busy_latency_ms": { "p50": busy_p50, "p99": busy_p99, "max": busy_max },
            "dropped_by_generator": tally.dropped, "errors": tally.errors,
        });
        println!("{value}");
        return;
    }
    eprintln!();
    println!(
        "{} x {} on {} ({}), {seconds:.1} s",
        args.connections,
        args.kind,
        args.model.as_deref().unwrap_or("the daemon"),
        args.rate.map_or("closed loop".to_string(), |r| format!("open loop {r}/s"))
    );
    println!("  ok {}  busy {}  dropped by generator {}", sorted.len(), tally.busy, tally.dropped);
    println!("  throughput {requests:.1} req/s, {items:.1} {unit}/s");
    println!("  latency ms  p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  max {max:.1}");
    if tally.busy > 0 {
        println!("  busy answered in ms  p50 {busy_p50:.2}  p99 {busy_p99:.2}  max {busy_max:.2}");
    }
    for (code, count) in &tally.errors {
        println!("  error {code}: {count}");
    }
}
