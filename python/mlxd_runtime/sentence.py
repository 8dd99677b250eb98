"""Embedding models as sentence-transformers defines them, run in MLX.

A sentence-transformers model directory lists its pipeline in ``modules.json``: a
Transformer (the backbone, saved in the directory's root), a Pooling module, then optionally
Dense layers and a Normalize. This module reads those files and runs the same pipeline on a
backbone that is either a BERT-family encoder (:mod:`.bert`: BERT, RoBERTa, XLM-RoBERTa,
DistilBERT) or a decoder language model loaded through mlx-lm (:mod:`.decoder_embed`, e.g.
Qwen3-Embedding).

Files read, in the layouts of sentence-transformers 2.x to 6.x:

- ``modules.json``: module order and folders. Types are recognised by class name
  (``sentence_transformers.models.Pooling`` as 2.x-5.x write it,
  ``sentence_transformers.sentence_transformer.modules.pooling.Pooling`` as 6.x does):
  Transformer (first), Pooling, then Dense, Normalize or Dropout (nothing at inference) in
  any order. Any other module is a load error naming it.
- ``1_Pooling/config.json``: ``pooling_mode`` (a name or a list, concatenated in order) or
  the older ``pooling_mode_*`` flags; modes cls, max, mean, mean_sqrt_len_tokens,
  weightedmean, lasttoken; ``include_prompt``.
- Dense folders: ``config.json`` (in/out features, bias, activation: Tanh, Identity, ReLU,
  Sigmoid, GELU; ``use_residual``) and ``model.safetensors``.
- ``sentence_bert_config.json``: ``max_seq_length``, ``do_lower_case`` (older layouts;
  6.x keeps the length in tokenizer_config.json and bakes lowercasing into the tokenizer),
  and 6.x's ``transformer_task``/``modality_config`` (only plain text inputs are served).
- ``config_sentence_transformers.json``: ``prompts`` and ``default_prompt_name``
  (similarity_fn_name is not used here).

Prompts: ``embed`` takes each text's prompt NAME ("" for none; the daemon has already
resolved the default). The prompt's text is prepended to the text before tokenisation; with
a Pooling module's ``include_prompt: false`` the prompt's tokens (as sentence-transformers
counts them, see :meth:`.textbatch.TextTokenizer.prompt_length`) are left out of pooling.

A directory without modules.json whose config.json names a BERT-family encoder is served as
before sentence-transformers configs were read: mean pooling, no normalisation.

A model with a Normalize module always returns unit vectors (normalisation is part of the
model); ``normalize=True`` normalises in any case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlx.core as mx

from . import backend, faults, progress
from .bert import ENCODER_FAMILIES, load_encoder, read_config
from .errors import BadRequest
from .textbatch import TOKENS_PER_FORWARD, TextTokenizer, load_tokenizer, pad_right, passes

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# The older config keys, in the order their modes are concatenated.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def is_cross_encoder(config: dict) -> bool:
    """Whether config.json describes a sequence-classification model (a reranker)."""
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or ())


def module_class(type_name: str) -> str:
    """The class name of a modules.json ``type`` (sentence-transformers' own modules only)."""
    if not isinstance(type_name, str) or not type_name.startswith("sentence_transformers."):
        raise ValueError(f"unsupported sentence-transformers module type {type_name!r} in modules.json")
    return type_name.rsplit(".", 1)[1]


# --- Pooling ------------------------------------------------------------------------------


@dataclass
class Pooling:
    modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True

    @classmethod
    def from_config(cls, raw: dict, where: str) -> "Pooling":
        if "pooling_mode" in raw:
            value = raw["pooling_mode"]
            modes = (value,) if isinstance(value, str) else tuple(value)
        else:
            modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if raw.get(key))
            flagged = [k for k, v in raw.items() if k.startswith("pooling_mode_") and v and k not in _LEGACY_POOLING_KEYS]
            if flagged:
                raise ValueError(f"{where}: unsupported pooling mode {flagged[0]!r}")
            modes = modes or ("mean",)
        for mode in modes:
            if mode not in POOLING_MODES:
                raise ValueError(
                    f"{where}: unsupported pooling mode {mode!r} (supported: {', '.join(POOLING_MODES)})"
                )
        if not modes:
            raise ValueError(f"{where}: no pooling mode")
        return cls(modes=modes, include_prompt=bool(raw.get("include_prompt", True)))

    def __call__(self, hidden: mx.array, mask: mx.array, prompt_lengths: list[int]) -> mx.array:
        """Pools (batch, length, hidden) token states over `mask` (1 on real tokens) into
        (batch, modes * hidden), as sentence-transformers' Pooling does on padded input."""
        batch, length, _ = hidden.shape
        positions = mx.arange(length)[None, :]
        first = mx.argmax(mask, axis=1).astype(mx.int32)[:, None]  # first real token (left padding)
        pool = mask
        if not self.include_prompt and any(prompt_lengths):
            skip = mx.array(prompt_lengths, dtype=mx.int32)[:, None]
            pool = mask * (positions >= first + skip)
        out = []
        for mode in self.modes:
            if mode == "cls":
                index = mx.argmax(pool, axis=1).astype(mx.int32)
                out.append(_gather_rows(hidden, index))
            elif mode == "max":
                out.append(mx.where(pool[:, :, None] > 0, hidden, -mx.inf).max(axis=1))
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                total = (hidden * pool[:, :, None]).sum(axis=1)
                count = mx.maximum(pool.sum(axis=1, keepdims=True), 1e-9)
                out.append(total / (count if mode == "mean" else mx.sqrt(count)))
            elif mode == "weightedmean":
                # Position weights 1, 2, ... from the first real token; an excluded prompt
                # keeps the weights of the tokens after it.
                weights = (positions + 1 - first).astype(mx.float32) * pool
                total = (hidden * weights[:, :, None]).sum(axis=1)
                out.append(total / mx.maximum(weights.sum(axis=1, keepdims=True), 1e-9))
            else:  # lasttoken: each row's last pooled token, whichever side was padded
                index = (length - 1 - mx.argmax(pool[:, ::-1], axis=1)).astype(mx.int32)
                out.append(_gather_rows(hidden * pool[:, :, None], index))
        return out[0] if len(out) == 1 else mx.concatenate(out, axis=-1)


