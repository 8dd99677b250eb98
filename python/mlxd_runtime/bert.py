"""BERT sentence encoder in mlx.nn (all-MiniLM-L6-v2 and other BERT-family embedders).

Matches sentence-transformers' pipeline for such models: WordPiece tokenisation from the
model's tokenizer.json, truncation at the model's max sequence length, a BERT encoder,
mean pooling over the attention mask, then optional L2 normalisation.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from . import backend, eval_with_progress, faults, progress


# erf as an odd rational function of x on [-4, 4] (erf is +-1 in float32 beyond): the
# approximation Eigen and XLA use for float32, within 5e-7 of the true erf (as close as
# mx.erf). MLX's CPU backend evaluates erf/exp element by element at ~40 ns each, which
# made GELU two thirds of the encoder's time on a batch; this form is only multiplies and
# adds, which MLX vectorises (and compiles into one kernel on GPUs). ~8x faster on CPU.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def erf(x: mx.array) -> mx.array:
    x = mx.clip(x, -4.0, 4.0)
    x2 = x * x
    p = x2 * _ERF_P[0] + _ERF_P[1]
    for c in _ERF_P[2:]:
        p = p * x2 + c
    q = x2 * _ERF_Q[0] + _ERF_Q[1]
    for c in _ERF_Q[2:]:
        q = q * x2 + c
    return x * p / q


@partial(mx.compile, shapeless=True)
def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU, HF's "gelu": x * Phi(x)."""
    return 0.5 * x * (1.0 + erf(x * 0.7071067811865476))


# Padded tokens in one forward pass of the encoder; larger batches run as several passes.
# On a CPU the cost is linear in tokens, so passes of 1024 tokens lose nothing and bound
# the activations (~6 MiB a tensor at MiniLM's size, whatever the batch); a GPU needs
# larger passes to be busy.
TOKENS_PER_FORWARD = {"cpu": 1024, "gpu": 8192}


