"""tokenizer.json rebuilt from GGUF tokenizer metadata encodes as the original tokenizer does.

The originals are trained here (gguf_tokenizers.py): byte-level BPEs with the pre-tokenizers
of Llama 3 (`llama-bpe`), Qwen2 (`qwen2`, NFC), SmolLM (`smollm`) and GPT-2, and SentencePiece
BPE models with byte fallback, with (Llama/Mistral/Phi-3) and without (Gemma) a space prefix.
Their metadata is written with the gguf package and read back with mlxd's reader.
"""

from __future__ import annotations

import json
import unicodedata

import gguf as ggufpy
import pytest
from tokenizers import Tokenizer

import gguf_tokenizers
from gguf_tokenizers import BPE_KINDS, CHAT_TEMPLATE, SAMPLES, SPM_KINDS
from mlxd_runtime.gguf import UnsupportedModel
from mlxd_runtime.gguf.reader import GGUFFile
from mlxd_runtime.gguf.tokenizer import stop_token_ids, tokenizer_files

KINDS = list(BPE_KINDS) + list(SPM_KINDS)


def _imported(tmp_path, kind: str) -> tuple[Tokenizer, dict, gguf_tokenizers.Reference]:
    reference = gguf_tokenizers.reference(kind)
    path = tmp_path / f"{kind}.gguf"
    writer = ggufpy.GGUFWriter(str(path), "llama")
    reference.write_metadata(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(path) as gguf:
        tokenizer, config = tokenizer_files(gguf.metadata, 2048)
    return Tokenizer.from_str(json.dumps(tokenizer)), config, reference


@pytest.mark.parametrize("kind", KINDS)
def test_encodes_as_the_original(tmp_path, kind):
    imported, config, reference = _imported(tmp_path, kind)
    assert imported.get_vocab_size() == reference.vocab_size
    for text in SAMPLES:
        assert imported.encode(text).ids == reference.encode(text), repr(text)
    # byte fallback and unicode really occur in the samples
    if kind in SPM_KINDS:
        pieces = [reference.sp.id_to_piece(i) for t in SAMPLES for i in reference.sp.encode(t)]
        assert any(p.startswith("<0x") for p in pieces) and "\u2581\u2581" in pieces
    assert config["chat_template"] == CHAT_TEMPLATE


@pytest.mark.parametrize("kind", KINDS)
def test_decodes_as_the_original(tmp_path, kind):
    imported, _, reference = _imported(tmp_path, kind)
    bos = reference.special_ids["bos_token_id"]
    for text in SAMPLES:
        ids = reference.encode(text)
        ids = ids[1:] if ids and ids[0] == bos else ids
        expected = unicodedata.normalize("NFC", text) if BPE_KINDS.get(kind, [None] * 3)[2] else text
        assert imported.decode(ids, skip_special_tokens=False) == reference.decode(ids) == expected, repr(text)


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_stay_whole(tmp_path, kind):
    imported, config, reference = _imported(tmp_path, kind)
    if kind in BPE_KINDS:
        pre, _, _, _, _, specials, user_defined, bos, eos, _, add_bos = BPE_KINDS[kind]
        for token in specials + user_defined:
            ids = imported.encode(f"{token}hi", add_special_tokens=False).ids
            assert ids[0] == reference.tokenizer.token_to_id(token) and len(ids) > 1, token
        assert config["bos_token"] == bos and config["eos_token"] == eos and config["add_bos_token"] == add_bos
    else:
        _, controls, _ = SPM_KINDS[kind]
        for token in controls:
            ids = imported.encode(f"x{token}", add_special_tokens=False).ids
            assert ids[-1] == reference.sp.piece_to_id(token), token
        assert (config["bos_token"], config["eos_token"], config["unk_token"]) == ("<s>", "</s>", "<unk>")
        assert config["add_bos_token"] is True


def test_refuses_unknown_tokenizers():
    meta = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}
    with pytest.raises(UnsupportedModel, match="tokenizer model 'bert' is not supported.*gpt2, llama"):
        tokenizer_files(meta, 2048)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "deepseek-llm", "tokenizer.ggml.tokens": ["a"]}
    with pytest.raises(UnsupportedModel, match="pre-tokenizer 'deepseek-llm' is not supported.*llama-bpe.*qwen2.*smollm"):
        tokenizer_files(meta, 2048)
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.token_type": [1]}
    with pytest.raises(UnsupportedModel, match="token_type has 1 entries for 2 tokens"):
        tokenizer_files(meta, 2048)


def test_stop_tokens_include_llama_cpp_end_of_generation_tokens():
    """Files often name only EOS; llama.cpp also ends generation at known control tokens
    (Gemma's <end_of_turn> when no EOT id is given), and so does the import."""
    tokens = ["<pad>", "<eos>", "<bos>", "<end_of_turn>", "<|im_end|>", "hello"]
    meta = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [3, 3, 3, 3, 1, 1],
            "tokenizer.ggml.eos_token_id": 1}
    assert stop_token_ids(meta) == [1, 3]  # <|im_end|> here is a normal token: not a stop
    meta["tokenizer.ggml.eot_token_id"] = 4
    assert stop_token_ids(meta) == [1, 4, 3]
