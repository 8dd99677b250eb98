//! What `mlxctl status`, `mlxctl top` and `mlxctl metrics` show: the status table, its
//! live refresh, and the OpenMetrics text turned into JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use mlxd_client::proto::{DaemonStatus, ModelInfo, ModelKind, ModelState};
use mlxd_client::{Client, ClientError};
use serde_json::{json, Value};

pub fn state_name(state: ModelState) -> &'static str {
    match state {
        ModelState::Unloaded => "unloaded",
        ModelState::Loading => "loading",
        ModelState::Ready => "ready",
        ModelState::Unloading => "unloading",
        ModelState::Failed => "failed",
    }
}

/// 1536 MiB → "1.5 GiB"; 0 → "-".
pub fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    match n as f64 {
        0.0 => "-".into(),
        b if b >= 1024.0 * MIB => format!("{:.1} GiB", b / (1024.0 * MIB)),
        b => format!("{:.0} MiB", b / MIB),
    }
}

/// 272_000 ms → "4m32s".
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// Requests per second per model between two snapshots (for `top`).
pub type Rates = BTreeMap<String, f64>;

pub fn rates(before: &DaemonStatus, after: &DaemonStatus, elapsed: Duration) -> Rates {
    let seconds = elapsed.as_secs_f64().max(1e-3);
    after
        .models
        .iter()
        .map(|m| {
            let earlier = before.models.iter().find(|b| b.name == m.name).map_or(0, |b| b.sched.admitted);
            (m.name.clone(), m.sched.admitted.saturating_sub(earlier) as f64 / seconds)
        })
        .collect()
}

/// The daemon line and the model table.
pub fn render_status(s: &DaemonStatus, rates: Option<&Rates>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mlxd {} (protocol v{}), pid {}, up {}, {} session(s), at {}",
        s.daemon_version,
        s.protocol_version,
        s.pid,
        duration(s.uptime_ms),
        s.sessions,
        s.endpoint
    );
    out.push_str(&render_models(&s.models, rates));
    out
}

pub fn render_models(models: &[ModelInfo], rates: Option<&Rates>) -> String {
    let mut out = String::new();
    let rate_head = if rates.is_some() { format!(" {:>7}", "REQ/S") } else { String::new() };
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:<9} {:>6} {:>6} {:>9}{rate_head} {:>9} {:>9} {:>10}  BACKEND",
        "MODEL", "KIND", "STATE", "LEASES", "IN-FL", "QUEUE", "MEMORY", "BUDGET", "KEEP-ALIVE"
    );
    for m in models {
        let kind = match m.kind {
            ModelKind::Embedding => "embedding",
            ModelKind::Generation => "generation",
            ModelKind::Rerank => "rerank",
        };
        let queue = format!("{}/{}", m.queue_depth, m.queue_capacity);
        let keep_alive = match (m.state, m.keep_alive_left_ms) {
            (_, Some(ms)) => duration(ms),
            (ModelState::Ready, None) if m.leases + m.in_flight > 0 => "in use".into(),
            (ModelState::Ready, None) => "pinned".into(),
            _ => "-".into(),
        };
        let rate = rates.map_or_else(String::new, |r| format!(" {:>7.1}", r.get(&m.name).copied().unwrap_or(0.0)));
        let backend = if m.backend.is_empty() { "-" } else { &m.backend };
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:<9} {:>6} {:>6} {:>9}{rate} {:>9} {:>9} {:>10}  {backend}",
            m.name,
            kind,
            state_name(m.state),
            m.leases,
            m.in_flight,
            queue,
            bytes(m.resident_bytes),
            bytes(m.estimated_bytes),
            keep_alive,
        );
        if m.tools {
            let _ = writeln!(out, "{:<14} tool calls: its chat template takes tools", "");
        }
        if !m.prompts.is_empty() {
            let default = m.default_prompt.as_deref().map_or_else(String::new, |d| format!(" (default {d})"));
            let _ = writeln!(out, "{:<14} prompts: {}{default}", "", m.prompts.join(", "));
        }
        let q = &m.sched;
        if q.admitted > 0 {
            let mut line = format!("{:<14} {} admitted, {} busy", "", q.admitted, q.busy);
            if q.shed + q.timeouts > 0 {
                let _ = write!(line, ", {} shed, {} timed out", q.shed, q.timeouts);
            }
            if q.batches > 0 {
                let _ = write!(line, ", {:.1} requests per batch", q.batched_requests as f64 / q.batches as f64);
            }
            if m.kind == ModelKind::Generation {
                let _ = write!(line, ", streams {}/{}", q.running, q.slots);
                if q.single_stream > 0 {
                    let _ = write!(line, ", {} not batched (single-stream fallback)", q.single_stream);
                }
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(err) = &m.last_error {
            let _ = writeln!(out, "{:<14} last error: {err}", "");
        }
    }
    out
}

/// `mlxctl top`: the status table, refreshed every `interval` until Ctrl-C (or `iterations`).
pub async fn top(client: &Client, interval: Duration, iterations: Option<u64>) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout();
    // The alternate screen keeps the user's scrollback; it is left again on exit.
    let _ = write!(stdout, "\x1b[?1049h\x1b[?25l");
    let result = async {
        let mut previous: Option<(DaemonStatus, Instant)> = None;
        let mut shown = 0u64;
        loop {
            let status = client.status().await?;
            let now = Instant::now();
            let rates = previous.as_ref().map(|(before, at)| rates(before, &status, now - *at));
            let mut screen = String::from("\x1b[H\x1b[2J");
            let _ = writeln!(
                screen,
                "mlxctl top: every {:.1} s, Ctrl-C to quit{}\n",
                interval.as_secs_f64(),
                if rates.is_none() { " (rates from the next refresh)" } else { "" }
            );
            screen.push_str(&render_status(&status, rates.as_ref()));
            let _ = write!(stdout, "{}", screen.replace('\n', "\r\n"));
            let _ = stdout.flush();
            previous = Some((status, now));
            shown += 1;
            if iterations.is_some_and(|n| shown >= n) {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
    .await;
    let _ = write!(stdout, "\x1b[?25h\x1b[?1049l");
    let _ = stdout.flush();
    result
}

/// OpenMetrics text as JSON: `{family: [{"labels": {...}, "value": v}, ...]}` with each
/// sample under its full name (`_total`, `_bucket`, `_sum`, `_count` included).
pub fn metrics_json(text: &str) -> Value {
    let mut families: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        let value: Value = value.parse::<f64>().map_or_else(|_| json!(value), |v| json!(v));
        families.entry(name.to_owned()).or_default().push(json!({ "labels": labels, "value": value }));
    }
    json!(families)
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_becomes_json() {
        let text = "# TYPE mlxd_requests counter\nmlxd_requests_total{model=\"minilm\",kind=\"embed\",outcome=\"ok\"} 3\nmlxd_sessions 2\nmlxd_x{a=\"q\\\"e\"} 1.5\n# EOF\n";
        let value = metrics_json(text);
        assert_eq!(value["mlxd_requests_total"][0]["labels"]["outcome"], "ok");
        assert_eq!(value["mlxd_requests_total"][0]["value"], 3.0);
        assert_eq!(value["mlxd_sessions"][0]["value"], 2.0);
        assert_eq!(value["mlxd_x"][0]["labels"]["a"], "q\"e");
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(0), "-");
        assert_eq!(bytes(300 << 20), "300 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration(272_000), "4m32s");
        assert_eq!(duration(5_000), "5s");
    }
}
