//! Async client for mlxd.
//!
//! # Layout
//!
//! - [`connection`]: [`Client`] — connect (socket, or the `mlxd stdio` fallback), the
//!   handshake, and a reader task that routes every answer to the request that awaits it,
//!   so one client can be used from many tasks at once.
//! - `requests`: one method per request family on [`Client`] (`status`, `lease`,
//!   `embed`, ...).
//! - [`handle`]: [`ModelHandle`] — a lease on a model, released when dropped.
//! - [`generate`]: [`GenerationStream`] — tokens as they come, with credit granted as read.
//! - [`error`]: [`ClientError`], what can go wrong.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mlxd_client::ClientError> {
//! let client = mlxd_client::Client::connect().await?;
//! let minilm = client.lease("minilm").await?;
//! let vectors = minilm.embed(vec!["hello world".into()]).await?;
//! assert_eq!(vectors.dim, 384);
//! # Ok(()) }
//! ```

pub mod connection;
pub mod error;
pub mod generate;
pub mod handle;
mod requests;

pub use connection::{Client, ConnectOptions, Endpoint, RetryPolicy, TRUSTED_UIDS_ENV};
pub use error::ClientError;
pub use generate::{GenerationStream, StreamItem};
pub use handle::ModelHandle;
pub use mlxd_proto as proto;
