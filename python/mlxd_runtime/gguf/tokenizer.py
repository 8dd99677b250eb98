"""A Hugging Face tokenizer.json (+ tokenizer_config.json) rebuilt from GGUF tokenizer metadata.

Two GGUF tokenizer models cover the supported architectures:

- `gpt2`: byte-level BPE (Llama 3, Qwen2/3, SmolLM, Phi-4 ...): the tokens are the byte-level
  spellings, `tokenizer.ggml.merges` the merges, and `tokenizer.ggml.pre` names the
  pre-tokenizer (llama.cpp's names, mapped below to the original tokenizer.json's).
- `llama`: SentencePiece BPE (Llama 2, Mistral, Gemma, Phi-3): tokens with scores and token
  types, `<0xNN>` byte-fallback tokens, `▁` for a space. There are no merges in the file; they
  are derived from the scores (a merge's rank is its result's score, as SentencePiece merges
  the best-scoring pair first), which is how transformers converts these tokenizers too.

GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. Control
and unknown tokens become special added tokens, user-defined ones plain added tokens (matched
whole in the text, as llama.cpp does). The beginning-of-text token is added by the
post-processor when `tokenizer.ggml.add_bos_token` says so (llama.cpp's default when the key
is missing: yes for `llama`, no for `gpt2`).
"""

from __future__ import annotations

from .reader import UnsupportedModel

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split(regex: str) -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    }


_DIGITS_THEN_BYTE_LEVEL = {
    "type": "Sequence",
    "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL],
}
# llama.cpp's `tokenizer.ggml.pre` names → (pre-tokenizer, normalizer, ignore_merges) of the
# original tokenizer.json. Llama 3's BPE looks whole pre-tokens up in the vocabulary before
# merging (`ignore_merges`), as llama.cpp does for these names.
PRE_TOKENIZERS: dict[str, tuple[dict, dict | None, bool]] = {
    "default": (_BYTE_LEVEL, None, False),
    "gpt2": (_BYTE_LEVEL, None, False),
    "olmo": (_BYTE_LEVEL, None, False),
    "smollm": (_DIGITS_THEN_BYTE_LEVEL, None, False),
    "starcoder": (_DIGITS_THEN_BYTE_LEVEL, None, False),
    "refact": (_DIGITS_THEN_BYTE_LEVEL, None, False),
    "llama3": (_split(_LLAMA3_SPLIT), None, True),
    "llama-v3": (_split(_LLAMA3_SPLIT), None, True),
    "llama-bpe": (_split(_LLAMA3_SPLIT), None, True),
    "smaug-bpe": (_split(_LLAMA3_SPLIT), None, False),
    "dbrx": (_split(_LLAMA3_SPLIT), None, False),
    "falcon3": (_split(_LLAMA3_SPLIT), None, False),
    "qwen2": (_split(_QWEN2_SPLIT), {"type": "NFC"}, False),
    "deepseek-r1-qwen": (_split(_QWEN2_SPLIT), {"type": "NFC"}, False),
    "tekken": (_split(_TEKKEN_SPLIT), None, False),
    "gpt-4o": (_split(_GPT4O_SPLIT), None, False),
}
SUPPORTED_TOKENIZERS = ("gpt2", "llama")


def _added(tokens: list[str], types: list[int]) -> list[dict]:
    return [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] != USER_DEFINED,
        }
        for i, tok in enumerate(tokens)
        if types[i] in (UNKNOWN, CONTROL, USER_DEFINED)
    ]


def _template(meta: dict, tokens: list[str], add_bos: bool, add_eos: bool) -> dict | None:
    """A TemplateProcessing post-processor adding BOS/EOS as the metadata asks, or None."""
    pieces = {}
    for flag, key in ((add_bos, "tokenizer.ggml.bos_token_id"), (add_eos, "tokenizer.ggml.eos_token_id")):
        index = meta.get(key)
        if flag and isinstance(index, int) and 0 <= index < len(tokens):
            pieces[key] = (tokens[index], index)
    if not pieces:
        return None
    bos = pieces.get("tokenizer.ggml.bos_token_id")
    eos = pieces.get("tokenizer.ggml.eos_token_id")

    def special(piece):
        return [{"SpecialToken": {"id": piece[0], "type_id": 0}}] if piece else []

    def sequence(name, type_id):
        return [{"Sequence": {"id": name, "type_id": type_id}}]

    single = special(bos) + sequence("A", 0) + special(eos)
    pair = single + special(bos) + sequence("B", 1) + special(eos)
    return {
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": {p[0]: {"id": p[0], "ids": [p[1]], "tokens": [p[0]]} for p in (bos, eos) if p},
    }


