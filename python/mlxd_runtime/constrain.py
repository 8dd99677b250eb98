"""Constrained decoding: a generation whose output must be JSON valid against a schema, any
JSON object, text a regular expression matches, or text a Lark grammar derives.

llguidance (the grammar engine llama.cpp, vLLM and SGLang use) compiles the constraint
against the model's tokenizer and, before each token, says which tokens keep the output
possible. Each stream gets its own matcher and a logits processor (:class:`Grammar`) that
mlx-lm runs on that stream's row only, so streams without a constraint in the same batch
pay nothing, and constrained ones pay a mask (about 1 % of a small model's forward pass on
a CPU here).

Compiled constraints are cached per model (:class:`Grammars`: an LRU of warmed template
matchers keyed by the constraint); a stream gets a copy of its template (a microsecond,
where compiling a large schema takes milliseconds). A constraint llguidance cannot compile
is a :class:`~.errors.BadRequest` naming the problem, before the stream starts.

End of a constrained stream: when the matcher is stopped (the grammar cannot go on: a
closed JSON value) the stream ends "stop"; end-of-sequence is only allowed where the output
is complete; max_tokens before that ends "length" with the partial output, never a
silently invalid "complete" answer.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import mlx.core as mx
import numpy as np

from .errors import BadRequest

KINDS = ("json_schema", "json_object", "regex", "lark")
# Compiled templates kept per model.
CACHE_SIZE = 64
_BITS = mx.arange(32, dtype=mx.uint32)


class Grammars:
    """A model's llguidance tokenizer (built on first use: ~0.5 s for a 50k vocabulary) and
    its cache of compiled constraints."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._lltokenizer = None
        self._templates: OrderedDict[tuple[str, str], object] = OrderedDict()

    def _lltok(self):
        if self._lltokenizer is None:
            import llguidance.hf

            hf = getattr(self._tokenizer, "_tokenizer", self._tokenizer)
            eos = sorted(getattr(self._tokenizer, "eos_token_ids", None) or [])
            self._lltokenizer = llguidance.hf.from_tokenizer(hf, eos_token=eos or None)
        return self._lltokenizer

    def grammar(self, kind: str, text: str) -> str:
        """The llguidance grammar for a constraint, or BadRequest."""
        import llguidance

        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema(
                {"type": "object"}, defaults={"whitespace_flexible": False}
            )
        if kind == "json_schema":
            try:
                schema = json.loads(text)
            except ValueError as err:
                raise BadRequest(f"the JSON schema is not JSON: {err}") from None
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(text)
        if kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(text)
        raise BadRequest(f"unknown constraint kind {kind!r} (known: {', '.join(KINDS)})")

    def matcher(self, kind: str, text: str):
        """A fresh matcher for the constraint: a copy of the cached template."""
        import llguidance

        key = (kind, text)
        template = self._templates.get(key)
        if template is None:
            grammar = self.grammar(kind, text)
            error = llguidance.LLMatcher.validate_grammar(grammar, self._lltok())
            if error:
                what = {"json_schema": "JSON schema", "json_object": "JSON", "regex": "regular expression",
                        "lark": "grammar"}[kind]
                raise BadRequest(f"the {what} cannot be used as a constraint: {error.strip()}")
            limits = llguidance.LLParserLimits(verbose_errors=False)
            template = llguidance.LLMatcher(self._lltok(), grammar, log_level=0, limits=limits)
            if template.is_error():
                raise BadRequest(f"the constraint cannot be used: {template.get_error()}")
            template.compute_bitmask()  # warms the parser: copies start ready
            self._templates[key] = template
            while len(self._templates) > CACHE_SIZE:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(key)
        return Grammar(template.deep_copy(), self._lltok().vocab_size)


class Grammar:
    """One stream's constraint, as an mlx-lm logits processor: `(tokens, logits)`, where
    `tokens` is the stream's context (prompt, then every token fed so far). The tokens after
    the prompt are fed to the matcher (undoing any it saw that the context no longer has: a
    paused stream is fed its last token again), then the logits of tokens that cannot
    follow are set to -inf."""

    def __init__(self, matcher, tokenizer_vocab: int):
        import llguidance.numpy

        self.matcher = matcher
        self.prompt_len: int | None = None
        self.consumed = 0
        self._mask = llguidance.numpy.allocate_token_bitmask(1, tokenizer_vocab)
        self._fill = llguidance.numpy.fill_next_token_bitmask

    def start(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens[self.prompt_len:].tolist() if self.prompt_len is not None else []
        if len(generated) < self.consumed:
            self.matcher.rollback(self.consumed - len(generated))
            self.consumed = len(generated)
        for token in generated[self.consumed:]:
            self.matcher.consume_token(int(token))
        self.consumed = len(generated)
        self._fill(self.matcher, self._mask)
        words = mx.array(self._mask.view(np.uint32))
        allowed = ((words[:, :, None] >> _BITS) & 1).reshape(1, -1)
        width = logits.shape[-1]
        if allowed.shape[-1] >= width:
            allowed = allowed[:, :width]
        else:  # logits wider than the tokenizer: padding rows are never allowed
            allowed = mx.concatenate([allowed, mx.zeros((1, width - allowed.shape[-1]), dtype=allowed.dtype)], axis=1)
        return mx.where(allowed.astype(mx.bool_), logits, -mx.inf)

    def done_after(self, generated: int, token: int) -> bool:
        """Whether the output is complete and nothing may follow (a closed JSON value) once
        the stream's `generated`-th token, `token`, is in (fed here if the processor has not
        seen it yet)."""
        if self.consumed < generated:
            self.matcher.consume_token(int(token))
            self.consumed += 1
        return self.matcher.is_stopped()

    def failed(self) -> str | None:
        return self.matcher.get_error() if self.matcher.is_error() else None
