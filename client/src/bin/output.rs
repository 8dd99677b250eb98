//! `--json` and plain output of mlxctl's answers.

use std::io::Write;

use mlxd_client::proto::{DaemonStatus, Embeddings, ModelInfo};

use crate::view;
use serde_json::json;

pub fn print_json(value: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, value);
    let _ = writeln!(stdout);
}

pub fn embeddings_json(e: &Embeddings) -> serde_json::Value {
    let rows: Vec<&[f32]> = e.rows().collect();
    json!({ "model": e.model, "count": e.count, "dim": e.dim, "prompt_tokens": e.prompt_tokens, "embeddings": rows })
}

pub fn print_embeddings(texts: &[String], e: &Embeddings) {
    println!("{}: {} vector(s) of {} dims, {} tokens", e.model, e.count, e.dim, e.prompt_tokens);
    for (text, row) in texts.iter().zip(e.rows()) {
        let head: Vec<String> = row.iter().take(6).map(|v| format!("{v:+.4}")).collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let shown: String =
            if text.chars().count() > 40 { text.chars().take(37).chain("...".chars()).collect() } else { text.clone() };
        println!("  {shown:?}: [{} ...] |v|={norm:.3}", head.join(", "));
    }
}

pub fn model_json(m: &ModelInfo) -> serde_json::Value {
    json!({
        "name": m.name,
        "kind": format!("{:?}", m.kind).to_lowercase(),
        "state": view::state_name(m.state),
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
        "prompts": m.prompts,
        "default_prompt": m.default_prompt,
        "estimated_bytes": m.estimated_bytes,
        "tools": m.tools,
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

pub fn status_json(s: &DaemonStatus) -> serde_json::Value {
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
