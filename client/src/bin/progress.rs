//! `mlxctl load`'s progress display, fed by the daemon's load progress events.

use std::io::IsTerminal;

use mlxd_client::proto::{Event, LoadStage};
use serde_json::json;

/// `mlxctl load`'s progress: a bar on a terminal (spinner while the worker starts, bytes
/// of weights as they are materialised), plain lines otherwise, JSON lines with --json.
pub struct LoadBar {
    model: String,
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<(LoadStage, u64, u64)>,
}

impl LoadBar {
    pub fn new(model: &str, json: bool) -> LoadBar {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message(format!("{model}: starting the worker"));
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        });
        LoadBar { model: model.to_owned(), json, bar, last_line: None }
    }

    pub fn update(&mut self, event: Event) {
        let Event::LoadProgress(p) = event else { return };
        if self.json {
            let stage = format!("{:?}", p.stage).to_lowercase();
            super::print_json(&json!({ "model": p.model, "stage": stage, "done": p.done, "total": p.total }));
            return;
        }
        let Some(bar) = &self.bar else {
            // Not a terminal: a line per stage, and per tenth of the weights.
            let tenth = |done: u64, total: u64| done.saturating_mul(10) / total.max(1);
            let new_line = match self.last_line {
                Some((stage, done, total)) => {
                    stage != p.stage || total != p.total || tenth(done, total) != tenth(p.done, p.total)
                }
                None => true,
            };
            if new_line {
                eprintln!("{}: {:?} {}/{}", p.model, p.stage, p.done, p.total);
                self.last_line = Some((p.stage, p.done, p.total));
            }
            return;
        };
        match p.stage {
            LoadStage::Starting => bar.set_message(format!("{}: starting the worker", self.model)),
            // Byte counts (> 1) get a bar; the stage markers (0/1, 1/1) a message.
            LoadStage::Weights if p.total > 1 => {
                if bar.length() != Some(p.total) {
                    bar.set_length(p.total);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({elapsed})",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_message(format!("{}: loading weights", self.model));
                }
                bar.set_position(p.done);
            }
            LoadStage::Weights if p.done == 0 => bar.set_message(format!("{}: importing the runtime", self.model)),
            LoadStage::Weights => bar.set_message(format!("{}: warming up", self.model)),
            LoadStage::Ready => bar.set_message(format!("{}: ready", self.model)),
        }
    }

    pub fn finish(&mut self, ok: bool) {
        if let Some(bar) = self.bar.take() {
            if ok {
                bar.finish_and_clear();
            } else {
                bar.abandon();
            }
        }
    }
}
