//! Supervisor ↔ worker link: the messages on the socketpair between `mlxd serve` (or
//! `mlxd stdio`) and each `mlxd worker`. Same framing as the client protocol; both ends are
//! always the same build, so these types are not part of PROTOCOL.md's public contract.
//! Everything both ends of the link must agree on lives here: the messages, the
//! descriptor the worker finds its end on, and the heartbeat rate.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::messages::{GenerateParams, GenerationSummary, LoadStage, ModelKind, PromptInput, TokenLogprobs, ToolCall};

/// The worker's end of the socketpair is always this descriptor number.
pub const WORKER_LINK_FD: i32 = 3;

/// How often a worker tells its supervisor it is alive and how its work progresses (the
/// supervisor's watchdog ticks at the same rate).
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A model kind as `mlxd worker --kind` takes it (and as the Python adapters name it).
pub fn kind_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Embedding => "embedding",
        ModelKind::Generation => "generation",
        ModelKind::Rerank => "rerank",
    }
}

/// Chosen by the supervisor, unique per worker.
pub type JobId = u64;

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run a job; answered by exactly one `FromWorker::Done` with the same id.
    Job { id: JobId, job: Job },
    /// Finish the jobs already sent, then exit.
    Shutdown,
    /// Lets a generation stream produce `events` more token events.
    Credit { id: JobId, events: u32 },
    /// Stops a generation stream after the current step; it ends with a `Done` whose
    /// summary says `Cancelled`. Ignored for jobs that already finished.
    Cancel { id: JobId },
    /// The model a spare worker (`mlxd worker --spare`, started without one, its
    /// interpreter and libraries already imported) is to load; it then reports `Progress`
    /// and `Ready` as a worker started for the model does. Ignored by any other worker.
    Load(ModelToLoad),
}

/// What `mlxd worker` otherwise takes on its command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelToLoad {
    pub name: String,
    pub kind: ModelKind,
    /// The model directory's path, as bytes (a Unix path need not be UTF-8).
    pub path: Vec<u8>,
    pub max_streams: u32,
    pub prompt_cache_bytes: u64,
    /// Tokens of context per generation stream (prompt and output; at most the model's own).
    pub max_context: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Job {
    Embed {
        texts: Vec<String>,
        normalize: bool,
        /// Per text, the name of the model's prompt put before it ("" = none); the daemon
        /// has checked each name is one of the model's.
        prompts: Vec<String>,
    },
    /// Scores of (query, document) pairs: every document of `documents[i]` against
    /// `queries[i]`; answered with `JobOutput::Scores`, documents in order.
    Rerank {
        queries: Vec<String>,
        documents: Vec<Vec<String>>,
    },
    Tokenize {
        text: String,
        add_special_tokens: bool,
    },
    Detokenize {
        tokens: Vec<u32>,
    },
    /// A generation stream: `FromWorker::Token` events within the granted credit, then `Done`.
    Generate(GenerateJob),
}

/// A validated generation request: the daemon has checked the parameters' ranges, and
/// that every stop string is UTF-8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateJob {
    pub input: PromptInput,
    pub params: GenerateParams,
    /// Token events the worker may send before more `Credit` arrives.
    pub credit: u32,
    /// Which part of the prompt cache the stream may read and fill (the client's uid):
    /// a cached prefix is reused only within one partition.
    pub cache_partition: u32,
}

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Load progress, sent before `Ready`.
    Progress { stage: LoadStage, done: u64, total: u64 },
    /// The model is loaded; jobs may be sent.
    Ready(WorkerReady),
    /// The model could not be loaded; the worker exits after sending this.
    LoadFailed { message: String },
    /// The answer to `ToWorker::Job { id, .. }`.
    Done { id: JobId, result: Result<JobOutput, WireError> },
    /// One generated piece of a generation stream (never more than its credit), and the
    /// tool calls the model completed with it.
    Token { id: JobId, text: String, token: Option<u32>, logprobs: Option<TokenLogprobs>, tool_calls: Vec<ToolCall> },
    /// Sent every second from the worker's I/O thread, whatever the MLX thread is doing:
    /// whether it has work, and how long since that work last made progress (a batch
    /// pass, a decoding step, a load stage). The supervisor's watchdog reads these.
    Heartbeat { busy: bool, since_progress_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReady {
    pub pid: u32,
    pub kind: ModelKind,
    pub dim: u32,
    pub max_seq_len: u32,
    /// MLX device the worker computes on ("cpu", "gpu").
    pub backend: String,
    /// Python version of the embedded interpreter, e.g. "3.11.7".
    pub python_version: String,
    /// Generation models: why streams cannot be batched and run one by one instead, or
    /// `None` when they decode together (continuous batching).
    pub single_stream: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobOutput {
    /// `tokens`: each text's token count (after truncation).
    Embeddings {
        count: u32,
        dim: u32,
        vectors: Vec<f32>,
        tokens: Vec<u32>,
    },
    Tokens(Vec<u32>),
    Text(String),
    Generated(GenerationSummary),
    /// Relevance scores (sigmoid of the logit) of a `Rerank` job's documents, in order,
    /// and each pair's token count.
    Scores {
        scores: Vec<f32>,
        tokens: Vec<u32>,
    },
}
