"""Text generation with mlx-lm, as independent streams the worker steps one token at a time.

The worker's MLX thread interleaves the streams of all clients of a model: it calls
:meth:`Stream.step` on each stream that has credit, so a client that stops reading pauses
only its own stream (which then costs no compute) while the others go on.

Each stream samples with its own PRNG key, so a seed reproduces its output whatever other
streams run beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx

from . import faults


class BadRequest(ValueError):
    """A request the model cannot serve as asked; reported to the client as BadRequest."""


def _make_sampler(temperature: float, top_p: float, top_k: int, min_p: float, seed: int | None):
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    if temperature <= 0.0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    key = [mx.random.key(seed)]
    inverse_temperature = 1.0 / temperature

    def sampler(logprobs: mx.array) -> mx.array:
        if 0 < top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, top_k)
        if 0.0 < top_p < 1.0:
            logprobs = apply_top_p(logprobs, top_p)
        if min_p > 0.0:
            logprobs = apply_min_p(logprobs, min_p)
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(logprobs * inverse_temperature, key=sub)

    return sampler


class Stream:
    """One generation: call :meth:`step` until it returns a finish reason."""

    def __init__(self, generator: "Generator", prompt_ids: list[int], params: dict):
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors

        self.stop = [s for s in params.get("stop", []) if s]
        self.pending = ""
        self.completion_tokens = 0
        self.prompt_tokens = len(prompt_ids)
        self.prompt_tps = 0.0
        self.generation_tps = 0.0
        self.finished = False
        sampler = _make_sampler(
            float(params.get("temperature", 0.0)),
            float(params.get("top_p", 1.0)),
            int(params.get("top_k", 0)),
            float(params.get("min_p", 0.0)),
            params.get("seed"),
        )
        penalty = float(params.get("repetition_penalty", 1.0))
        processors = make_logits_processors(repetition_penalty=penalty) if penalty != 1.0 else None
        self._responses = stream_generate(
            generator.model,
            generator.tokenizer,
            mx.array(prompt_ids),
            max_tokens=int(params["max_tokens"]),
            sampler=sampler,
            logits_processors=processors,
        )

    def step(self) -> tuple[str, int, str | None]:
        """Decodes one token: (text delta, token id or -1, finish reason or None).

        The text may be empty while a possible stop string is being held back. Finish
        reasons: "stop" (end of sequence or a stop string), "length".
        """
        faults.maybe_fail("step")
        try:
            response = next(self._responses)
        except StopIteration:  # mlx-lm always ends with a final response; be safe anyway
            self.finished = True
            return self.pending, -1, "stop"
        self.prompt_tps = response.prompt_tps
        self.generation_tps = response.generation_tps
        finish = response.finish_reason
        token = response.token
        if finish == "stop":
            token = -1  # the end-of-sequence token is not part of the output
        else:
            self.completion_tokens += 1
        text = self.pending + response.text
        self.pending = ""
        if self.stop:
            hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
            if hits:
                self.close()
                self.finished = True
                return text[: min(hits)], token, "stop"
            if finish is None:
                keep = _held_back(text, self.stop)
                if keep:
                    text, self.pending = text[:-keep], text[-keep:]
        if finish is not None:
            self.finished = True
        return text, token, finish

    def summary(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tps": float(self.prompt_tps),
            "generation_tps": float(self.generation_tps),
        }

    def close(self) -> None:
        self._responses.close()


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

    @classmethod
    def from_dir(cls, path: str, **_options) -> "Generator":
        from mlx_lm import load

        model, tokenizer = load(path)
        config = json.loads((Path(path) / "config.json").read_text())
        max_seq_len = int(config.get("max_position_embeddings", 2048))
        return cls(model, tokenizer, max_seq_len)

    def info(self) -> dict:
        from . import backend

        return {
            "kind": "generation",
            "dim": 0,
            "max_seq_len": self.max_seq_len,
            "backend": backend(),
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
        }

    def prompt_ids(self, raw: str | None, messages: list[tuple[str, str]] | None) -> list[int]:
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise BadRequest("this model has no chat template; send a raw prompt")
            chat = [{"role": role, "content": content} for role, content in messages]
            ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True)
            if isinstance(ids, dict):  # some tokenizers return a BatchEncoding
                ids = ids["input_ids"]
            return list(ids)
        text = raw or ""
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = bos is None or not text.startswith(bos)
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def start(self, raw: str | None, messages: list[tuple[str, str]] | None, params: dict) -> Stream:
        prompt = self.prompt_ids(raw, messages)
        if not prompt:
            raise BadRequest("the prompt is empty")
        if len(prompt) + 1 > self.max_seq_len:
            raise BadRequest(
                f"the prompt is {len(prompt)} tokens; this model's context is {self.max_seq_len} tokens"
            )
        return Stream(self, prompt, params)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))
