"""The BERT family of encoders in mlx.nn: BERT, RoBERTa, XLM-RoBERTa and DistilBERT.

One module tree serves them all (post-norm transformer layers); they differ in their
embeddings (RoBERTa counts positions from padding_idx + 1 over the real tokens and has a
single token type, DistilBERT has no token types), in their config keys and weight names
(DistilBERT's ``q_lin``, ``sa_layer_norm``, ``ffn.lin1``...) and in the prefix of their weight
names in sequence-classification checkpoints (``bert.``, ``roberta.``, ``distilbert.``). :func:`load_encoder` reads a Hugging Face directory's config.json and
safetensors into an :class:`Encoder` and hands back the tensors outside the encoder (the
pooler, a classifier head) for the rerank heads; the sentence-transformers pipeline on top
(pooling, Dense, Normalize, prompts) is :mod:`.sentence`, the cross-encoder heads
:mod:`.rerank`.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from . import eval_with_progress

# config.json model_type -> the embedding scheme (and weight prefix) of that family.
ENCODER_FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "distilbert": "distilbert"}


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


class BertConfig:
    def __init__(self, raw: dict):
        model_type = raw.get("model_type", "bert")
        if model_type not in ENCODER_FAMILIES:
            raise ValueError(
                f"model_type {model_type!r} is not a supported encoder (supported: {', '.join(ENCODER_FAMILIES)})"
            )
        self.model_type = model_type
        self.family = ENCODER_FAMILIES[model_type]
        pad = raw.get("pad_token_id")
        self.pad_token_id = int(pad) if pad is not None else (1 if self.family == "roberta" else 0)
        if self.family == "distilbert":
            raw = _distilbert_config(raw)
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

    @property
    def max_positions(self) -> int:
        """The longest sequence the position table covers (RoBERTa's starts after padding_idx)."""
        if self.family == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings


def _distilbert_config(raw: dict) -> dict:
    """DistilBERT's config keys under BERT's names (its layer norms' eps is fixed at 1e-12;
    no token types)."""
    return {
        "vocab_size": raw["vocab_size"],
        "hidden_size": raw["dim"],
        "num_hidden_layers": raw["n_layers"],
        "num_attention_heads": raw["n_heads"],
        "intermediate_size": raw["hidden_dim"],
        "max_position_embeddings": raw.get("max_position_embeddings", 512),
        "type_vocab_size": 0,
        "layer_norm_eps": 1e-12,
        "hidden_act": raw.get("activation", "gelu"),
    }


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        if cfg.type_vocab_size:
            self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.roberta_positions = cfg.family == "roberta"
        self.padding_idx = cfg.pad_token_id

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_type_ids: mx.array) -> mx.array:
        if self.roberta_positions:
            # RoBERTa numbers real tokens from padding_idx + 1; padding sits at padding_idx.
            real = attention_mask.astype(mx.int32)
            positions = mx.cumsum(real, axis=1) * real + self.padding_idx
        else:
            positions = mx.arange(input_ids.shape[1])[None, :]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if "token_type_embeddings" in self:
            x = x + self.token_type_embeddings(token_type_ids)
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

    def __call__(
        self, input_ids: mx.array, attention_mask: mx.array, token_type_ids: mx.array | None = None
    ) -> mx.array:
        """Last hidden states (batch, length, hidden) of right-padded rows; `attention_mask`
        is 1 on real tokens."""
        # Additive mask, broadcast over heads and query positions: padded keys get -inf-ish.
        additive = mx.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(mx.float32)
        if token_type_ids is None:
            token_type_ids = mx.zeros_like(input_ids)
        x = self.embeddings(input_ids, attention_mask, token_type_ids)
        for layer in self.layers:
            x = layer(x, additive)
        return x


_DISTILBERT_NAMES = (
    ("transformer.layer.", "layers."),
    (".attention.q_lin.", ".attention.query."),
    (".attention.k_lin.", ".attention.key."),
    (".attention.v_lin.", ".attention.value."),
    (".attention.out_lin.", ".attention.out."),
    (".sa_layer_norm.", ".attention.norm."),
    (".ffn.lin1.", ".intermediate."),
    (".ffn.lin2.", ".output."),
    (".output_layer_norm.", ".norm."),
    ("embeddings.LayerNorm.", "embeddings.norm."),
)


def _hf_to_mlx_name(name: str, family: str = "bert") -> str | None:
    """Maps a Hugging Face encoder weight name (prefix already stripped) onto this module
    tree; None for what is not the encoder's (pooler, heads, buffers)."""
    body = ("embeddings.", "transformer.") if family == "distilbert" else ("embeddings.", "encoder.")
    if name.endswith("position_ids") or not name.startswith(body):
        return None
    if family == "distilbert":
        for old, new in _DISTILBERT_NAMES:
            name = name.replace(old, new)
        return name
    name = name.replace("encoder.layer.", "layers.")
    name = name.replace(".attention.self.", ".attention.")
    name = name.replace(".attention.output.dense.", ".attention.out.")
    name = name.replace(".attention.output.LayerNorm.", ".attention.norm.")
    name = name.replace(".intermediate.dense.", ".intermediate.")
    name = name.replace(".output.dense.", ".output.")
    name = name.replace(".output.LayerNorm.", ".norm.")
    name = name.replace("embeddings.LayerNorm.", "embeddings.norm.")
    return name


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {model_dir}")
    return json.loads(path.read_text())


def load_encoder(model_dir: Path) -> tuple[Bert, BertConfig, dict[str, mx.array]]:
    """The encoder of a BERT-family directory, its config, and the tensors that are not the
    encoder's (``pooler.*``, ``classifier.*``, ...: names without the family prefix)."""
    model_dir = Path(model_dir)
    cfg = BertConfig(read_config(model_dir))
    weight_files = sorted(model_dir.glob("*.safetensors"))
    if not weight_files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    prefixes = ("bert.", "roberta.", "distilbert.")
    weights: dict[str, mx.array] = {}
    rest: dict[str, mx.array] = {}
    for file in weight_files:
        for name, tensor in mx.load(str(file)).items():
            for prefix in prefixes:
                if name.startswith(prefix):
                    name = name[len(prefix) :]
                    break
            mapped = _hf_to_mlx_name(name, cfg.family)
            if mapped is not None:
                weights[mapped] = tensor.astype(mx.float32)
            elif not name.endswith("position_ids"):
                rest[name] = tensor.astype(mx.float32)
    model = Bert(cfg)
    # strict: a missing or unexpected tensor is a load error, never silent garbage.
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    eval_with_progress(model.parameters())
    return model, cfg, rest


