//! One-shot jobs on the MLX thread: embed, rerank, tokenize, detokenize.

use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::{ErrorCode, WireError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::pyerr::python_error;

pub(super) fn run_job(py: Python<'_>, adapter: &Py<PyAny>, job: Job) -> Result<JobOutput, WireError> {
    let adapter = adapter.bind(py);
    let model_error = |err: PyErr| {
        WireError::new(ErrorCode::Internal, format!("model error: {}", python_error(py, "running a job", err)))
    };
    match job {
        Job::Embed { texts, normalize, prompts } => {
            let result = adapter.call_method1("embed", (texts, normalize, prompts)).map_err(model_error)?;
            embeddings_from(&result).map_err(model_error)
        }
        Job::Rerank { queries, documents } => {
            let result = adapter.call_method1("rerank", (queries, documents)).map_err(model_error)?;
            let (scores, tokens): (Vec<f32>, Vec<u32>) = result.extract().map_err(model_error)?;
            Ok(JobOutput::Scores { scores, tokens })
        }
        Job::Tokenize { text, add_special_tokens } => {
            let tokens = adapter.call_method1("tokenize", (text, add_special_tokens)).map_err(model_error)?;
            Ok(JobOutput::Tokens(tokens.extract().map_err(model_error)?))
        }
        Job::Detokenize { tokens } => {
            let text = adapter.call_method1("detokenize", (tokens,)).map_err(model_error)?;
            Ok(JobOutput::Text(text.extract().map_err(model_error)?))
        }
        Job::Generate(_) => Err(WireError::internal("a generation reached the one-shot job path")),
    }
}

/// `(bytes, count, dim, tokens)` from the adapter into row-major f32 vectors.
fn embeddings_from(result: &Bound<'_, PyAny>) -> PyResult<JobOutput> {
    let tuple = result.cast::<PyTuple>()?;
    let raw = tuple.get_item(0)?;
    let raw = raw.cast::<PyBytes>()?.as_bytes();
    let count: u32 = tuple.get_item(1)?.extract()?;
    let dim: u32 = tuple.get_item(2)?.extract()?;
    let tokens: Vec<u32> = tuple.get_item(3)?.extract()?;
    if raw.len() != count as usize * dim as usize * 4 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "adapter returned {} bytes for {count} x {dim} float32 values",
            raw.len()
        )));
    }
    let vectors = raw.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(JobOutput::Embeddings { count, dim, vectors, tokens })
}