class BertConfig:
    def __init__(self, raw: dict):
        self.vocab_size = int(raw["vocab_size"])
        self.hidden_size = int(raw["hidden_size"])
        self.num_hidden_layers = int(raw["num_hidden_layers"])
        self.num_attention_heads = int(raw["num_attention_heads"])
        self.intermediate_size = int(raw["intermediate_size"])
        self.max_position_embeddings = int(raw.get("max_position_embeddings", 512))
        self.type_vocab_size = int(raw.get("type_vocab_size", 2))
        self.layer_norm_eps = float(raw.get("layer_norm_eps", 1e-12))
        act = raw.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise ValueError(f"unsupported hidden_act {act!r}")
        self.hidden_act = act
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array) -> mx.array:
        positions = mx.arange(input_ids.shape[1])[None, :]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.norm(x)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, _ = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(batch, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        o = mx.fast.scaled_dot_product_attention(
            q, k, v, scale=1.0 / math.sqrt(self.head_dim), mask=mask
        )
        o = o.transpose(0, 2, 1, 3).reshape(batch, length, -1)
        return self.norm(x + self.out(o))


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        if cfg.hidden_act == "gelu":
            self.act = gelu  # HF "gelu" is the exact erf form
        elif cfg.hidden_act == "relu":
            self.act = nn.relu
        else:
            self.act = nn.gelu_approx

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.attention(x, mask)
        return self.norm(x + self.output(self.act(self.intermediate(x))))


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = [Layer(cfg) for _ in range(cfg.num_hidden_layers)]

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        # Additive mask, broadcast over heads and query positions: padded keys get -inf-ish.
        additive = mx.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(mx.float32)
        x = self.embeddings(input_ids, mx.zeros_like(input_ids))
        for layer in self.layers:
            x = layer(x, additive)
        return x


def _hf_to_mlx_name(name: str) -> str | None:
    """Maps Hugging Face BertModel weight names onto this module tree (None = unused)."""
    if name.startswith("bert."):
        name = name[len("bert.") :]
    if name.startswith("pooler.") or name.endswith("position_ids"):
        return None
    name = name.replace("encoder.layer.", "layers.")
    name = name.replace(".attention.self.", ".attention.")
    name = name.replace(".attention.output.dense.", ".attention.out.")
    name = name.replace(".attention.output.LayerNorm.", ".attention.norm.")
    name = name.replace(".intermediate.dense.", ".intermediate.")
    name = name.replace(".output.dense.", ".output.")
    name = name.replace(".output.LayerNorm.", ".norm.")
    name = name.replace("embeddings.LayerNorm.", "embeddings.norm.")
    return name


def _max_seq_length(model_dir: Path, cfg: BertConfig) -> int:
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.exists():
        value = json.loads(st_cfg.read_text()).get("max_seq_length")
        if value:
            return min(int(value), cfg.max_position_embeddings)
    return cfg.max_position_embeddings


class BertEmbedder:
    """The adapter the worker drives for BERT-family embedding models."""

    def __init__(self, model: Bert, tokenizer, max_seq_len: int, dim: int, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.dim = dim
        self.name = name
        # Most padded tokens in one forward pass (see embed); the cost on CPU is linear in
        # tokens, so smaller passes lose nothing there and bound the activations.
        self.tokens_per_forward = TOKENS_PER_FORWARD.get(backend(), 8192)

    @classmethod
    def from_dir(cls, path: str, **_options) -> "BertEmbedder":
        from tokenizers import Tokenizer

        model_dir = Path(path)
        cfg = BertConfig(json.loads((model_dir / "config.json").read_text()))
        weight_files = sorted(model_dir.glob("*.safetensors"))
        if not weight_files:
            raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
        weights: dict[str, mx.array] = {}
        for file in weight_files:
            for name, tensor in mx.load(str(file)).items():
                mapped = _hf_to_mlx_name(name)
                if mapped is not None:
                    weights[mapped] = tensor.astype(mx.float32)
        model = Bert(cfg)
        # strict: a missing or unexpected tensor is a load error, never silent garbage.
        model.load_weights(list(weights.items()), strict=True)
        model.eval()
        eval_with_progress(model.parameters())

        max_seq_len = _max_seq_length(model_dir, cfg)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json files often carry the training-time padding/truncation; replace
        # them with the model's serving limit and pad ourselves per batch.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_seq_len)
        return cls(model, tokenizer, max_seq_len, cfg.hidden_size, model_dir.name)

    def info(self) -> dict:
        return {
            "kind": "embedding",
            "dim": self.dim,
            "max_seq_len": self.max_seq_len,
            "backend": backend(),
        }

    def embed(self, texts: list[str], normalize: bool = True) -> tuple[bytes, int, int, list[int]]:
        faults.maybe_fail("embed")
        if not texts:
            return b"", 0, self.dim, []
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = [len(e.ids) for e in encodings]
        rows: list[mx.array | None] = [None] * len(texts)
        for group in _length_buckets(lengths):
            for chunk in _chunks(group, lengths, self.tokens_per_forward):
                pooled = self._encode([encodings[i].ids for i in chunk], normalize)
                # Evaluated chunk by chunk: a forward pass's activations are freed before
                # the next one, so the worker's memory does not grow with the batch.
                mx.eval(pooled)
                progress()
                for row, index in enumerate(chunk):
                    rows[index] = pooled[row]
        out = mx.stack(rows).astype(mx.float32)
        mx.eval(out)
        if faults.wants("embed", "short"):
            short = out[:-1]
            mx.eval(short)
            return bytes(memoryview(short)), len(texts) - 1, self.dim, lengths[:-1]
        return bytes(memoryview(out)), len(texts), self.dim, lengths

    def _encode(self, token_ids: list[list[int]], normalize: bool) -> mx.array:
        lengths = [len(ids) for ids in token_ids]
        width = max(lengths)
        ids = [row + [0] * (width - len(row)) for row in token_ids]
        mask = [[1] * n + [0] * (width - n) for n in lengths]
        input_ids = mx.array(ids, dtype=mx.int32)
        attention = mx.array(mask, dtype=mx.float32)
        hidden = self.model(input_ids, attention)
        summed = (hidden * attention[:, :, None]).sum(axis=1)
        pooled = summed / mx.maximum(attention.sum(axis=1, keepdims=True), 1e-9)
        if normalize:
            norms = mx.sqrt((pooled * pooled).sum(axis=1, keepdims=True))
            pooled = pooled / mx.maximum(norms, 1e-12)
        return pooled

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def detokenize(self, ids: list[int]) -> str:
        if faults.wants("detokenize", "huge"):
            return "x" * (65 << 20)
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _chunks(group: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Splits a length group (sorted by length) into runs of at most `budget` padded tokens
    (always at least one text)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for index in group:
        if current and (len(current) + 1) * max(lengths[index], lengths[current[-1]]) > budget:
            chunks.append(current)
            current = []
        current.append(index)
    if current:
        chunks.append(current)
    return chunks


def _length_buckets(lengths: list[int], slack: float = 1.25, min_pad: int = 16) -> list[list[int]]:
    """Groups text indices of similar token length so that padding wastes little compute.

    Indices are sorted by length; a group is closed when padding it to its longest member
    would cost more than `slack` times its real tokens (plus `min_pad` tokens of grace).
    On CPU the encoder's cost is linear in padded tokens, so one 256-token text no longer
    makes twenty short ones pay for 256 positions each.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        n = lengths[index]
        if current and (len(current) + 1) * n > slack * (real + n) + min_pad:
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += n
    if current:
        groups.append(current)
    return groups
