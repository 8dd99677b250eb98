"""Tiny tokenizers trained here on a fixed corpus, and their GGUF tokenizer metadata written the
way llama.cpp's convert_hf_to_gguf.py writes it (get_vocab_base / _set_vocab_gpt2 for byte-level
BPE, _create_vocab_sentencepiece for SentencePiece).

Each `Reference` encodes with the original tokenizer: the `tokenizers` BPE as trained (with the
pre-tokenizer of the model family, copied from its published tokenizer.json), or the
`sentencepiece` model itself.
"""

from __future__ import annotations

import functools
import io
import json

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "Hello world, hello there! It's a test: we're testing tokenizers, aren't we?",
    "Numbers like 12345, 2024-06-01 and 3.14159 appear in text, as do 007 and 42.",
    "Unicode: café, naïve, façade, Übermensch, Привет мир, 東京, emoji 🙂 too.",
    "def greet(name):\n    return f'Hello, {name}!'\n\nprint(greet('world'))\n",
    "Whitespace   runs,\ttabs\tand\n\nnewlines\n   indented lines and trailing spaces   ",
    "A model answers questions. The assistant is helpful; the user asks things.",
]

SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "It's 2024: 12345 + 678 = 13023",
    "café naïve Привет 東京 🙂 ñ",
    "a  b   c    d",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\n\n\n  indented",
    "def f(x):\n    return x * 2\n",
    "rare bytes: \u00ff\u0100 \u2603 \U0001f680 \x07",
    "decomposed: cafe\u0301 (NFC for Qwen2)",
    "",
]

# Pre-tokenizers of the original tokenizer.json of each family (Meta-Llama-3, Qwen2, SmolLM,
# GPT-2), which llama.cpp names `llama-bpe`, `qwen2`, `smollm` and `gpt2`.
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BPE_KINDS = {
    # kind: (llama.cpp pre name, regex or None, NFC, digits, ignore_merges, specials, user-defined, bos, eos, eot, add_bos)
    "bpe-llama3": ("llama-bpe", _LLAMA3, False, False, True,
                   ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                   [], "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", True),
    "bpe-qwen2": ("qwen2", _QWEN2, True, False, False, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  ["<think>", "</think>"], "<|endoftext|>", "<|im_end|>", None, False),
    "bpe-smollm": ("smollm", None, False, True, False, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                   [], "<|im_start|>", "<|im_end|>", None, False),
    "bpe-gpt2": ("gpt2", None, False, False, False, ["<|endoftext|>"], [], "<|endoftext|>", "<|endoftext|>", None, False),
}
SPM_KINDS = {
    # kind: (add_dummy_prefix, control symbols, eot)
    "spm-llama": (True, ["<|user|>", "<|assistant|>", "<|end|>"], "<|end|>"),
    "spm-gemma": (False, ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<' + message['role'] + '>' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)


class Reference:
    vocab_size: int
    special_ids: dict  # bos_token_id / eos_token_id for the HF config

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def write_metadata(self, writer) -> None:
        raise NotImplementedError

    def plain(self, ids: list[int]) -> list[int]:
        """`ids` without special, unknown and byte-fallback tokens."""
        raise NotImplementedError


class BPEReference(Reference):
    def __init__(self, kind: str):
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

        pre, regex, nfc, digits, ignore_merges, specials, user_defined, bos, eos, eot, add_bos = BPE_KINDS[kind]
        tokenizer = Tokenizer(models.BPE())
        if nfc:
            tokenizer.normalizer = normalizers.NFC()
        if regex:
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
            )
        elif digits:
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
            )
        else:
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=420, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(CORPUS * 4, trainer)
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
        if add_bos:
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, tokenizer.token_to_id(bos))]
            )
        if ignore_merges:
            data = json.loads(tokenizer.to_str())
            data["model"]["ignore_merges"] = True
            tokenizer = Tokenizer.from_str(json.dumps(data))
        self.tokenizer = tokenizer
        self.pre, self.specials, self.user_defined, self.add_bos = pre, specials, user_defined, add_bos
        self.bos, self.eos, self.eot = (tokenizer.token_to_id(t) if t else None for t in (bos, eos, eot))
        self.vocab_size = tokenizer.get_vocab_size()
        self.special_ids = {"bos_token_id": self.bos, "eos_token_id": self.eos}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def plain(self, ids: list[int]) -> list[int]:
        specials = {self.tokenizer.token_to_id(t) for t in self.specials}
        return [i for i in ids if i not in specials]

    def write_metadata(self, writer) -> None:
        import gguf

        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        by_id = {i: t for t, i in vocab.items()}
        tokens = [by_id[i] for i in range(self.vocab_size)]
        types = [
            gguf.TokenType.CONTROL if t in self.specials
            else gguf.TokenType.USER_DEFINED if t in self.user_defined
            else gguf.TokenType.NORMAL
            for t in tokens
        ]
        merges = json.loads(self.tokenizer.to_str())["model"]["merges"]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        writer.add_bos_token_id(self.bos)
        writer.add_eos_token_id(self.eos)
        if self.eot is not None:
            writer.add_eot_token_id(self.eot)
        writer.add_add_bos_token(self.add_bos)
        writer.add_chat_template(CHAT_TEMPLATE)


class SPMReference(Reference):
    def __init__(self, kind: str):
        import sentencepiece as spm

        prefix, controls, eot = SPM_KINDS[kind]
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 4), model_writer=model, vocab_size=420, model_type="bpe",
            byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
            normalization_rule_name="identity", character_coverage=0.98, add_dummy_prefix=prefix,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=controls, minloglevel=2,
        )
        self.sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        self.prefix, self.eot = prefix, self.sp.piece_to_id(eot)
        self.vocab_size = self.sp.get_piece_size()
        self.special_ids = {"bos_token_id": 1, "eos_token_id": 2}

    def encode(self, text: str) -> list[int]:
        return [1] + self.sp.encode(text)  # add_bos, llama.cpp's default for SentencePiece

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def plain(self, ids: list[int]) -> list[int]:
        sp = self.sp
        return [i for i in ids if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))]

    def write_metadata(self, writer) -> None:
        import gguf

        sp = self.sp
        tokens, scores, types = [], [], []
        for i in range(sp.get_piece_size()):
            tokens.append(sp.id_to_piece(i))
            scores.append(sp.get_score(i))
            types.append(
                gguf.TokenType.UNKNOWN if sp.is_unknown(i)
                else gguf.TokenType.CONTROL if sp.is_control(i)
                else gguf.TokenType.UNUSED if sp.is_unused(i)
                else gguf.TokenType.BYTE if sp.is_byte(i)
                else gguf.TokenType.NORMAL
            )
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_eot_token_id(self.eot)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        if not self.prefix:  # Gemma's converter says so; llama.cpp's default is a space prefix
            writer.add_add_space_prefix(False)
        writer.add_chat_template(CHAT_TEMPLATE)


@functools.lru_cache(maxsize=None)
def reference(kind: str) -> Reference:
    return BPEReference(kind) if kind in BPE_KINDS else SPMReference(kind)
