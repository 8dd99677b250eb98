"""Decoder language models as embedding backbones (Qwen3-Embedding and the like).

The model is built by mlx-lm from the directory's config.json (its ``model_type`` picks the
architecture, quantisation is handled as for generation) and run as one causal forward pass
over a batch; the backbone's output is the inner model's final hidden states, after the
final norm (``model.model(inputs)``), which :mod:`.sentence` pools (last-token pooling for
Qwen3-Embedding) and normalises as the model's modules.json says.

Embedding checkpoints are usually saved from the bare decoder (transformers' ``AutoModel``,
e.g. ``Qwen3Model``): weight names without the ``model.`` prefix mlx-lm's modules carry,
and no ``lm_head``. Both are accepted here, the load otherwise as strict as mlx-lm's.

Padding: rows are right-padded, and the model gets a causal mask that also hides padded
keys (through a stand-in for its KV cache, the one way mlx-lm models take a mask), so each
row's real tokens sit at positions 0..n-1 and attend only to real tokens. Padded query rows
still see the row's real tokens, so no attention row is empty.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from . import eval_with_progress


class _PaddedPass:
    """Stands in for every layer's KV cache during one full forward pass: starts at
    position 0, keeps nothing, and makes the attention mask (causal, padded keys hidden,
    a sliding window where the layer asks for one)."""

    offset = 0

    def __init__(self, key_mask: mx.array):
        self.key_mask = key_mask  # (batch, length) bool, True on real tokens

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return keys, values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None, **_) -> mx.array:
        query = mx.arange(n)[:, None]
        key = mx.arange(n)[None, :]
        allowed = key <= query
        if window_size:
            allowed = allowed & (key > query - window_size)
        return allowed[None, None, :, :] & self.key_mask[:, None, None, :]


def _embedding_classes(config: dict):
    """mlx-lm's classes for `config`, the model's sanitize extended for checkpoints of the
    bare decoder (no ``model.`` prefix, no lm_head)."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)

    class EmbeddingModel(model_class):
        def sanitize(self, weights):
            if weights and not any(k.startswith("model.") for k in weights):
                weights = {k if k.startswith("lm_head.") else f"model.{k}": v for k, v in weights.items()}
            if hasattr(model_class, "sanitize"):
                weights = super().sanitize(weights)
            if "lm_head" in self and not any(k.startswith("lm_head.") for k in weights):
                del self["lm_head"]  # never used: the embedding is the hidden states
            return weights

    return EmbeddingModel, args_class


class DecoderBackbone:
    def __init__(self, model_dir: Path):
        from mlx_lm.utils import load_model

        model, config = load_model(Path(model_dir), lazy=True, get_model_classes=_embedding_classes)
        inner = model.get("model") if isinstance(model, dict) else None
        if inner is None or not hasattr(inner, "layers"):
            raise ValueError(
                f"{model_dir}: mlx-lm's {config.get('model_type')!r} model has no inner decoder "
                "(model.model) to take hidden states from"
            )
        eval_with_progress(model.parameters())
        self.model = model
        self.inner = inner
        self.num_layers = len(inner.layers)
        text_config = config.get("text_config") or config
        self.hidden_size = int(text_config["hidden_size"])
        self.max_position_embeddings = int(text_config.get("max_position_embeddings") or 1 << 40)
        self.max_positions = self.max_position_embeddings
        self.pad_id = 0  # any valid id: padded positions are masked

    def __call__(self, input_ids: mx.array, mask: mx.array) -> mx.array:
        cache = _PaddedPass(mask > 0)
        return self.inner(input_ids, cache=[cache] * self.num_layers)
