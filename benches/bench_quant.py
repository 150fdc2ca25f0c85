"""Quantized GPT-2: ferrolm at f32 / int8 (q8_0) / int4 (q4_0) / q4_1 beside llama.cpp at the
same bits on the same weights, and transformers (PyTorch, fp32), side by side in one run.

    python benches/bench_quant.py [--sizes 124m,355m] [--threads 2] [--repeat 5]
                                  [--llama-bin DIR --llama-src DIR]

Models: GPT-2 124M shapes (transformers' GPT2Config(), torch.manual_seed(0)) and, with
``--sizes 124m,355m``, GPT-2 medium shapes (n_embd 1024, 24 layers, 16 heads), built once into
~/.cache/ferrolm-bench/. ferrolm quantizes each once and saves it (``save_pretrained``); every
measurement loads the saved folder (memory-mapped, as users run it).

Rows, per precision:
- decode: a 32-token prompt, 128 new tokens, greedy; the decode steps alone (128 new tokens
  less 1), tokens/s; llama.cpp: ``llama-bench -n 128`` (tg128);
- prefill: a 512-token prompt to its first new token (the last position's logits, as llama.cpp
  computes), tokens/s; llama.cpp: ``llama-bench -p 512`` (pp512);
- the share of the memory-bandwidth ceiling that decoding reaches (weight bytes per token /
  the pool's measured read bandwidth);
- peak RSS of a fresh process that loads the saved folder and generates, against quantized
  weight bytes + KV cache.
Targets (issue 5) are printed beside each ratio, with "ok" or the shortfall.

llama.cpp: ``--llama-bin`` holds ``llama-bench`` and ``llama-quantize`` (built from the
``llama-cpp-python`` sdist's ``vendor/llama.cpp``, see benches/README.md), ``--llama-src`` its
source (for ``convert_hf_to_gguf.py``). The f32 GGUF and its Q8_0 / Q4_0 / Q4_1 quantizations
are made once beside the model folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench_generate import (
    _RSS_PROBE,
    NEW,
    PREFILL,
    PROMPT,
    decode_only,
    llama_cpp,
    read_bandwidth,
)
from common import machine, timed

import ferrolm

CACHE = Path.home() / ".cache" / "ferrolm-bench"
SIZES = {
    "124m": {},
    "355m": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
}
# ferrolm's format -> llama.cpp's type of the same bits.
PRECISIONS = [
    ("f32", None, "F32"),
    ("int8", "q8_0", "Q8_0"),
    ("int4", "q4_0", "Q4_0"),
    ("q4_1", "q4_1", "Q4_1"),
]
# Issue 5's targets: decode and prefill vs llama.cpp at the same bits.
DECODE_TARGET = {"q8_0": 1.2, "q4_0": 1.25}
PREFILL_TARGET = {"q8_0": 1.0, "q4_0": 1.0}
BANDWIDTH_TARGET = 0.75
RSS_TARGET = 1.15
TRANSFORMERS_TARGET = 6.0  # int8 decode vs transformers fp32


def build(size: str) -> Path:
    folder = CACHE / f"gpt2-{size}"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from gpt2_files import write_gpt2_files
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**SIZES[size])).eval().save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_ctx"] = cfg["n_positions"]  # llama.cpp's converter reads it
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    write_gpt2_files(folder)
    return folder


def quantized(folder: Path, fmt: str | None) -> Path:
    """The folder ferrolm saves after quantizing to ``fmt`` (made once)."""
    if fmt is None:
        return folder
    out = folder.with_name(f"{folder.name}-{fmt}")
    if not (out / "model.safetensors").is_file():
        ferrolm.GPT2LMHeadModel.from_pretrained(folder, quantize=fmt).save_pretrained(out)
    return out


def gguf(folder: Path, ltype: str, bin_dir: Path, src: Path) -> Path:
    """llama.cpp's GGUF of the same weights at ``ltype`` (converted / quantized once)."""
    f32 = folder.with_name(f"{folder.name}-F32.gguf")
    if not f32.is_file():
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        subprocess.run(
            [
                sys.executable,
                str(src / "convert_hf_to_gguf.py"),
                str(folder),
                "--outtype",
                "f32",
                "--outfile",
                str(f32),
            ],
            check=True,
            env=env,
            capture_output=True,
        )
    if ltype == "F32":
        return f32
    out = folder.with_name(f"{folder.name}-{ltype}.gguf")
    if not out.is_file():
        subprocess.run(
            [str(bin_dir / "llama-quantize"), str(f32), str(out), ltype, "2"],
            check=True,
            capture_output=True,
        )
    return out


def verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return ""
    return f"(target {target:g}x: {'ok' if ratio >= target else f'short by {target - ratio:.2f}x'})"