def _gather_rows(hidden: mx.array, index: mx.array) -> mx.array:
    return mx.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0, :]


# --- Dense, Normalize ---------------------------------------------------------------------


def _gelu(x: mx.array) -> mx.array:
    from .bert import gelu

    return gelu(x)


_ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "Tanh": mx.tanh,
    "Identity": lambda x: x,
    "ReLU": lambda x: mx.maximum(x, 0.0),
    "Sigmoid": mx.sigmoid,
    "GELU": _gelu,
}


class Dense:
    """sentence-transformers' Dense: activation(x W^T + b), plus x (or a projection of it)
    with use_residual."""

    def __init__(self, folder: Path):
        raw = json.loads((folder / "config.json").read_text())
        self.in_features = int(raw["in_features"])
        self.out_features = int(raw["out_features"])
        for key in ("module_input_name", "module_output_name"):
            if raw.get(key, "sentence_embedding") != "sentence_embedding":
                raise ValueError(f"{folder}: a Dense module on {raw[key]!r} is not supported")
        activation = str(raw.get("activation_function") or "torch.nn.modules.activation.Tanh")
        name = activation.rsplit(".", 1)[-1]
        if not activation.startswith("torch.") or name not in _ACTIVATIONS:
            raise ValueError(
                f"{folder}: unsupported Dense activation {activation!r} (supported: {', '.join(_ACTIVATIONS)})"
            )
        self.activation = _ACTIVATIONS[name]
        weights_file = folder / "model.safetensors"
        if not weights_file.exists():
            raise FileNotFoundError(f"{folder}: no model.safetensors (Dense weights in pytorch_model.bin are not read)")
        weights = {k: v.astype(mx.float32) for k, v in mx.load(str(weights_file)).items()}
        self.weight = weights.pop("linear.weight")
        self.bias = weights.pop("linear.bias", None)
        if bool(raw.get("bias", True)) != (self.bias is not None):
            raise ValueError(f"{folder}: config.json and the weights disagree on the bias")
        self.use_residual = bool(raw.get("use_residual", False))
        self.residual = weights.pop("residual.weight", None) if self.use_residual else None
        if self.use_residual and self.in_features != self.out_features and self.residual is None:
            raise ValueError(f"{folder}: use_residual without residual.weight")
        if weights:
            raise ValueError(f"{folder}: unexpected tensors {sorted(weights)}")
        if tuple(self.weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{folder}: linear.weight is {tuple(self.weight.shape)}, config says "
                             f"{(self.out_features, self.in_features)}")

    def __call__(self, x: mx.array) -> mx.array:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        y = self.activation(y)
        if self.use_residual:
            y = y + (x if self.residual is None else x @ self.residual.T)
        return y


