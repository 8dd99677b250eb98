"""MLX model adapters for mlxd workers.

The Rust worker (`mlxd worker`) embeds CPython on one dedicated thread and calls only
:func:`load` and the methods of the adapter it returns. Every MLX call therefore happens on
that one thread, which is what MLX's per-thread streams require.

Adapter interface (duck-typed, kept deliberately small so the Rust side stays simple):

- ``info() -> dict``: static facts about the loaded model (kind, dim, max_seq_len, backend).
- embedding only: ``embed(texts: list[str], normalize: bool, prompts: list[str] | None)
  -> tuple[bytes, int, int, list[int]]``: row-major float32 vectors, count, dim, and each
  text's token count (its prompt's included). ``prompts[i]`` names one of the model's
  sentence-transformers prompts, or is "" for none; see :mod:`.sentence`.
- rerank only: ``rerank(queries: list[str], documents: list[list[str]]) ->
  tuple[list[float], list[int]]``: every document of ``documents[i]`` scored against
  ``queries[i]`` (sigmoid of the cross-encoder's logit) and each pair's token count, flat,
  in order; see :mod:`.rerank`.
- ``tokenize(text: str, add_special_tokens: bool) -> list[int]``
- ``detokenize(ids: list[int]) -> str``
- generation only: ``batch_engine(max_streams) -> BatchEngine | str`` (continuous
  batching: ``start(job, raw, messages, params, active)``, ``step() -> [(job, text, token,
  finish)]``, ``pause``/``resume``/``cancel(job)``, ``summary(job)``; a string says why the
  model cannot batch), and the single-stream fallback ``start(raw, messages, params) ->
  Stream`` with ``step() -> (text, token, finish)``, ``summary()`` and ``close()``; see
  :mod:`.generate`.
"""

from __future__ import annotations

from typing import Any

from . import faults

__all__ = ["load", "prewarm", "backend", "progress", "set_progress_hook", "eval_with_progress"]


_progress_hook = None


def set_progress_hook(hook) -> None:
    """Installed by the worker: a callable that tells the supervisor's watchdog the work in
    hand moved forward. Without it (tests, in-process use) progress goes nowhere."""
    global _progress_hook
    _progress_hook = hook


def progress(done: int | None = None, total: int | None = None) -> None:
    """Reports progress of long work (a batch pass, a load stage, a prefill chunk). A worker
    busy for longer than the daemon's `stuck_after` without progress is killed. While a
    model loads, `done`/`total` (bytes of weights) also reach clients as load progress."""
    if _progress_hook is not None:
        if done is not None and total is not None:
            _progress_hook(int(done), int(total))
        else:
            _progress_hook()


# Weights are materialised in chunks of about this many bytes, one progress report each.
_EVAL_CHUNK_BYTES = 16 << 20


def eval_with_progress(parameters) -> None:
    """Materialises a model's (lazily loaded) parameters in chunks, reporting the bytes
    done so far after each: the load progress clients see, and the watchdog's sign of life."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    arrays = [array for _, array in tree_flatten(parameters)]
    total = max(1, sum(array.nbytes for array in arrays))
    done, chunk, chunk_bytes = 0, [], 0
    progress(0, total)
    for array in arrays:
        chunk.append(array)
        chunk_bytes += array.nbytes
        if chunk_bytes >= _EVAL_CHUNK_BYTES:
            mx.eval(chunk)
            done += chunk_bytes
            progress(done, total)
            chunk, chunk_bytes = [], 0
    mx.eval(chunk)
    progress(total, total)


def backend() -> str:
    """Names the MLX device the worker computes on ("cpu" or "gpu")."""
    import mlx.core as mx

    return str(mx.default_device().type).split(".")[-1].lower()


def prewarm() -> None:
    """What a spare worker does before it knows its model: imports every library a load
    of either kind needs (MLX and its first array, mlx-lm's loader, generation and cache
    modules, tokenizers, transformers' tokenizer classes), so that a load then costs the
    weights, not the imports."""
    import mlx.core as mx
    import mlx.nn  # noqa: F401

    mx.eval(mx.zeros((1,)))
    import mlx_lm  # noqa: F401
    import mlx_lm.generate  # noqa: F401
    import mlx_lm.models.cache  # noqa: F401
    import mlx_lm.sample_utils  # noqa: F401
    import mlx_lm.utils  # noqa: F401
    import tokenizers  # noqa: F401
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    from . import bert, decoder_embed, generate, rerank, sentence  # noqa: F401


def load(kind: str, path: str, options: dict[str, Any] | None = None):
    """Loads the model at `path` as an adapter of `kind`: "embedding" (a sentence-transformers
    model, encoder or decoder, or a plain BERT-family encoder), "rerank" (a cross-encoder)
    or "generation"."""
    faults.maybe_fail("load")
    options = dict(options or {})
    if kind == "embedding":
        from .sentence import SentenceEmbedder

        adapter = SentenceEmbedder.from_dir(path, **options)
    elif kind == "rerank":
        from .rerank import CrossEncoderReranker

        adapter = CrossEncoderReranker.from_dir(path, **options)
    elif kind == "generation":
        from .generate import Generator

        adapter = Generator.from_dir(path, **options)
    else:
        raise ValueError(f"unsupported model kind {kind!r}; supported: 'embedding', 'rerank', 'generation'")
    if backend() == "cpu":
        import mlx.core as mx

        # On the CPU, MLX's buffer cache keeps freed buffers by size and only grows as new
        # batch shapes come (texts of new lengths, prompts of new sizes): ~300 MiB after a
        # few hundred varied embedding batches. Buffers come from malloc there, which the
        # supervisor sets up to reuse freed memory (MALLOC_*_THRESHOLD_), so the cache is
        # off: as fast, and the worker's memory stays at its working set.
        mx.set_cache_limit(0)
    return adapter
