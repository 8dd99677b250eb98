"""Writes a tiny random GGUF of one architecture, with K-quants, and prints what mlx-lm
computes on the same weights: for the end-to-end GGUF tests (`tests/tests/models.rs`).

    python tests/tools/tiny_gguf.py OUTDIR VARIANT... [--prompt TEXT] [--max-tokens N]

Each VARIANT is one of python/tests/gguf_models.py's VARIANTS (llama3, mistral, qwen2, qwen3,
gemma2, gemma3, phi3): the model is built there in both layouts — an HF directory mlx-lm
loads and a GGUF holding the same (quantized) weights as llama.cpp would write it. Prints
one JSON line per variant: its name, the GGUF's path, its tensor types, the prompt's token ids (the original
tokenizer's) and mlx-lm's greedy continuation on the HF directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "tests"))

import mlx.core as mx  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.utils import load_model  # noqa: E402

import gguf_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("variants", nargs="+", choices=sorted(gguf_models.VARIANTS))
    parser.add_argument("--prompt", default="Hello world, it's 12345 café")
    parser.add_argument("--max-tokens", type=int, default=6)
    args = parser.parse_args()
    for variant in args.variants:
        out = args.out / variant
        out.mkdir(parents=True, exist_ok=True)
        built = gguf_models.build(variant, True, out)
        model, _ = load_model(built.hf_dir)
        prompt = built.tokenizer.encode(args.prompt)
        greedy = [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=args.max_tokens)]
        eos = built.config.get("eos_token_id")
        print(json.dumps({
            "variant": variant,
            "gguf": str(built.gguf_path),
            "types": sorted(set(built.types.values())),
            "prompt_ids": prompt,
            "greedy": greedy,
            "eos": eos if isinstance(eos, list) else [eos] if eos is not None else [],
        }), flush=True)


if __name__ == "__main__":
    main()
