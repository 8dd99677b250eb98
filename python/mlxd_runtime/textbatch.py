"""Tokenisation and length batching shared by the embedding and rerank adapters.

A model's tokenizer is loaded as sentence-transformers loads it (transformers'
AutoTokenizer, whose class may rebuild parts of tokenizer.json), and then driven through
its `tokenizers` backend directly: no padding (batches are padded here), truncation at the
model's serving limit. Texts are then grouped by token length, and each group split into
forward passes of a bounded number of padded tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

# Padded tokens in one forward pass; larger batches run as several passes. On a CPU the
# cost is linear in tokens, so passes of 1024 tokens lose nothing and bound the activations
# (~6 MiB a tensor at MiniLM's size, whatever the batch); a GPU needs larger passes to be busy.
TOKENS_PER_FORWARD = {"cpu": 1024, "gpu": 8192}


@dataclass
class TextTokenizer:
    """A model's tokenizer as the adapters use it."""

    backend: "tokenizers.Tokenizer"  # noqa: F821 (imported lazily)
    special_ids: frozenset[int]  # transformers' all_special_ids
    type_ids: bool  # whether the model is given token type ids (transformers' model_input_names)
    model_max_length: int  # tokenizer_config.json's (a huge number when it names none)
    direction: str = "right"  # the side truncation cuts (transformers' truncation_side)

    def limit(self, max_len: int) -> None:
        """Serve at most `max_len` tokens a sequence (pairs: longest first, as transformers)."""
        self.backend.enable_truncation(max_length=max_len, strategy="longest_first", direction=self.direction)

    def prompt_length(self, prompt: str) -> int:
        """The prompt's token count as sentence-transformers counts it to exclude a prompt
        from pooling: the prompt tokenised alone (special tokens included, truncated), less a
        trailing special token (the [SEP]/</s>/<|endoftext|> a lone text ends with)."""
        ids = self.backend.encode(prompt, add_special_tokens=True).ids
        n = len(ids)
        if n and ids[-1] in self.special_ids:
            n -= 1
        return n

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(model_dir: Path, do_lower_case: bool = False) -> TextTokenizer:
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    if not getattr(hf, "is_fast", False) or getattr(hf, "backend_tokenizer", None) is None:
        raise ValueError(f"{model_dir}: the tokenizer has no `tokenizers` backend (tokenizer.json)")
    backend = hf.backend_tokenizer
    # tokenizer.json files often carry the training-time padding/truncation: the batches
    # are padded here, and truncation is set by limit().
    backend.no_padding()
    backend.no_truncation()
    if do_lower_case:
        # sentence_bert_config.json's do_lower_case, applied as sentence-transformers does:
        # a Lowercase normaliser in front, unless the normaliser already has one.
        current = backend.normalizer
        if isinstance(current, normalizers.Sequence):
            members = [current[i] for i in range(len(current))]
        else:
            members = [current] if current is not None else []
        if not any(isinstance(m, normalizers.Lowercase) for m in members):
            backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *members])
    tok = TextTokenizer(
        backend=backend,
        special_ids=frozenset(int(i) for i in hf.all_special_ids),
        type_ids="token_type_ids" in getattr(hf, "model_input_names", ()),
        model_max_length=int(min(hf.model_max_length, 1 << 40)),
        direction="left" if getattr(hf, "truncation_side", "right") == "left" else "right",
    )
    return tok


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[mx.array, mx.array]:
    """Right-pads token rows into (ids int32, mask float32 with 1 on real tokens)."""
    width = max(len(r) for r in rows)
    ids = [r + [pad_id] * (width - len(r)) for r in rows]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    return mx.array(ids, dtype=mx.int32), mx.array(mask, dtype=mx.float32)


def passes(lengths: list[int], budget: int) -> list[list[int]]:
    """The forward passes for texts of these token lengths: indices grouped by similar
    length, each group cut into runs of at most `budget` padded tokens."""
    return [chunk for group in _length_buckets(lengths) for chunk in _chunks(group, lengths, budget)]


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