def l2_normalize(x: mx.array) -> mx.array:
    norms = mx.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / mx.maximum(norms, 1e-12)


# --- The configuration --------------------------------------------------------------------


@dataclass
class SentenceConfig:
    pooling: Pooling = field(default_factory=Pooling)
    post: list = field(default_factory=list)  # Dense and l2_normalize, in modules.json order
    normalizes: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


def read_sentence_config(model_dir: Path) -> SentenceConfig | None:
    """The sentence-transformers pipeline of `model_dir`; None without modules.json."""
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():
        return None
    modules = sorted(json.loads(modules_file.read_text()), key=lambda m: int(m.get("idx", 0)))
    names = [module_class(m.get("type")) for m in modules]
    if not names or names[0] != "Transformer" or modules[0].get("path", "") not in ("", "."):
        raise ValueError(f"{modules_file}: the first module must be a Transformer in the model's root")
    if "Pooling" not in names:
        raise ValueError(f"{modules_file}: no Pooling module, so not a sentence-transformers embedding model")
    cfg = SentenceConfig()
    pooled = False
    for module, name in zip(modules[1:], names[1:]):
        folder = model_dir / module.get("path", "")
        if name == "Pooling" and not pooled:
            where = str(folder / "config.json")
            cfg.pooling = Pooling.from_config(json.loads((folder / "config.json").read_text()), where)
            pooled = True
        elif name == "Dense" and pooled:
            cfg.post.append(Dense(folder))
        elif name == "Normalize" and pooled:
            raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
            if raw.get("module_input_name", "sentence_embedding") != "sentence_embedding":
                raise ValueError(f"{folder}: a Normalize module on {raw['module_input_name']!r} is not supported")
            cfg.post.append(l2_normalize)
            cfg.normalizes = True
        elif name == "Dropout":
            continue  # nothing at inference
        else:
            raise ValueError(f"{modules_file}: unsupported sentence-transformers module {module['type']!r} here")

    st_file = model_dir / "sentence_bert_config.json"
    raw = json.loads(st_file.read_text()) if st_file.exists() else {}
    if raw.get("max_seq_length"):
        cfg.max_seq_length = int(raw["max_seq_length"])
    cfg.do_lower_case = bool(raw.get("do_lower_case", False))
    task = raw.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise ValueError(f"{st_file}: transformer_task {task!r} is not an embedding model's")
    modalities = raw.get("modality_config") or {"text": {}}
    if "text" not in modalities or "message" in modalities:
        raise ValueError(
            f"{st_file}: inputs as {sorted(modalities)}; only plain text inputs are supported "
            "(sentence-transformers would render texts through the chat template)"
        )
    if raw.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise ValueError(f"{st_file}: module_output_name {raw['module_output_name']!r} is not supported")

    model_file = model_dir / "config_sentence_transformers.json"
    raw = json.loads(model_file.read_text()) if model_file.exists() else {}
    if raw.get("model_type", "SentenceTransformer") != "SentenceTransformer":
        raise ValueError(f"{model_file}: a {raw['model_type']} is not an embedding model")
    cfg.prompts = {str(k): str(v) for k, v in (raw.get("prompts") or {}).items() if v is not None}
    cfg.default_prompt_name = raw.get("default_prompt_name")
    return cfg


# --- The adapter --------------------------------------------------------------------------


class EncoderBackbone:
    """A BERT-family encoder as an embedding backbone."""

    def __init__(self, model_dir: Path):
        self.model, self.cfg, _ = load_encoder(model_dir)
        self.hidden_size = self.cfg.hidden_size
        self.pad_id = self.cfg.pad_token_id
        self.max_position_embeddings = self.cfg.max_position_embeddings
        self.max_positions = self.cfg.max_positions

    def __call__(self, input_ids: mx.array, mask: mx.array) -> mx.array:
        return self.model(input_ids, mask)


