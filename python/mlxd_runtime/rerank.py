"""Rerankers: BERT-family cross-encoders with one label, run in MLX.

A cross-encoder reads a (query, document) pair as one sequence and gives one logit;
the score is its sigmoid, what sentence-transformers' ``CrossEncoder.predict`` returns for
a one-label model with its default activation. Supported: ``BertForSequenceClassification``
(pooler dense + tanh on [CLS], then ``classifier``),
``RobertaForSequenceClassification``/``XLMRobertaForSequenceClassification``
(``classifier.dense`` + tanh on <s>, then ``classifier.out_proj``) and
``DistilBertForSequenceClassification`` (``pre_classifier`` + ReLU on [CLS], then
``classifier``).

Pairs are tokenised as text pairs (``[CLS] q [SEP] d [SEP]``, ``<s> q </s></s> d </s>``,
with the segment ids BERT takes), truncated longest-first to the model's max length (as
transformers does for CrossEncoder), and batched by length like embeddings.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from . import backend, faults, progress
from .bert import ENCODER_FAMILIES, load_encoder, read_config
from .errors import BadRequest
from .textbatch import TOKENS_PER_FORWARD, load_tokenizer, pad_right, passes


class _Head:
    """The classification head on the first token's hidden state."""

    _LAYERS = {
        "bert": ("pooler.dense", "classifier", mx.tanh),
        "roberta": ("classifier.dense", "classifier.out_proj", mx.tanh),
        "distilbert": ("pre_classifier", "classifier", lambda x: mx.maximum(x, 0.0)),
    }

    def __init__(self, family: str, rest: dict[str, mx.array], model_dir: Path):
        *names, self.activation = self._LAYERS[family]
        try:
            self.dense_w = rest.pop(f"{names[0]}.weight")
            self.dense_b = rest.pop(f"{names[0]}.bias")
            self.out_w = rest.pop(f"{names[1]}.weight")
            self.out_b = rest.pop(f"{names[1]}.bias")
        except KeyError as missing:
            raise ValueError(f"{model_dir}: no {missing.args[0]} tensor for the classification head") from None
        if rest:
            raise ValueError(f"{model_dir}: unexpected tensors {sorted(rest)[:5]}")
        if self.out_w.shape[0] != 1:
            raise ValueError(f"{model_dir}: the classifier has {self.out_w.shape[0]} outputs, a reranker one")

    def __call__(self, hidden: mx.array) -> mx.array:
        x = self.activation(hidden[:, 0, :] @ self.dense_w.T + self.dense_b)
        return (x @ self.out_w.T + self.out_b)[:, 0]


class CrossEncoderReranker:
    """The adapter the worker drives for rerank models."""

    def __init__(self, model, cfg, head: _Head, tokenizer, max_seq_len: int, name: str):
        self.model = model
        self.cfg = cfg
        self.head = head
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.name = name
        # Segment ids only where the model has segments (BERT); RoBERTa has one type.
        self.type_ids = tokenizer.type_ids and cfg.type_vocab_size > 1
        self.tokens_per_forward = TOKENS_PER_FORWARD.get(backend(), 8192)

    @classmethod
    def from_dir(cls, path: str, **_options) -> "CrossEncoderReranker":
        model_dir = Path(path)
        raw = read_config(model_dir)
        model_type = raw.get("model_type")
        archs = [str(a) for a in raw.get("architectures") or ()]
        if model_type not in ENCODER_FAMILIES or not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ValueError(
                f"{model_dir}: a reranker is a *ForSequenceClassification model of type "
                f"{', '.join(ENCODER_FAMILIES)}; this is {model_type!r} {archs}"
            )
        labels = len(raw.get("id2label") or {}) or int(raw.get("num_labels", 1))
        if labels != 1:
            raise ValueError(f"{model_dir}: a cross-encoder with {labels} labels; a reranker has one")
        model, cfg, rest = load_encoder(model_dir)
        head = _Head(cfg.family, rest, model_dir)
        tokenizer = load_tokenizer(model_dir)
        max_seq_len = min(tokenizer.model_max_length, cfg.max_position_embeddings, cfg.max_positions)
        tokenizer.limit(max_seq_len)
        return cls(model, cfg, head, tokenizer, max_seq_len, model_dir.name)

    def info(self) -> dict:
        return {"kind": "rerank", "dim": 0, "max_seq_len": self.max_seq_len, "backend": backend()}

    def rerank(self, queries: list[str], documents: list[list[str]]) -> tuple[list[float], list[int]]:
        """Scores every document of documents[i] against queries[i]: (sigmoid of the logit,
        the pair's token count after truncation) a pair, flat, in order."""
        faults.maybe_fail("rerank")
        logits, lengths = self.logits(queries, documents)
        scores = mx.sigmoid(mx.array(logits, dtype=mx.float32)).tolist()
        if faults.wants("rerank", "short") and scores:
            return scores[:-1], lengths[:-1]
        return scores, lengths

    def logits(self, queries: list[str], documents: list[list[str]]) -> tuple[list[float], list[int]]:
        """The raw logits of rerank's pairs, and their token counts."""
        if len(queries) != len(documents):
            raise BadRequest(f"{len(queries)} queries for {len(documents)} document lists")
        pairs = [(q, d) for q, docs in zip(queries, documents) for d in docs]
        if not pairs:
            return [], []
        encodings = self.tokenizer.backend.encode_batch(pairs, add_special_tokens=True)
        lengths = [len(e.ids) for e in encodings]
        logits: list[float] = [0.0] * len(pairs)
        for chunk in passes(lengths, self.tokens_per_forward):
            out = self._score([encodings[i] for i in chunk])
            # Evaluated pass by pass, as embeddings: activations are freed between passes.
            mx.eval(out)
            progress()
            for index, value in zip(chunk, out.tolist()):
                logits[index] = float(value)
        return logits, lengths

    def _score(self, encodings) -> mx.array:
        input_ids, mask = pad_right([e.ids for e in encodings], self.cfg.pad_token_id)
        token_types = None
        if self.type_ids:
            token_types, _ = pad_right([e.type_ids for e in encodings], 0)
        hidden = self.model(input_ids, mask, token_types)
        return self.head(hidden)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, ids: list[int]) -> str:
        if faults.wants("detokenize", "huge"):
            return "x" * (65 << 20)
        return self.tokenizer.decode(ids)