def _sentencepiece_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[list[str]]:
    """Merges implied by a SentencePiece BPE vocabulary: every split of a normal token into
    two normal tokens, ranked by the merged token's score (best first), ties by id."""
    ids = {}
    for i, tok in enumerate(tokens):
        if types[i] == NORMAL:
            ids.setdefault(tok, i)
    found = []
    for tok, i in ids.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ids and right in ids:
                found.append((-scores[i], i, ids[left], ids[right], left, right))
    found.sort()
    return [[left, right] for *_, left, right in found]


def tokenizer_files(meta: dict, context_length: int) -> tuple[dict, dict]:
    """tokenizer.json and tokenizer_config.json rebuilt from GGUF tokenizer metadata."""
    kind = meta.get("tokenizer.ggml.model")
    if kind not in SUPPORTED_TOKENIZERS:
        raise UnsupportedModel(
            f"GGUF tokenizer model {kind!r} is not supported (supported: {', '.join(SUPPORTED_TOKENIZERS)})"
        )
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise UnsupportedModel("the GGUF file has no tokenizer.ggml.tokens")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise UnsupportedModel(
            f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    template = _template(meta, tokens, add_bos, add_eos)
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)

    if kind == "gpt2":
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise UnsupportedModel(
                f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(PRE_TOKENIZERS))})"
            )
        pre_tokenizer, normalizer, ignore_merges = PRE_TOKENIZERS[pre]
        byte_level_post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        tokenizer = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": _added(tokens, types),
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": (
                {"type": "Sequence", "processors": [byte_level_post, template]} if template else byte_level_post
            ),
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": ignore_merges,
                "vocab": vocab,
                "merges": list(meta.get("tokenizer.ggml.merges") or []),
            },
        }
    else:
        scores = list(meta.get("tokenizer.ggml.scores") or [-float(i) for i in range(len(tokens))])
        if len(scores) != len(tokens):
            raise UnsupportedModel(f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
        space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
        normalizer = (
            {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, replace]}
            if space_prefix
            else replace
        )
        decoders = [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]
        if space_prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        unk = meta.get("tokenizer.ggml.unknown_token_id")
        tokenizer = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": _added(tokens, types),
            "normalizer": normalizer,
            "pre_tokenizer": None,
            "post_processor": template,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": tokens[unk] if isinstance(unk, int) and 0 <= unk < len(tokens) else None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": True,
                "byte_fallback": True,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": _sentencepiece_merges(tokens, scores, types),
            },
        }

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(context_length),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
    }
    for field, key in (
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ):
        index = meta.get(key)
        if isinstance(index, int) and 0 <= index < len(tokens):
            config[field] = tokens[index]
    template_text = meta.get("tokenizer.chat_template")
    if isinstance(template_text, str) and template_text:
        config["chat_template"] = template_text
    return tokenizer, config


# Control tokens llama.cpp ends generation at even when the metadata names only EOS
# (llama-vocab.cpp's end-of-generation list), e.g. Gemma's <end_of_turn>.
_END_OF_GENERATION = (
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "_<EOT>", "<|return|>", "<|call|>", "<end_of_utterance>",
)


def stop_token_ids(meta: dict) -> list[int]:
    """EOS first, then the end-of-turn / end-of-message tokens the file names, then the
    control tokens llama.cpp treats as end of generation: mlx-lm stops at any of them."""
    ids = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = meta.get(key)
        if isinstance(value, int) and value >= 0 and value not in ids:
            ids.append(value)
    tokens = meta.get("tokenizer.ggml.tokens") or []
    types = meta.get("tokenizer.ggml.token_type") or []
    if len(types) == len(tokens):
        wanted = set(_END_OF_GENERATION)
        found = {tok: i for i, tok in enumerate(tokens) if tok in wanted and types[i] in (CONTROL, USER_DEFINED)}
        ids += [found[text] for text in _END_OF_GENERATION if text in found and found[text] not in ids]
    return ids
