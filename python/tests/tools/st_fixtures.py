"""Builds tiny sentence-transformers models and their reference outputs (run by hand).

The output is checked in under ``python/tests/fixtures/st/``; the tests only read it. Rerun
this script only to change the fixtures, and commit what it writes.

Set-up (a separate venv: torch is never a dependency of mlxd_runtime):

    python3.11 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install sentence-transformers==6.2.0 torch==2.15.0
    # last run with: sentence-transformers 6.2.0, torch 2.15.0 (run on the CPU),
    # transformers 5.24.0, tokenizers 0.23.3, safetensors 0.8.0, numpy 2.4.6, Python 3.11

Run (from python/):

    /tmp/stvenv/bin/python tests/tools/st_fixtures.py tests/fixtures/st

Every model is built from nothing: tokenizers made from the fixed corpus below (WordPiece
and unigram vocabularies of its characters and words, byte-level BPE trained on it; the same
every run), configs of a few dozen hidden units, weights drawn from a seeded generator (every parameter, layer norms
and biases included, so that different texts give clearly different vectors). Each model is
saved with sentence-transformers' own ``save`` (so modules.json, 1_Pooling/config.json,
sentence_bert_config.json and config_sentence_transformers.json are the real thing), loaded
back from disk, and run by sentence-transformers itself; its outputs go to ``reference.json``
in the model's directory:

- st-bert-mean:      BERT, mean pooling, Normalize; prompts query/document, no default.
- st-bert-cls-dense: BERT, CLS pooling, Dense(32->16, tanh), no Normalize; rewritten after
                     saving into the layout of sentence-transformers 2.x (sentence_transformers.models.*
                     module types, pooling_mode_*_token keys, max_seq_length and do_lower_case in
                     sentence_bert_config.json on a tokenizer that keeps case), as most published
                     models are.
- st-xlmr-max:       XLM-RoBERTa (unigram tokenizer), max pooling; default prompt "query".
- st-roberta-wmean:  RoBERTa (byte-level BPE), weighted-mean pooling, include_prompt false.
- st-qwen3-last:     Qwen3 decoder, last-token pooling, Normalize, prompts; left padding and
                     <|endoftext|> appended, as Qwen3-Embedding's tokenizer does.
- st-distilbert-sqrt: DistilBERT, mean_sqrt_len_tokens pooling, no Normalize.
- rerank-bert:       BertForSequenceClassification, one label (CrossEncoder).
- rerank-xlmr:       XLMRobertaForSequenceClassification, one label (CrossEncoder).
- rerank-distilbert: DistilBertForSequenceClassification, one label (CrossEncoder).

Embedding references: every text of TEXTS with every prompt name the model has, and "" (no
prompt), embedded one prompt name at a time as a batch (so padding is exercised), with the
token count sentence-transformers' own preprocessing gives. Rerank references: each query of
QUERIES against each of DOCUMENTS, ``CrossEncoder.predict`` scores and the raw logits.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "What is the capital of France? Paris is the capital of France.",
    "Machine learning models turn text into vectors of numbers.",
    "Sentence embeddings place similar sentences close together.",
    "A reranker scores how well a document answers a query.",
    "The weather today is sunny with a light breeze from the west.",
    "She sells sea shells by the sea shore.",
    "How many tokens does this sentence have after tokenization?",
    "Numbers like 12345 and 2026 appear in text too.",
    "Punctuation: commas, periods; colons: and question marks?",
    "Café, naïve, résumé and façade carry accents.",
    "Tokyo is 東京 and Kyoto is 京都 in Japanese.",
    "Greek letters: αβγδ and the word Ελληνικά.",
    "Rockets 🚀 and stars ⭐ are emoji.",
    "The daemon supervises worker processes that run models.",
    "Passages answer questions; queries ask them.",
    "Hello world, hello again, hello once more.",
    "Long documents are truncated to the model's maximum sequence length.",
    "Paris, London, Berlin and Madrid are European capitals.",
    "The cat sat on the mat while the dog slept by the door.",
    "Deep networks learn representations from large amounts of data.",
    "query passage document search rank score relevant irrelevant",
    "Apples, oranges, bananas and grapes are fruit.",
]

TEXTS = [
    "",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve — 東京 🚀 Ελληνικά",
    "hello hello hello hello hello hello world",
    "What is the capital of France?",
    "   MiXeD CaSe, numbers 12345 and punctuation?!   ",
    "zxqv wkjh unknownish words",
    # Longer than every fixture's max_seq_length: truncated.
    " ".join(CORPUS[6:12]),
]

QUERIES = ["What is the capital of France?", "how do rerankers score documents"]
DOCUMENTS = [
    "Paris is the capital of France.",
    "A reranker scores how well a document answers a query.",
    "",
    "Café naïve — 東京 🚀",
    # Long enough that query + document exceed the max length: longest_first truncation.
    " ".join(CORPUS[4:12]),
]

SEED = 1234


# --- tokenizers -------------------------------------------------------------------------


def _word_counts(tok: Tokenizer) -> Counter:
    """The corpus's words as `tok`'s normaliser and pre-tokeniser see them."""
    counts: Counter = Counter()
    for line in CORPUS:
        text = tok.normalizer.normalize_str(line) if tok.normalizer is not None else line
        counts.update(word for word, _ in tok.pre_tokenizer.pre_tokenize_str(text))
    return counts


def _ranked(counts: Counter) -> list[str]:
    return sorted(counts, key=lambda w: (-counts[w], w))


# The WordPiece and Unigram vocabularies are built here rather than by tokenizers' trainers,
# which break ties differently from run to run: the script's output is the same every run.


def bert_tokenizer(max_len: int, lowercase: bool = True, cls=transformers.BertTokenizer) -> transformers.BertTokenizer:
    """transformers' own BertTokenizer (as BERT models ship: segment ids for pairs) over a
    WordPiece vocabulary of the corpus's characters and frequent words."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = _word_counts(tok)
    chars = sorted({c for word in counts for c in word})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    vocab += [w for w in _ranked(counts) if len(w) > 1][: 300 - len(vocab)]
    return cls(vocab={piece: i for i, piece in enumerate(vocab)}, do_lower_case=lowercase, model_max_length=max_len)


