//! One method per request family on [`Client`]: the typed front of [`Client::call`].

use mlxd_proto::{
    DaemonStatus, EmbedRequest, Embeddings, Event, LeaseRequest, ModelInfo, ModelRef, Priority, Request, RerankRequest,
    Reranked, Response,
};

use crate::connection::unexpected;
use crate::{Client, ClientError, ModelHandle};

impl Client {
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.call(Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn status(&self) -> Result<DaemonStatus, ClientError> {
        match self.call(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    /// The daemon's Prometheus metrics (OpenMetrics text).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        match self.call(Request::Metrics).await? {
            Response::Metrics(text) => Ok(text),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn models(&self) -> Result<Vec<ModelInfo>, ClientError> {
        match self.call(Request::ListModels).await? {
            Response::Models(models) => Ok(models),
            other => Err(unexpected(&other)),
        }
    }

    /// Leases `model`, loading it if needed; the lease ends when the handle is dropped.
    pub async fn lease(&self, model: &str) -> Result<ModelHandle, ClientError> {
        self.lease_with_progress(model, |_| {}).await
    }

    pub async fn lease_with_progress(
        &self,
        model: &str,
        mut on_progress: impl FnMut(mlxd_proto::LoadProgress),
    ) -> Result<ModelHandle, ClientError> {
        let request = Request::Lease(LeaseRequest { model: model.into(), keep_alive_ms: None });
        let on_event = |event| {
            if let Event::LoadProgress(progress) = event {
                on_progress(progress)
            }
        };
        match self.call_with_events(request, on_event).await? {
            Response::Leased(info) => Ok(ModelHandle::new(self.clone(), info.lease, info.model)),
            other => Err(unexpected(&other)),
        }
    }

    /// Embeds `texts` with the named model (L2-normalised, interactive priority).
    pub async fn embed(&self, model: &str, texts: Vec<String>) -> Result<Embeddings, ClientError> {
        self.embed_with(EmbedRequest {
            model: ModelRef::Name(model.into()),
            texts,
            normalize: true,
            priority: Default::default(),
            deadline_ms: None,
            prompt: None,
        })
        .await
    }

    /// Scores `documents` against `query` with the named reranking model, best first
    /// (all of them, or the best `top_n`).
    pub async fn rerank(
        &self,
        model: &str,
        query: &str,
        documents: Vec<String>,
        top_n: Option<u32>,
    ) -> Result<Reranked, ClientError> {
        self.rerank_with(rerank_request(ModelRef::Name(model.into()), query, documents, top_n)).await
    }

    pub async fn rerank_with(&self, request: RerankRequest) -> Result<Reranked, ClientError> {
        match self.call(Request::Rerank(request)).await? {
            Response::Reranked(reranked) => Ok(reranked),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn embed_with(&self, request: EmbedRequest) -> Result<Embeddings, ClientError> {
        match self.call(Request::Embed(request)).await? {
            Response::Embeddings(embeddings) => Ok(embeddings),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn tokenize(&self, model: ModelRef, text: &str) -> Result<Vec<u32>, ClientError> {
        let request = Request::Tokenize { model, text: text.into(), add_special_tokens: true };
        match self.call(request).await? {
            Response::Tokens(tokens) => Ok(tokens),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn detokenize(&self, model: ModelRef, tokens: Vec<u32>) -> Result<String, ClientError> {
        match self.call(Request::Detokenize { model, tokens }).await? {
            Response::Text(text) => Ok(text),
            other => Err(unexpected(&other)),
        }
    }
}

pub(crate) fn rerank_request(
    model: ModelRef,
    query: &str,
    documents: Vec<String>,
    top_n: Option<u32>,
) -> RerankRequest {
    RerankRequest { model, query: query.into(), documents, top_n, priority: Priority::Interactive, deadline_ms: None }
}
