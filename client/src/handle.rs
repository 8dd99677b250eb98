//! Leased model handles. A handle keeps its model loaded for as long as it lives and is
//! only valid on the connection that took it; dropping it releases the lease.

use mlxd_proto::{EmbedRequest, Embeddings, LeaseId, ModelInfo, ModelRef, Priority, Request, Reranked, Response};

use crate::{Client, ClientError};

#[derive(Debug)]
pub struct ModelHandle {
    client: Client,
    lease: LeaseId,
    info: ModelInfo,
    released: bool,
}

impl ModelHandle {
    pub(crate) fn new(client: Client, lease: LeaseId, info: ModelInfo) -> ModelHandle {
        ModelHandle { client, lease, info, released: false }
    }

    pub fn lease_id(&self) -> LeaseId {
        self.lease
    }

    /// The model as it was when the lease was granted.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Embeds `texts` (L2-normalised, interactive priority, the model's default prompt).
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embeddings, ClientError> {
        self.client
            .embed_with(EmbedRequest {
                model: ModelRef::Lease(self.lease),
                texts,
                normalize: true,
                priority: Priority::Interactive,
                deadline_ms: None,
                prompt: None,
            })
            .await
    }

    /// Scores `documents` against `query` (reranking models), best first.
    pub async fn rerank(
        &self,
        query: &str,
        documents: Vec<String>,
        top_n: Option<u32>,
    ) -> Result<Reranked, ClientError> {
        self.client
            .rerank_with(crate::requests::rerank_request(ModelRef::Lease(self.lease), query, documents, top_n))
            .await
    }

    pub async fn tokenize(&self, text: &str) -> Result<Vec<u32>, ClientError> {
        self.client.tokenize(ModelRef::Lease(self.lease), text).await
    }

    /// Releases the lease and waits for the daemon to confirm.
    pub async fn release(mut self) -> Result<(), ClientError> {
        self.released = true;
        match self.client.call(Request::Release { lease: self.lease }).await? {
            Response::Released => Ok(()),
            other => Err(crate::connection::unexpected(&other)),
        }
    }
}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        if !self.released {
            // Best effort without blocking; if it cannot be sent, the daemon releases the
            // lease anyway when this connection ends.
            self.client.send_and_forget(Request::Release { lease: self.lease });
        }
    }
}