def bytelevel_bpe_tokenizer(specials: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return tok


def roberta_tokenizer() -> Tokenizer:
    tok = bytelevel_bpe_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], 400)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return tok


def unigram_tokenizer() -> Tokenizer:
    """SentencePiece-style (XLM-RoBERTa): NFKC, metaspace, unigram model; pieces are the
    characters and the corpus's frequent words, scored by their log frequency."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    counts = _word_counts(tok)
    chars: Counter = Counter()
    for word, n in counts.items():
        for c in word:
            chars[c] += n
    pieces = Counter({w: n for w, n in counts.items() if len(w) > 1})
    total = sum(chars.values()) + sum(pieces.values())
    vocab = [(s, 0.0) for s in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    vocab += [(c, math.log(chars[c] / total)) for c in _ranked(chars)]
    vocab += [(w, math.log(pieces[w] / total) + 2.0 * len(w)) for w in _ranked(pieces)][: 300 - len(vocab)]
    tok.model = models.Unigram(vocab, unk_id=3, byte_fallback=False)
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tok


def qwen_tokenizer() -> Tokenizer:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = bytelevel_bpe_tokenizer(specials, 400)
    eot = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
                special_tokens=[("<|endoftext|>", eot)],
            ),
        ]
    )
    return tok


def hf_tokenizer(tok: Tokenizer, max_len: int, **specials) -> transformers.PreTrainedTokenizerFast:
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_len, **specials)


ROBERTA_SPECIALS = dict(
    bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>", sep_token="</s>",
    mask_token="<mask>",
)


# --- models -----------------------------------------------------------------------------


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Draws every parameter: matrices ~ N(0, 1/fan_in), vectors (biases, norm scales)
    around their usual values with visible spread."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim >= 2:
                std = 1.0 if "embed" in name else p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def encoder_config(kind: str, vocab_size: int, **extra) -> transformers.PretrainedConfig:
    common = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, hidden_act="gelu", **extra,
    )
    if kind == "bert":
        return transformers.BertConfig(max_position_embeddings=64, type_vocab_size=2, pad_token_id=0, **common)
    cls = transformers.XLMRobertaConfig if kind == "xlm-roberta" else transformers.RobertaConfig
    # RoBERTa positions start after padding_idx (1): 64 usable positions.
    return cls(
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5, **common,
    )


def distilbert_config(vocab_size: int, **extra) -> transformers.DistilBertConfig:
    return transformers.DistilBertConfig(
        vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
        activation="gelu", pad_token_id=0, **extra,
    )


def save_hf(model, tokenizer, workdir: Path, name: str) -> Path:
    path = workdir / name
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def st_model(hf_dir: Path, max_seq_length: int, tail: list, *, do_lower_case: bool = False, **kwargs):
    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length, do_lower_case=do_lower_case)
    return SentenceTransformer(modules=[transformer, *tail], device="cpu", **kwargs)


def build_embedders(workdir: Path) -> dict[str, SentenceTransformer]:
    built = {}
    torch.manual_seed(SEED)

    # (a) BERT + mean + Normalize, prompts, no default.
    tok = bert_tokenizer(512)
    hf = transformers.BertModel(encoder_config("bert", tok.vocab_size), add_pooling_layer=False)
    randomize(hf, SEED + 1)
    path = save_hf(hf, tok, workdir, "bert-a")
    built["st-bert-mean"] = st_model(
        path, 24, [Pooling(32, "mean"), Normalize()],
        prompts={"query": "query: ", "document": "passage: "},
    )

    # (b) BERT + CLS + Dense(tanh), no Normalize, do_lower_case on a tokenizer that keeps case.
    tok = bert_tokenizer(512, lowercase=False)
    hf = transformers.BertModel(encoder_config("bert", tok.vocab_size), add_pooling_layer=False)
    randomize(hf, SEED + 2)
    path = save_hf(hf, tok, workdir, "bert-b")
    dense = Dense(32, 16, activation_function=torch.nn.Tanh())
    randomize(dense, SEED + 3)
    built["st-bert-cls-dense"] = st_model(path, 20, [Pooling(32, "cls"), dense], do_lower_case=True)

    # (c) XLM-RoBERTa + max pooling, default prompt.
    tok = unigram_tokenizer()
    hf = transformers.XLMRobertaModel(encoder_config("xlm-roberta", tok.get_vocab_size()), add_pooling_layer=False)
    randomize(hf, SEED + 4)
    path = save_hf(hf, hf_tokenizer(tok, 64, **ROBERTA_SPECIALS), workdir, "xlmr-c")
    built["st-xlmr-max"] = st_model(
        path, 28, [Pooling(32, "max")],
        prompts={"query": "query: ", "document": ""}, default_prompt_name="query",
    )

    # (d) RoBERTa + weighted mean, include_prompt false, with a prompt.
    tok = roberta_tokenizer()
    hf = transformers.RobertaModel(encoder_config("roberta", tok.get_vocab_size()), add_pooling_layer=False)
    randomize(hf, SEED + 5)
    path = save_hf(hf, hf_tokenizer(tok, 64, **ROBERTA_SPECIALS), workdir, "roberta-d")
    built["st-roberta-wmean"] = st_model(
        path, 40, [Pooling(32, "weightedmean", include_prompt=False)],
        prompts={"instruct": "Represent this for searching: "},
    )

    # (e) Qwen3 decoder + last token + Normalize, prompts; left padding like Qwen3-Embedding.
    tok = qwen_tokenizer()
    cfg = transformers.Qwen3Config(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tok.token_to_id("<|endoftext|>"), pad_token_id=tok.token_to_id("<|endoftext|>"),
    )
    hf = transformers.Qwen3Model(cfg)
    randomize(hf, SEED + 6)
    hf_tok = hf_tokenizer(tok, 131072, eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left")
    path = save_hf(hf, hf_tok, workdir, "qwen3-e")
    built["st-qwen3-last"] = st_model(
        path, 48, [Pooling(32, "lasttoken"), Normalize()],
        prompts={"query": "Instruct: find passages\nQuery:", "document": ""},
    )
    # (f) DistilBERT + mean_sqrt_len_tokens, no Normalize (the pooled scale is the model's).
    tok = bert_tokenizer(512, cls=transformers.DistilBertTokenizer)
    hf = transformers.DistilBertModel(distilbert_config(tok.vocab_size))
    randomize(hf, SEED + 9)
    path = save_hf(hf, tok, workdir, "distilbert-f")
    built["st-distilbert-sqrt"] = st_model(path, 30, [Pooling(32, "mean_sqrt_len_tokens")])
    return built


def spread_logits(model, tokenizer, head: torch.nn.Linear) -> None:
    """Random heads give logits within a few tenths of each other: scales the head so that
    the reference pairs' logits spread over a few units around 0 (scores well apart)."""
    pairs = [(q, d) for q in QUERIES for d in DOCUMENTS]
    batch = tokenizer([q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation=True,
                      return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**batch).logits[:, 0]
        scale = 3.0 / float(logits.std())
        head.weight.mul_(scale)
        head.bias.mul_(scale)
        head.bias.sub_(float(logits.mean()) * scale)


def build_rerankers(workdir: Path) -> dict[str, CrossEncoder]:
    built = {}
    hf_tok = bert_tokenizer(40)
    hf = transformers.BertForSequenceClassification(encoder_config("bert", hf_tok.vocab_size, num_labels=1))
    randomize(hf, SEED + 7)
    spread_logits(hf, hf_tok, hf.classifier)
    path = save_hf(hf, hf_tok, workdir, "rerank-bert")
    built["rerank-bert"] = CrossEncoder(str(path), num_labels=1, max_length=40, device="cpu")

    tok = unigram_tokenizer()
    hf = transformers.XLMRobertaForSequenceClassification(
        encoder_config("xlm-roberta", tok.get_vocab_size(), num_labels=1)
    )
    randomize(hf, SEED + 8)
    hf_tok = hf_tokenizer(tok, 36, **ROBERTA_SPECIALS)
    spread_logits(hf, hf_tok, hf.classifier.out_proj)
    path = save_hf(hf, hf_tok, workdir, "rerank-xlmr")
    built["rerank-xlmr"] = CrossEncoder(str(path), num_labels=1, max_length=36, device="cpu")

    hf_tok = bert_tokenizer(32, cls=transformers.DistilBertTokenizer)
    hf = transformers.DistilBertForSequenceClassification(distilbert_config(hf_tok.vocab_size, num_labels=1))
    randomize(hf, SEED + 10)
    spread_logits(hf, hf_tok, hf.classifier)
    path = save_hf(hf, hf_tok, workdir, "rerank-distilbert")
    built["rerank-distilbert"] = CrossEncoder(str(path), num_labels=1, max_length=32, device="cpu")
    return built


# --- references -------------------------------------------------------------------------


def versions() -> dict:
    return {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
    }


def floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float32).reshape(-1)]


