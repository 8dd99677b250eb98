//! Generation streams on the client: tokens arrive as the daemon produces them, and the
//! stream grants credit as it is read, so a reader that stops also stops its stream (and
//! only its stream) at the daemon.

use mlxd_proto::{
    ClientMessage, Event, GenerateRequest, GenerationSummary, Request, RequestId, Response, ServerMessage,
};
use tokio::sync::mpsc;

use crate::connection::{unexpected, Client};
use crate::ClientError;

/// Credit the client keeps granted ahead of what it has read.
pub const STREAM_WINDOW: u32 = 32;

/// One thing a generation stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A piece of text, the token that completed it, and its log probabilities when the
    /// request asked for them (`GenerateParams::logprobs`).
    Token { text: String, token: Option<u32>, logprobs: Option<mlxd_proto::TokenLogprobs> },
    /// A tool call the model made (`GenerateParams::tools`), once complete. Since v7.
    ToolCall(mlxd_proto::ToolCall),
    /// The end: why it stopped and how fast it went.
    Done(GenerationSummary),
}

/// A running generation. Dropping it before the end cancels it at the daemon.
#[derive(Debug)]
pub struct GenerationStream {
    client: Client,
    id: RequestId,
    events: mpsc::Receiver<ServerMessage>,
    read_since_grant: u32,
    finished: bool,
}

impl Client {
    /// Starts a generation; read it with [`GenerationStream::next`]. `initial_credit` in the
    /// request is replaced by the client's own window.
    pub async fn generate(&self, mut request: GenerateRequest) -> Result<GenerationStream, ClientError> {
        request.initial_credit = STREAM_WINDOW;
        // Room for the whole window, every tool call a stream may make (they cost no
        // credit; at most MAX_TOOLS) and load-progress events, so nothing is ever dropped.
        let room = STREAM_WINDOW as usize + mlxd_proto::bounds::MAX_TOOLS as usize + 32;
        let (id, events) = self.start_request(Request::Generate(request), room).await?;
        Ok(GenerationStream { client: self.clone(), id, events, read_since_grant: 0, finished: false })
    }
}

impl GenerationStream {
    /// The next token or the final summary; `None` after the summary.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ClientError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let Some(message) = self.events.recv().await else {
                self.finished = true;
                return Err(ClientError::Closed);
            };
            match message {
                ServerMessage::Event { event: Event::Token { text, token, logprobs }, .. } => {
                    self.read_since_grant += 1;
                    if self.read_since_grant >= STREAM_WINDOW / 2 {
                        let events = std::mem::take(&mut self.read_since_grant);
                        self.client.send_control(ClientMessage::Credit { id: self.id, events }).await;
                    }
                    return Ok(Some(StreamItem::Token { text, token, logprobs }));
                }
                ServerMessage::Event { event: Event::ToolCall(call), .. } => {
                    return Ok(Some(StreamItem::ToolCall(call)))
                }
                ServerMessage::Event { event: Event::LoadProgress(_), .. } => continue,
                ServerMessage::Response { body: Response::Generated(summary), .. } => {
                    self.finished = true;
                    self.client.forget(self.id);
                    return Ok(Some(StreamItem::Done(summary)));
                }
                ServerMessage::Response { body, .. } => {
                    self.finished = true;
                    return Err(unexpected(&body));
                }
                ServerMessage::Error { error, .. } => {
                    self.finished = true;
                    return Err(ClientError::Wire(error));
                }
                other => {
                    self.finished = true;
                    return Err(ClientError::Wire(mlxd_proto::WireError::internal(format!(
                        "misrouted frame {other:?}"
                    ))));
                }
            }
        }
    }

    /// Asks the daemon to stop; the stream then ends with a `Cancelled` summary.
    pub async fn cancel(&self) {
        self.client.send_control(ClientMessage::Cancel { id: self.id }).await;
    }

    /// Frames received and not yet read (at most the credit window, plus load progress).
    pub fn buffered(&self) -> usize {
        self.events.len()
    }

    pub fn request_id(&self) -> RequestId {
        self.id
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        if !self.finished {
            self.client.cancel_and_forget(self.id);
        }
    }
}