class SentenceEmbedder:
    """The adapter the worker drives for embedding models."""

    def __init__(self, backbone, tokenizer: TextTokenizer, config: SentenceConfig, max_seq_len: int, name: str):
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.max_seq_len = max_seq_len
        self.name = name
        dim = len(config.pooling.modes) * backbone.hidden_size
        for module in config.post:
            if isinstance(module, Dense):
                if module.in_features != dim:
                    raise ValueError(f"a Dense module takes {module.in_features} features; it is given {dim}")
                dim = module.out_features
        self.dim = dim
        self._prompt_lengths: dict[str, int] = {}
        # Most padded tokens in one forward pass (see embed); the cost on CPU is linear in
        # tokens, so smaller passes lose nothing there and bound the activations.
        self.tokens_per_forward = TOKENS_PER_FORWARD.get(backend(), 8192)

    @classmethod
    def from_dir(cls, path: str, **_options) -> "SentenceEmbedder":
        model_dir = Path(path)
        raw = read_config(model_dir)
        model_type = raw.get("model_type")
        if is_cross_encoder(raw):
            raise ValueError(f"{model_dir} is a cross-encoder ({', '.join(raw['architectures'])}): load it as 'rerank'")
        config = read_sentence_config(model_dir)
        if config is None:
            if model_type not in ENCODER_FAMILIES:
                raise ValueError(
                    f"{model_dir}: no modules.json, and model_type {model_type!r} is not a BERT-family "
                    f"encoder ({', '.join(ENCODER_FAMILIES)}): not an embedding model"
                )
            config = SentenceConfig()  # mean pooling, as before sentence-transformers configs were read
        if model_type in ENCODER_FAMILIES:
            backbone = EncoderBackbone(model_dir)
        else:
            from .decoder_embed import DecoderBackbone

            backbone = DecoderBackbone(model_dir)
        tokenizer = load_tokenizer(model_dir, do_lower_case=config.do_lower_case)
        # As sentence-transformers: sentence_bert_config.json's max_seq_length, else the
        # tokenizer's model_max_length capped at max_position_embeddings; and never past the
        # position table.
        max_seq_len = config.max_seq_length or min(tokenizer.model_max_length, backbone.max_position_embeddings)
        max_seq_len = min(max_seq_len, backbone.max_positions)
        tokenizer.limit(max_seq_len)
        return cls(backbone, tokenizer, config, max_seq_len, model_dir.name)

    def info(self) -> dict:
        return {
            "kind": "embedding",
            "dim": self.dim,
            "max_seq_len": self.max_seq_len,
            "backend": backend(),
        }

    def _prompt(self, name: str) -> str:
        if not name:
            return ""
        try:
            return self.config.prompts[name]
        except KeyError:
            known = ", ".join(repr(n) for n in sorted(self.config.prompts)) or "none"
            raise BadRequest(f"unknown prompt name {name!r}; this model's prompts: {known}") from None

    def _prompt_length(self, prompt: str) -> int:
        if prompt not in self._prompt_lengths:
            self._prompt_lengths[prompt] = self.tokenizer.prompt_length(prompt)
        return self._prompt_lengths[prompt]

    def embed(
        self, texts: list[str], normalize: bool = True, prompts: list[str] | None = None
    ) -> tuple[bytes, int, int, list[int]]:
        faults.maybe_fail("embed")
        if prompts is not None and len(prompts) != len(texts):
            raise BadRequest(f"{len(prompts)} prompt names for {len(texts)} texts")
        if not texts:
            return b"", 0, self.dim, []
        inputs, skip = [], []
        exclude = not self.config.pooling.include_prompt
        for i, text in enumerate(texts):
            prompt = self._prompt(prompts[i]) if prompts is not None else ""
            inputs.append(prompt + text)
            skip.append(self._prompt_length(prompt) if exclude and prompt else 0)
        encodings = self.tokenizer.backend.encode_batch(inputs, add_special_tokens=True)
        lengths = [len(e.ids) for e in encodings]
        rows: list[mx.array | None] = [None] * len(texts)
        for chunk in passes(lengths, self.tokens_per_forward):
            pooled = self._encode([encodings[i].ids for i in chunk], [skip[i] for i in chunk], normalize)
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

    def _encode(self, token_ids: list[list[int]], skip: list[int], normalize: bool) -> mx.array:
        input_ids, mask = pad_right(token_ids, self.backbone.pad_id)
        hidden = self.backbone(input_ids, mask).astype(mx.float32)
        pooled = self.config.pooling(hidden, mask, skip)
        for module in self.config.post:
            pooled = module(pooled)
        if normalize:
            pooled = l2_normalize(pooled)
        return pooled

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, ids: list[int]) -> str:
        if faults.wants("detokenize", "huge"):
            return "x" * (65 << 20)
        return self.tokenizer.decode(ids)
