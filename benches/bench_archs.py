"""The one-decoder architectures at real sizes: ferrolm beside llama.cpp on the same GGUF files.

    python benches/bench_archs.py --llama-bin DIR [--threads 2] [--repeat 3] [--prepare-only]
                                  [--cache DIR] [--shapes qwen2.5-0.5b,qwen3-0.6b,gemma-3-270m]

For each shape (Qwen2.5-0.5B, Qwen3-0.6B, Gemma-3-270M: the released configs' sizes, random
weights from ``transformers`` with a fixed seed, GPT-2's tokenizer padded to the vocabulary),
the model is converted once by llama.cpp's ``convert_hf_to_gguf.py`` (f16) and quantized by
``llama-quantize --pure`` to Q8_0 and Q4_0 (every matrix in that type, the embeddings too: the
types ferrolm reads today), cached under ``--cache``. Then, per file, in turns:

- decode tokens/s: ferrolm generates 128 tokens after a 1-token prompt; llama.cpp's
  ``llama-bench -n 128`` (tg128). The bandwidth ceiling: ferrolm's weight bytes read per token
  over this machine's measured read bandwidth (``--threads`` cores), and each engine's share.
- prefill tokens/s: ferrolm's forward over 512 tokens; ``llama-bench -p 512`` (pp512).
- memory per token of context: what ferrolm's KV cache grows by per token (f32 by default, f16
  with ``kv_cache_dtype="float16"``; sliding-window layers keep a ring of their window, a fixed
  size) beside llama.cpp's default f16 cache (2 × layers × kv heads × head size × 2 bytes, its
  sliding-window layers also keeping their window only).

Targets (issue 24): decode ≥ 1.25× llama.cpp and ≥ 75% of the ceiling, prefill ≥ 2×.
``--llama-bin`` is a llama.cpp build's ``bin/`` (llama-bench, llama-quantize) from the
llama-cpp-python sdist's ``vendor/llama.cpp``. Prints medians.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_llama import NEW, PREFILL, ferrolm_speed, llama_bench, verdict
from common import machine

import ferrolm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

# name -> (transformers config class, model class, config): the released models' shapes.
SHAPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen2.5-0.5b": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
            rope_theta=1_000_000.0, tie_word_embeddings=True,
        ),
    ),
    "qwen3-0.6b": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(
            vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            max_position_embeddings=40_960, rope_theta=1_000_000.0, tie_word_embeddings=True,
        ),
    ),
    "gemma-3-270m": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            vocab_size=262_144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
            num_attention_heads=4, num_key_value_heads=1, head_dim=256,
            max_position_embeddings=32_768, sliding_window=512, query_pre_attn_scalar=256,
            rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        ),
    ),
}  # fmt: skip
QTYPES = ["q8_0", "q4_0"]


def prepare(name: str, cache: Path, bin_dir: Path) -> dict[str, Path]:
    """The shape's GGUF files, Q8_0 and Q4_0, built once."""
    import torch
    import transformers
    from gpt2_files import write_gpt2_files
    from llama_cpp import convert

    out = {q: cache / f"{name}-{q}.gguf" for q in QTYPES}
    if all(p.is_file() for p in out.values()):
        return out
    config_cls, model_cls, kwargs = SHAPES[name]
    folder = cache / f"{name}-hf"
    print(f"building {name} (random weights, seed 0) ...", flush=True)
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    # GPT-2's tokenizer, as tokenizer.json with added tokens up to the vocabulary (the
    # converter keeps as many embedding rows as the tokenizer has tokens, for Gemma 3).
    import tokenizers

    write_gpt2_files(folder)
    bpe = tokenizers.ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    bpe.add_tokens([f"<unused{i}>" for i in range(kwargs["vocab_size"] - bpe.get_vocab_size())])
    bpe.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    f16 = convert(folder, cache / f"{name}-f16.gguf", "f16")
    shutil.rmtree(folder)
    for q, path in out.items():
        subprocess.run(
            [str(bin_dir / "llama-quantize"), "--pure", str(f16), str(path), q.upper()],
            check=True, capture_output=True,
        )  # fmt: skip
    f16.unlink()
    return out


def kv_per_token(config: dict[str, Any], elem: int, extra: int) -> float:
    """Bytes a KV cache of `elem`-byte values grows by per token of context: keys and values
    of the layers without a sliding window (the windowed ones keep a ring of their window, a
    fixed size; llama.cpp's "iSWA" cache does the same), plus `extra` bytes of bookkeeping
    (ferrolm's positions: 9)."""
    kv = config["num_key_value_heads"] * config["head_dim"]
    layers = config["num_hidden_layers"]
    kinds = config.get("layer_types") or ["full_attention"] * layers
    full = sum(kind == "full_attention" for kind in kinds)
    return 2 * full * kv * elem + extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-bin", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ferrolm-bench")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--prepare-only", action="store_true", help="build the files and stop")
    args = ap.parse_args()
    ferrolm.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    files = {name: prepare(name, args.cache, args.llama_bin) for name in args.shapes.split(",")}
    if args.prepare_only:
        return 0
    bw = ferrolm._core._read_bandwidth(1 << 30)
    print(machine())
    print(f"read bandwidth ({args.threads} threads, measured): {bw / 1e9:.1f} GB/s\n")
    rows = []
    for name, paths in files.items():
        for q, path in paths.items():
            model = ferrolm.AutoModelForCausalLM.from_pretrained(path)
            ours = ferrolm_speed(model, args.repeat)
            peer = llama_bench(args.llama_bin, path, args.threads, args.repeat)
            ceiling = bw / model._core.weight_bytes
            kv32, kv16 = kv_per_token(model.config, 4, 9), kv_per_token(model.config, 2, 9)
            kv_peer = kv_per_token(model.config, 2, 0)  # llama.cpp's default: f16
            rows.append((name, q, ours, peer, ceiling, kv32, kv16, kv_peer))
            del model
    head = (
        f"{'model':14} {'type':5} {'decode tok/s':>22} {'ratio':>6} {'of ceiling':>17} "
        f"{'prefill tok/s':>22} {'ratio':>6}  KV bytes/token: ferrolm f32 / f16, llama.cpp"
    )
    print(head)
    print(f"{'':14} {'':5} {'ferrolm':>10} {'llama.cpp':>11}")
    for name, q, ours, peer, ceiling, kv32, kv16, kv_peer in rows:
        d, p = ours["decode"] / peer["decode"], ours["prefill"] / peer["prefill"]
        print(
            f"{name:14} {q:5} {ours['decode']:10.1f} {peer['decode']:11.1f} {d:5.2f}x "
            f"{ours['decode'] / ceiling:7.0%} / {peer['decode'] / ceiling:4.0%} "
            f"{ours['prefill']:10.1f} {peer['prefill']:11.1f} {p:5.2f}x  "
            f"{kv32:8.0f} / {kv16:6.0f}, {kv_peer:6.0f}"
        )
    print(f"\n(decode: tg{NEW} after 1 token; prefill: pp{PREFILL}; ceiling: bandwidth / weight "
          "bytes per token)")  # fmt: skip
    for name, q, ours, peer, ceiling, *_ in rows:
        d, p = ours["decode"] / peer["decode"], ours["prefill"] / peer["prefill"]
        print(f"{name} {q}: decode {verdict(d, 1.25)} 1.25x llama.cpp, "
              f"{verdict(ours['decode'] / ceiling, 0.75)} 75% of the ceiling; "
              f"prefill {verdict(p, 2.0)} 2x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
