"""Text generation with mlx-lm.

Two paths, both driven one step at a time by the worker's MLX thread:

- :class:`BatchEngine` (the normal path): continuous batching over mlx-lm's
  BatchGenerator. All streams of a model decode together, one batched forward pass per
  step; streams join and leave between steps.
- :class:`Stream` (the fallback): one stream decoded on its own, for models whose KV
  caches cannot be batched. The worker interleaves such streams token by token.

Either way a stream whose client has no credit costs no compute, and each stream samples
with keys derived from its seed and the token's position, so a seed reproduces its output
whatever other streams run beside it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlx.core as mx

from . import eval_with_progress, faults, progress
from .errors import BadRequest, Unsupported  # noqa: F401 (raised here, imported from here by tests)
from .tools import choice_grammar, family_of, stream_calls, takes_tools, template_messages, template_tools


def _greedy(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


def _mix(seed: int, index: int) -> int:
    """splitmix64 of (seed, index): a well-spread 63-bit seed for one step's key."""
    z = (seed + 0x9E3779B97F4A7C15 * (index + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


class StepSampler:
    """Samples completion token `index` with a key derived from (seed, index).

    Keys depend only on the position, not on how many times the sampler ran before, so a
    stream that is paused and resumed (which re-samples one position) and a stream decoded
    alone or inside a batch produce the same tokens for the same seed.
    """

    def __init__(self, temperature: float, top_p: float, top_k: int, min_p: float, seed: int | None):
        self.inverse_temperature = 1.0 / temperature
        self.top_p, self.top_k, self.min_p = top_p, top_k, min_p
        self.seed = int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else int(seed)
        self.index = 0

    def __call__(self, logprobs: mx.array) -> mx.array:
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        if 0 < self.top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, self.top_k)
        if 0.0 < self.top_p < 1.0:
            logprobs = apply_top_p(logprobs, self.top_p)
        if self.min_p > 0.0:
            logprobs = apply_min_p(logprobs, self.min_p)
        key = mx.random.key(_mix(self.seed, self.index))
        self.index += 1
        return mx.random.categorical(logprobs * self.inverse_temperature, key=key)


def _make_sampler(params: dict):
    """The shared greedy sampler (so greedy streams sample as one batch) or a StepSampler."""
    temperature = float(params.get("temperature", 0.0))
    if temperature <= 0.0:
        return _greedy
    return StepSampler(
        temperature,
        float(params.get("top_p", 1.0)),
        int(params.get("top_k", 0)),
        float(params.get("min_p", 0.0)),
        params.get("seed"),
    )


def _make_processors(params: dict) -> list:
    from mlx_lm.sample_utils import make_logits_processors

    penalty = float(params.get("repetition_penalty", 1.0))
    return make_logits_processors(repetition_penalty=penalty) if penalty != 1.0 else []


class _Stops:
    """Stop strings over a stream's text: cut at the first hit, hold back a possible prefix."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def apply(self, text: str, finish: str | None) -> tuple[str, str | None]:
        text = self.pending + text
        self.pending = ""
        if self.stops:
            hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
            if hits:
                return text[: min(hits)], "stop"
            if finish is None:
                keep = _held_back(text, self.stops)
                if keep:
                    text, self.pending = text[:-keep], text[-keep:]
        return text, finish


def token_logprobs(tokenizer, logprobs: mx.array, token: int, top: int | None):
    """`(token text, its logprob, [(id, text, logprob)] of the `top` most likely, best
    first)` from a step's log-softmax vector (mlx-lm's: after the repetition penalty, before
    temperature and truncation), or None when the request did not ask (`top` None)."""
    if top is None or token < 0:
        return None
    row = logprobs.reshape(-1)
    alternatives = []
    if top > 0:
        k = min(top, row.shape[0])
        ids = mx.argpartition(-row, kth=k - 1)[:k]
        values = row[ids]
        order = mx.argsort(-values)
        ids, values = ids[order].tolist(), values[order].tolist()
        alternatives = [(int(i), tokenizer.decode([int(i)]), float(v)) for i, v in zip(ids, values)]
    return tokenizer.decode([token]), float(row[token].item()), alternatives


class Stream:
    """One generation decoded on its own (the single-stream path): call :meth:`step` until
    it returns a finish reason. Used for models whose caches cannot be batched."""

    def __init__(self, generator: "Generator", prompt_ids: list[int], params: dict):
        from mlx_lm import stream_generate

        self._stops = _Stops(params.get("stop", []))
        self._calls = generator.tool_calls(params)
        self._tokenizer = generator.tokenizer
        self._logprobs = params.get("logprobs")
        self._grammar = generator.constraint(params, len(prompt_ids))
        processors = ([self._grammar] if self._grammar else []) + _make_processors(params)
        self.completion_tokens = 0
        self.prompt_tokens = len(prompt_ids)
        self.prompt_tps = 0.0
        self.generation_tps = 0.0
        self.finished = False
        self._responses = stream_generate(
            generator.model,
            generator.tokenizer,
            mx.array(prompt_ids),
            max_tokens=int(params["max_tokens"]),
            sampler=_make_sampler(params),
            logits_processors=processors or None,
            prompt_progress_callback=lambda *_: progress(),
        )

    def step(self) -> tuple[str, int, str | None, tuple | None, list]:
        """Decodes one token: (text delta, token id or -1, finish reason or None, the
        token's log probabilities if asked, see :func:`token_logprobs`, tool calls it
        completed as (id, name, arguments JSON)).

        The text may be empty while a possible stop string or tool call is being held
        back. Finish reasons: "stop" (end of sequence or a stop string), "length",
        "tool_calls" (stopped after making calls).
        """
        faults.maybe_fail("step")
        try:
            response = next(self._responses)
        except StopIteration:  # mlx-lm always ends with a final response; be safe anyway
            self.finished = True
            text, calls, finish = _split_calls(self._calls, self._stops.apply("", "stop")[0], "stop")
            return text, -1, finish, None, calls
        self.prompt_tps = response.prompt_tps
        self.generation_tps = response.generation_tps
        finish = response.finish_reason
        token = response.token
        if finish == "stop":
            token = -1  # the end-of-sequence token is not part of the output
        else:
            self.completion_tokens += 1
            if finish is None and self._grammar and self._grammar.done_after(self.completion_tokens, token):
                finish = "stop"  # the constrained output is complete
        text, finish = self._stops.apply(response.text, finish)
        if finish is not None:
            if response.finish_reason is None:
                self.close()
            self.finished = True
        text, calls, finish = _split_calls(self._calls, text, finish)
        return text, token, finish, token_logprobs(self._tokenizer, response.logprobs, token, self._logprobs), calls

    def summary(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tps": float(self.prompt_tps),
            "generation_tps": float(self.generation_tps),
        }

    def close(self) -> None:
        self._responses.close()


class _Sequence:
    """A stream of the batch engine: its text state, sampling and, while paused, its cache."""

    def __init__(self, job: int, prompt: list[int], params: dict, detokenizer):
        self.job = job
        self.prompt = prompt
        self.max_tokens = int(params["max_tokens"])
        self.sampler = _make_sampler(params)
        self.processors = _make_processors(params)
        self.stops = _Stops(params.get("stop", []))
        self.calls = None  # a tools.Calls when the stream has tools to call
        self.logprobs = params.get("logprobs")  # None, or how many alternatives per token
        self.grammar = None  # a constrain.Grammar, first of the processors, when constrained
        # The prompt cache is partitioned (by the client's uid): a prefix cached for one
        # partition is never reused by another, so time to first token reveals nothing.
        self.cache_key = f"{_CACHE_KEY}:{int(params.get('cache_partition', 0))}"
        self.detokenizer = detokenizer
        self.uid: int | None = None  # the BatchGenerator's id while in the batch
        self.saved = None  # (cache, tokens in it) while paused after decoding began
        self.last_token: int | None = None
        self.cached_tokens = 0  # prompt tokens taken from the prompt cache
        self.completion_tokens = 0
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    def summary(self) -> dict:
        prompt_s = (self.first_token_at or self.started) - self.started
        decode_s = (self.last_token_at or 0.0) - (self.first_token_at or 0.0)
        return {
            "prompt_tokens": len(self.prompt),
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tps": len(self.prompt) / prompt_s if prompt_s > 0 else 0.0,
            "generation_tps": (self.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0,
        }


# The prompt cache's trie is keyed by "model" too; an engine serves one model, so the key
# only carries the stream's cache partition.
_CACHE_KEY = "model"
# Most prompts kept (bytes bound it too).
_PROMPT_CACHE_ENTRIES = 32


class BatchEngine:
    """Continuous batching over mlx-lm's BatchGenerator.

    Streams join the running batch between decoding steps (:meth:`start`), each with its
    own sampler (seeded per position), logits processors, stop strings and token budget;
    a finished, stopped or cancelled stream leaves it at once. At most `max_streams` decode
    together; more wait inside the generator until a place frees up.

    Flow control: a stream whose client has no credit left is *paused* — taken out of the
    batch with its KV cache, trimmed by the one position whose sample was not delivered —
    and re-inserted when credit comes (:meth:`resume`); it costs no compute meanwhile and
    its output is the same as if it had never paused.

    Prompt cache: the KV cache of every finished stream (prompt and completion) is kept in
    an LRU of at most `prompt_cache_bytes` (mlx-lm's `LRUPromptCache`, a token trie). A new
    stream whose prompt shares a prefix with one of them (a system prompt, the earlier turns
    of a chat, the same prompt again) starts from a copy of that cache and computes only
    the rest. At least one prompt token is always computed, so the first sample comes from
    fresh logits.
    """

    def __init__(self, generator: "Generator", max_streams: int, prompt_cache_bytes: int = 0):
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.models.cache import LRUPromptCache

        self.tokenizer = generator.tokenizer
        self.generator = generator
        eos = sorted(self.tokenizer.eos_token_ids)
        self.batch = BatchGenerator(
            generator.model,
            stop_tokens=[[t] for t in eos],
            sampler=_greedy,
            completion_batch_size=max(1, max_streams),
            prefill_batch_size=max(1, min(8, max_streams)),
        )
        self.prompt_cache = (
            LRUPromptCache(max_size=_PROMPT_CACHE_ENTRIES, max_bytes=prompt_cache_bytes)
            if prompt_cache_bytes > 0
            else None
        )
        self.sequences: dict[int, _Sequence] = {}
        self.by_uid: dict[int, _Sequence] = {}
        self._finished: dict[int, dict] = {}

    def start(self, job: int, raw: str | None, messages, params: dict, active: bool = True) -> None:
        """Adds stream `job`; it joins the batch at the next step unless `active` is false
        (no credit yet), in which case it waits for :meth:`resume`."""
        prompt = self.generator.checked_prompt(raw, messages, params)
        params = self.generator.within_context(prompt, params)
        grammar = self.generator.constraint(params, len(prompt))
        sequence = _Sequence(job, prompt, params, self.tokenizer.detokenizer)
        sequence.calls = self.generator.tool_calls(params)
        if grammar is not None:
            sequence.grammar = grammar
            sequence.processors = [grammar, *sequence.processors]
        self.sequences[job] = sequence
        if active:
            self._insert(sequence)

    def _insert(self, sequence: _Sequence) -> None:
        remaining = sequence.max_tokens - sequence.completion_tokens
        if sequence.saved is None:
            prompt, caches, tokens = self._cached_prefix(sequence)
        else:
            cache, tokens = sequence.saved
            prompt, caches, tokens = [sequence.last_token], [cache], [tokens]
            sequence.saved = None
        if isinstance(sequence.sampler, StepSampler):
            sequence.sampler.index = sequence.completion_tokens
        (uid,) = self.batch.insert(
            [prompt],
            max_tokens=[remaining],
            caches=caches,
            all_tokens=tokens,
            samplers=[sequence.sampler],
            logits_processors=[sequence.processors],
        )
        sequence.uid = uid
        self.by_uid[uid] = sequence

    def _cached_prefix(self, sequence: _Sequence):
        """(tokens to compute, [cache] or None, [tokens in the cache] or None) for a stream
        starting afresh: the longest cached prefix of its prompt is reused."""
        from mlx_lm.models.cache import trim_prompt_cache

        prompt = sequence.prompt
        if self.prompt_cache is None:
            return prompt, None, None
        cache, rest = self.prompt_cache.fetch_nearest_cache(sequence.cache_key, prompt)
        if cache is None:
            return prompt, None, None
        if not rest:  # all of it: compute the last position again to sample from
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        reused = len(prompt) - len(rest)
        sequence.cached_tokens = reused
        return rest, [cache], [prompt[:reused]]

    def _keep(self, sequence: _Sequence, tokens, cache) -> None:
        if self.prompt_cache is not None and cache and tokens:
            self.prompt_cache.insert_cache(sequence.cache_key, list(tokens), cache)

    def active(self) -> int:
        """Streams in the batch (decoding or waiting for their prefill)."""
        return len(self.by_uid)

    def step(self) -> list[tuple[int, str, int, str | None, tuple | None, list]]:
        """One batched decoding step (and any prefill due): (job, text delta, token or -1,
        finish reason or None, log probabilities if the stream asked, tool calls completed)
        for every stream that produced a token."""
        if not self.by_uid:
            return []
        faults.maybe_fail("step")
        _, responses = self.batch.next()
        now = time.perf_counter()
        events = []
        for response in responses:
            sequence = self.by_uid.get(response.uid)
            if sequence is None:
                continue
            sequence.first_token_at = sequence.first_token_at or now
            finish = response.finish_reason
            token = int(response.token)
            detokenizer = sequence.detokenizer
            if finish == "stop":  # an end-of-sequence token: not part of the output
                token = -1
                detokenizer.finalize()
            else:
                sequence.completion_tokens += 1
                sequence.last_token_at = now
                sequence.last_token = token
                detokenizer.add_token(token)
                grammar = sequence.grammar
                if finish is None and grammar and grammar.done_after(sequence.completion_tokens, token):
                    finish = "stop"  # the constrained output is complete: leave the batch now
                if finish is not None:
                    detokenizer.finalize()
            text, finish = sequence.stops.apply(detokenizer.last_segment, finish)
            text, calls, finish = _split_calls(sequence.calls, text, finish)
            if finish is not None:
                if response.finish_reason is None:  # a stop string: leave the batch now
                    saved = self.batch.remove([response.uid], return_prompt_caches=True)
                    cache, tokens = saved.get(response.uid, (None, None))
                else:
                    cache, tokens = response.prompt_cache, response.all_tokens
                self._keep(sequence, tokens, cache)
                self._forget(sequence)
            logprobs = token_logprobs(self.tokenizer, response.logprobs, token, sequence.logprobs)
            events.append((sequence.job, text, token, finish, logprobs, calls))
        return events

    def pause(self, job: int) -> None:
        """Takes stream `job` out of the batch, keeping its cache, until :meth:`resume`."""
        sequence = self.sequences.get(job)
        if sequence is None or sequence.uid is None:
            return
        uid = sequence.uid
        saved = self.batch.remove([uid], return_prompt_caches=True)
        del self.by_uid[uid]
        sequence.uid = None
        cache, tokens = saved[uid]
        if sequence.last_token is None or not tokens or tokens[-1] != sequence.last_token:
            # Not decoding yet (or an unexpected cache): start it over when resumed.
            sequence.saved = None
            sequence.completion_tokens = 0
            sequence.detokenizer.reset()
            return
        # The cache holds the last delivered token; its successor was sampled but not
        # delivered. Drop that position so resuming re-feeds the token and samples again.
        for layer in cache:
            layer.trim(1)
        sequence.saved = (cache, list(tokens[:-1]))

    def resume(self, job: int) -> None:
        sequence = self.sequences.get(job)
        if sequence is not None and sequence.uid is None:
            self._insert(sequence)

    def cancel(self, job: int) -> dict | None:
        """Ends stream `job` now; its summary, or None if it is unknown."""
        sequence = self.sequences.get(job)
        if sequence is None:
            return None
        if sequence.uid is not None:
            self.batch.remove([sequence.uid])
        self._forget(sequence)
        return self._finished.pop(job)

    def summary(self, job: int) -> dict:
        """The summary of a stream that finished in :meth:`step` (once)."""
        return self._finished.pop(job)

    def _forget(self, sequence: _Sequence) -> None:
        if sequence.uid is not None:
            self.by_uid.pop(sequence.uid, None)
        sequence.uid = None
        self.sequences.pop(sequence.job, None)
        self._finished[sequence.job] = sequence.summary()


def _split_calls(calls, text: str, finish: str | None) -> tuple[str, list, str | None]:
    """(text, tool calls, finish) of a piece of output: `calls` (a tools.Calls, or None
    for a stream without tools) takes the calls out of the text."""
    if calls is None:
        return text, [], finish
    return calls.apply(text, finish)


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class Generator:
    """The adapter the worker drives for mlx-lm causal language models."""

    def __init__(self, model, tokenizer, max_seq_len: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        # What sets max_seq_len, for errors.
        self.context_limit = "this model's context"
        self._grammars = None  # compiled constraints, made on the first constrained stream

    @classmethod
    def from_dir(cls, path: str, max_context: int | None = None, **_options) -> "Generator":
        """`max_context`: tokens of context per stream (prompt and output) the daemon
        allows, at most the model's own; the memory budget counted the KV cache for it."""
        from mlx_lm import load

        # lazy: the weights are materialised below in chunks, reporting load progress.
        model, tokenizer = load(path, lazy=True)
        eval_with_progress(model.parameters())
        config = json.loads((Path(path) / "config.json").read_text())
        max_seq_len = int(config.get("max_position_embeddings", 2048))
        generator = cls(model, tokenizer, max_seq_len)
        if max_context and int(max_context) < max_seq_len:
            generator.max_seq_len = int(max_context)
            generator.context_limit = f"the daemon's max_context for it ({max_seq_len} for the model itself)"
        return generator

    def info(self) -> dict:
        from . import backend

        return {
            "kind": "generation",
            "dim": 0,
            "max_seq_len": self.max_seq_len,
            "backend": backend(),
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
        }

    def prompt_ids(self, raw: str | None, messages: list[dict] | None, params: dict | None = None) -> list[int]:
        """The prompt's tokens: `raw` as is, or `messages` (dicts: role, content,
        tool_calls, tool_call_id, name) through the chat template, with the request's
        tools when it has any to call."""
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise Unsupported("this model has no chat template; send a raw prompt")
            tools = template_tools(params or {})
            calls = any(isinstance(m, dict) and (m.get("tool_calls") or m.get("tool_call_id")) for m in messages)
            family = family_of(self.tokenizer) if tools is not None or calls else None
            if tools is not None and not takes_tools(self.tokenizer):
                raise BadRequest(
                    "this model's chat template does not take tools (it has no tool-calling format); "
                    "send the request without tools, or with tool_choice none"
                )
            if tools is not None and family is None:
                raise BadRequest(
                    "this model's chat template takes tools, but its tool-call format is not one mlxd "
                    "can parse; send the request without tools"
                )
            chat = template_messages(messages, family)
            try:
                ids = self.tokenizer.apply_chat_template(chat, tools=tools, add_generation_prompt=True)
            except Exception as err:  # the template's own checks (raise_exception) and errors
                raise BadRequest(f"the chat template refused the conversation: {err}") from None
            if isinstance(ids, dict):  # some tokenizers return a BatchEncoding
                ids = ids["input_ids"]
            return list(ids)
        text = raw or ""
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = bos is None or not text.startswith(bos)
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def checked_prompt(self, raw: str | None, messages: list[dict] | None, params: dict | None = None) -> list[int]:
        prompt = self.prompt_ids(raw, messages, params)
        if not prompt:
            raise BadRequest("the prompt is empty")
        if len(prompt) + 1 > self.max_seq_len:
            raise BadRequest(
                f"the prompt is {len(prompt)} tokens; {self.context_limit} is {self.max_seq_len} tokens"
            )
        return prompt

    def tool_calls(self, params: dict):
        """The stream's :class:`~.tools.Calls` when it has tools to call, else None."""
        return stream_calls(self.tokenizer, params)

    def constraint(self, params: dict, prompt_len: int):
        """The stream's :class:`~.constrain.Grammar` if `params` carry a constraint
        ((kind, text)) or a tool_choice that needs one, or None; BadRequest if it cannot be
        compiled."""
        constraint = params.get("constraint")
        grammar = choice_grammar(family_of(self.tokenizer), params, self.tokenizer)
        if grammar is not None:
            constraint = ("lark", grammar)
        if not constraint:
            return None
        if self._grammars is None:
            from .constrain import Grammars

            self._grammars = Grammars(self.tokenizer)
        kind, text = constraint
        grammar = self._grammars.matcher(kind, text)
        grammar.start(prompt_len)
        return grammar

    def within_context(self, prompt: list[int], params: dict) -> dict:
        """`params` with max_tokens cut so that prompt and output fit the context: a
        stream that reaches the end of its context finishes with "length"."""
        room = self.max_seq_len - len(prompt)
        if int(params["max_tokens"]) <= room:
            return params
        return {**params, "max_tokens": room}

    def start(self, raw: str | None, messages: list[dict] | None, params: dict) -> Stream:
        """A stream on the single-stream path."""
        prompt = self.checked_prompt(raw, messages, params)
        return Stream(self, prompt, self.within_context(prompt, params))

    def batch_engine(self, max_streams: int, prompt_cache_bytes: int = 0) -> "BatchEngine | str":
        """The continuous-batching engine, or why this model cannot use it (its caches must
        merge into a batch, and trim, which pausing a stream needs)."""
        from mlx_lm.models.cache import make_prompt_cache

        for layer in make_prompt_cache(self.model):
            if not hasattr(layer, "merge"):
                return f"{type(layer).__name__} caches cannot be batched"
            if not layer.is_trimmable():
                return f"{type(layer).__name__} caches cannot be trimmed"
        return BatchEngine(self, max_streams, prompt_cache_bytes)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))