def run_size(size: str, args: argparse.Namespace, bandwidth: float) -> None:
    import numpy as np
    import torch
    import transformers

    folder = build(size)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 50257, (1, PROMPT)).tolist()
    long_prompt = rng.integers(0, 50257, (1, PREFILL)).tolist()
    greedy = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    one = dict(max_new_tokens=1, min_new_tokens=1, do_sample=False)

    peer = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    pt = torch.tensor(prompt)
    with torch.no_grad():
        t_peer = decode_only(
            lambda: peer.generate(pt, pad_token_id=0, **greedy),
            lambda: peer.generate(pt, pad_token_id=0, **one),
            args.repeat,
        )
    peer_tps = (NEW - 1) / t_peer[0]
    params = 0  # set from the f32 model below
    print(f"\n## GPT-2 {size} shapes ({folder})")
    print(f"transformers fp32 decode: {peer_tps:.1f} tok/s")
    head = (
        f"{'precision':<10} {'weights':>9} {'decode':>11} {'llama.cpp':>10} {'ratio':>6} "
        f"{'prefill':>11} {'llama.cpp':>10} {'ratio':>6} {'% of ceiling':>12} {'RSS/(w+KV)':>10}"
    )
    print(head)
    notes = []
    for name, fmt, ltype in PRECISIONS:
        path = quantized(folder, fmt)
        model = ferrolm.AutoModelForCausalLM.from_pretrained(path)
        if fmt is None:
            params = model.num_parameters()
        t_dec = decode_only(
            lambda m=model: m.generate(prompt, eos_token_id=[], **greedy),
            lambda m=model: m.generate(prompt, eos_token_id=[], **one),
            args.repeat,
        )
        dec = (NEW - 1) / t_dec[0]
        t_pre = timed(lambda m=model: m.generate(long_prompt, eos_token_id=[], **one), args.repeat)
        pre = PREFILL / t_pre[0]
        weight = model._core.weight_bytes
        ceiling = bandwidth / weight
        rss = int(
            subprocess.run(
                [sys.executable, "-c", _RSS_PROBE, str(path), str(args.threads)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()[-1]
        )
        kv = model._core.new_cache(1).nbytes
        ll = {}
        if args.llama_bin and args.llama_src:
            ll = llama_cpp(
                args.llama_bin / "llama-bench",
                gguf(folder, ltype, args.llama_bin, args.llama_src),
                args.threads,
                args.repeat,
            )
        rd = dec / ll["decode"] if ll else float("nan")
        rp = pre / ll["prefill"] if ll else float("nan")
        label = f"{name}" + (f" {fmt}" if fmt and fmt != name else "")
        nan = float("nan")
        print(
            f"{label:<10} {weight / 1e6:>7.0f}MB {dec:>7.1f} t/s {ll.get('decode', nan):>10.1f} "
            f"{rd:>5.2f}x {pre:>7.0f} t/s {ll.get('prefill', nan):>10.0f} {rp:>5.2f}x "
            f"{dec / ceiling * 100:>11.0f}% {rss / (weight + kv):>10.2f}"
        )
        if fmt in DECODE_TARGET and ll:
            notes.append(
                f"{name} decode vs llama.cpp {ltype}: {rd:.2f}x {verdict(rd, DECODE_TARGET[fmt])}"
            )
            notes.append(
                f"{name} prefill vs llama.cpp {ltype}: {rp:.2f}x {verdict(rp, PREFILL_TARGET[fmt])}"
            )
        if fmt is not None:
            share = dec / ceiling
            ok = "ok" if share >= BANDWIDTH_TARGET else "short"
            rss_ratio = rss / (weight + kv)
            rss_ok = "ok" if rss_ratio <= RSS_TARGET else "short"
            notes.append(
                f"{name} decode at {share * 100:.0f}% of the bandwidth ceiling "
                f"(target {BANDWIDTH_TARGET * 100:.0f}%: {ok}); peak RSS "
                f"{rss / 1e6:.0f} MB = {rss_ratio:.2f}x weights + KV "
                f"(target <= {RSS_TARGET}: {rss_ok})"
            )
        if fmt == "q8_0":
            r = dec / peer_tps
            notes.append(
                f"int8 decode vs transformers fp32: {r:.1f}x {verdict(r, TRANSFORMERS_TARGET)}"
            )
        del model
    print(
        f"({params / 1e6:.0f}M parameters; decode = {NEW}-token greedy generation after a "
        f"{PROMPT}-token prompt, decode steps only; prefill = {PREFILL}-token prompt to its first "
        f"token; medians of {args.repeat})"
    )
    for n in notes:
        print("  " + n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="124m", help="comma-separated: 124m, 355m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--llama-bin", type=Path, help="llama.cpp build's bin/ (llama-bench, llama-quantize)"
    )
    ap.add_argument("--llama-src", type=Path, help="llama.cpp source (convert_hf_to_gguf.py)")
    args = ap.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s!r}; expected {sorted(SIZES)}")
    if args.llama_bin and not (args.llama_bin / "llama-bench").is_file():
        ap.error(f"{args.llama_bin}/llama-bench not found")
    if bool(args.llama_bin) != bool(args.llama_src):
        ap.error("--llama-bin and --llama-src go together")

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    ferrolm.set_num_threads(args.threads)
    bandwidth = read_bandwidth()
    print(
        f"machine: {machine()}; ferrolm {ferrolm.__version__} ({ferrolm.kernel_isa()} kernels), "
        f"transformers {transformers.__version__}, torch {torch.__version__}; "
        f"{args.threads} threads; read bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    for s in sizes:
        run_size(s, args, bandwidth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