def embedding_reference(model: SentenceTransformer, name: str, saved_prompts: dict) -> dict:
    # The prompts the model's files name (sentence-transformers adds empty "query" and
    # "document" ones to a model that has none).
    prompt_names = [""] + sorted(saved_prompts)
    items = []
    for prompt_name in prompt_names:
        prompt = model.prompts[prompt_name] if prompt_name else ""
        # prompt="" (not None): no prompt, even where the model has a default.
        vectors = model.encode(TEXTS, prompt=prompt, batch_size=len(TEXTS), convert_to_numpy=True)
        for text, vector in zip(TEXTS, vectors):
            features = model.preprocess([text], prompt=prompt or None)
            items.append(
                {
                    "text": text,
                    "prompt_name": prompt_name,
                    "tokens": int(features["attention_mask"].sum()),
                    "prompt_length": features.get("prompt_length"),
                    "embedding": floats(vector),
                }
            )
    distinct = [np.asarray(i["embedding"]) for i in items if i["prompt_name"] == ""]
    cosines = [
        float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        for i, a in enumerate(distinct) for b in distinct[i + 1 :]
    ]
    print(f"{name}: dim {model.get_embedding_dimension()}, max cosine between texts {max(cosines):.3f}")
    return {
        "model": name,
        "versions": versions(),
        "dim": model.get_embedding_dimension(),
        "max_seq_len": model.max_seq_length,
        "prompts": saved_prompts,
        "default_prompt_name": model.default_prompt_name,
        "items": items,
    }


