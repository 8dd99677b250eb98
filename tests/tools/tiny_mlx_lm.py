"""Builds a tiny mlx-lm model with random weights, for tests that need a model of some
architecture without downloading one.

    python tiny_mlx_lm.py OUT_DIR --tokenizer-from DIR [--model-type llama] [--quantize BITS]
                          [--seed N] [--greedy PROMPT --max-tokens N] [--chat-template FILE]

Writes OUT_DIR/config.json, OUT_DIR/model.safetensors and the tokenizer files copied from
--tokenizer-from (a model directory with tokenizer.json and tokenizer_config.json). With
--quantize, the weights are MLX-quantized (config.json gets `quantization`), as the
mlx-community's models are. With --greedy, prints mlx-lm's own greedy continuation of
PROMPT (what mlxd must answer for the same model) as one JSON line. With --chat-template,
tokenizer_config.json's chat template is that file's text (e.g. a real tool-calling
template from python/tests/fixtures/templates, on the SmolLM2 tokenizer, whose ChatML
tokens <|im_start|>/<|im_end|> Qwen's templates use too).
"""

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--tokenizer-from", required=True)
parser.add_argument("--model-type", default="llama")
parser.add_argument("--quantize", type=int, default=0)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--greedy")
parser.add_argument("--max-tokens", type=int, default=8)
parser.add_argument("--chat-template")
args = parser.parse_args()

source = Path(args.tokenizer_from)
vocab = json.loads((source / "config.json").read_text())["vocab_size"]
config = {
    "model_type": args.model_type,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "vocab_size": vocab,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
mx.random.seed(args.seed)

from mlx_lm.utils import _get_classes  # noqa: E402

model_class, args_class = _get_classes(config)
model = model_class(args_class.from_dict(config))
# Larger random weights than the default init, so that greedy choices are well separated.
model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.2 if p.ndim > 1 else p, model.parameters()))
if args.quantize:
    nn.quantize(model, group_size=32, bits=args.quantize)
    config["quantization"] = {"group_size": 32, "bits": args.quantize}
mx.eval(model.parameters())
mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
(out / "config.json").write_text(json.dumps(config, indent=1))
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if (source / name).exists():
        shutil.copyfile(source / name, out / name)
if args.chat_template:
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = Path(args.chat_template).read_text()
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))

if args.greedy is not None:
    from mlx_lm import generate, load

    loaded, tokenizer = load(str(out))
    text = generate(loaded, tokenizer, args.greedy, max_tokens=args.max_tokens, verbose=False)
    print(json.dumps({"text": text}))