def rerank_reference(model: CrossEncoder, name: str) -> dict:
    pairs = [(q, d) for q in QUERIES for d in DOCUMENTS]
    scores = model.predict(pairs, batch_size=len(pairs), convert_to_numpy=True)
    logits = model.predict(pairs, batch_size=len(pairs), activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    items = []
    for (query, document), score, logit in zip(pairs, scores, logits):
        features = model.preprocess([(query, document)])
        items.append(
            {
                "query": query,
                "document": document,
                "tokens": int(features["attention_mask"].sum()),
                "score": float(score),
                "logit": float(logit),
            }
        )
    print(f"{name}: logits {min(logits):.3f}..{max(logits):.3f}")
    return {
        "model": name,
        "versions": versions(),
        "max_seq_len": model.max_seq_length,
        "queries": QUERIES,
        "documents": DOCUMENTS,
        "items": items,
    }


def legacy_layout(target: Path, max_seq_length: int) -> None:
    """Rewrites a saved model into the file layout sentence-transformers 2.x wrote."""
    modules = json.loads((target / "modules.json").read_text())
    for module in modules:
        module["type"] = "sentence_transformers.models." + module["type"].rsplit(".", 1)[1]
    (target / "modules.json").write_text(json.dumps(modules, indent=2))
    pooling = json.loads((target / "1_Pooling/config.json").read_text())
    legacy = {"word_embedding_dimension": pooling["embedding_dimension"]}
    for key in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens"):
        legacy[f"pooling_mode_{key}"] = pooling["pooling_mode"] == key.replace("_tokens", "").replace("_token", "")
    (target / "1_Pooling/config.json").write_text(json.dumps(legacy, indent=2))
    # do_lower_case: 6.x bakes it into the saved tokenizer; 2.x kept the tokenizer and the flag.
    tok = json.loads((target / "tokenizer.json").read_text())
    normalizer = tok["normalizer"]
    assert normalizer["type"] == "Sequence" and normalizer["normalizers"][0]["type"] == "Lowercase", normalizer
    tok["normalizer"] = normalizer["normalizers"][1]
    (target / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    tok_cfg = json.loads((target / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = 512
    (target / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (target / "config_sentence_transformers.json").write_text(
        json.dumps({"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1", "pytorch": "1.8.1"}})
    )
    (target / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": True}, indent=2)
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, model in build_embedders(workdir).items():
            target = out / name
            shutil.rmtree(target, ignore_errors=True)
            model.save(str(target), create_model_card=False)
            if name == "st-bert-cls-dense":
                legacy_layout(target, max_seq_length=20)
            # The reference comes from the saved directory, as a user would load it.
            loaded = SentenceTransformer(str(target), device="cpu")
            saved = json.loads((target / "config_sentence_transformers.json").read_text()).get("prompts", {})
            reference = embedding_reference(loaded, name, saved)
            (target / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
        for name, model in build_rerankers(workdir).items():
            target = out / name
            shutil.rmtree(target, ignore_errors=True)
            model.save(str(target), create_model_card=False)
            loaded = CrossEncoder(str(target), device="cpu")
            (target / "reference.json").write_text(json.dumps(rerank_reference(loaded, name), indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTDIR")
    main(Path(sys.argv[1]))
