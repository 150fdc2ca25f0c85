"""GPT-2 generation, ferrolm against transformers (PyTorch) and optionally llama.cpp, side by side.

    python benches/bench_generate.py [--model DIR] [--threads N] [--repeat N]
                                     [--llama-bench PATH --gguf FILE]

The model defaults to GPT-2 124M shapes with random weights (transformers' GPT2Config(),
torch.manual_seed(0)), built once into ~/.cache/ferrolm-bench/gpt2-124m; ``--model`` takes any
GPT-2 folder. Both engines use the same thread count (``torch.set_num_threads``). Rows:
- decode: a 32-token prompt, 128 new tokens, greedy: the decode steps alone (the time of 128
  new tokens less that of 1, i.e. less the prefill), tokens/s of the 127;
- prefill: the logits of every position of a 512-token prompt (``model(ids).logits``), and
  the time to the first new token (only the last position's logits, as llama.cpp computes);
- the seeds' call, ``num_return_sequences=5, do_sample=True``: aggregate decode tokens/s, against
  ferrolm's own single-sequence rate (transformers' is printed too);
- the memory-bandwidth ceiling of decoding (weight bytes per token / measured read bandwidth);
- peak RSS of a process that loads the model and generates, against weights + KV cache.
With ``--llama-bench`` (llama.cpp's ``llama-bench``) and ``--gguf`` (the same weights converted
by llama.cpp's ``convert_hf_to_gguf.py --outtype f32``), llama.cpp's pp512 / tg128 are added.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import Table, Timing, machine, timed

import ferrolm

PROMPT, NEW, PREFILL, SEQS = 32, 128, 512, 5


def build_gpt2(folder: Path) -> Path:
    """GPT-2 124M shapes, random weights, fixed seed; config.json gets n_ctx (llama.cpp's
    converter needs it; transformers 5 leaves it out)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).eval().save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_ctx"] = cfg["n_positions"]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from gpt2_files import write_gpt2_files

    write_gpt2_files(folder)
    return folder


def decode_only(full: Callable[[], object], first: Callable[[], object], repeat: int) -> Timing:
    """The time of the decode steps alone: a generation of NEW tokens less one of 1 token (the
    prefill and the first token), run alternately; median, min and max of the differences."""
    full()
    first()
    diffs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        full()
        t1 = time.perf_counter()
        first()
        t2 = time.perf_counter()
        diffs.append((t1 - t0) - (t2 - t1))
    return statistics.median(diffs), min(diffs), max(diffs)


def read_bandwidth() -> float:
    """Bytes/s that ferrolm's thread pool reads from memory (a 1 GiB buffer, best of 5)."""
    return ferrolm._core._read_bandwidth(1 << 30)


_RSS_PROBE = """
import sys, ferrolm
ferrolm.set_num_threads(int(sys.argv[2]))
m = ferrolm.AutoModelForCausalLM.from_pretrained(sys.argv[1])
m.generate([[1] * 32], max_new_tokens=128, eos_token_id=[])
# VmHWM: this process's peak (ru_maxrss would carry the forking parent's peak over exec).
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) * 1024)
"""


def llama_cpp(bench: Path, gguf: Path, threads: int, repeat: int) -> dict[str, float]:
    out = subprocess.run(
        [
            str(bench),
            "-m",
            str(gguf),
            "-t",
            str(threads),
            "-p",
            str(PREFILL),
            "-n",
            str(NEW),
            "-r",
            str(repeat),
            "-o",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = json.loads(out[out.index("[") :])
    got = {}
    for r in rows:
        key = "prefill" if r.get("n_prompt", 0) > 0 else "decode"
        got[key] = float(r["avg_ts"])
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--llama-bench", type=Path)
    ap.add_argument("--gguf", type=Path)
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers

    folder = args.model or build_gpt2(Path.home() / ".cache" / "ferrolm-bench" / "gpt2-124m")
    torch.set_num_threads(args.threads)
    ferrolm.set_num_threads(args.threads)
    ours = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    peer = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    rng = np.random.default_rng(0)
    vocab = ours.config["vocab_size"]
    prompt = rng.integers(0, vocab, (1, PROMPT)).tolist()
    long_prompt = rng.integers(0, vocab, (1, PREFILL)).tolist()
    pt_prompt, pt_long = torch.tensor(prompt), torch.tensor(long_prompt)
    greedy = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)

    # The same tokens from both (greedy on the same weights).
    with torch.no_grad():
        want = peer.generate(pt_prompt, pad_token_id=0, **greedy)[0].tolist()
    got = ours.generate(prompt, eos_token_id=[], **greedy)[0]
    same = sum(a == b for a, b in zip(want, got, strict=True)) - PROMPT

    print(
        f"machine: {machine()}; ferrolm {ferrolm.__version__}, transformers "
        f"{transformers.__version__}, torch {torch.__version__}; {args.threads} threads"
    )
    print(f"model: {folder} ({ours.num_parameters() / 1e6:.0f}M parameters, float32)")
    print(f"median of {args.repeat} runs [min..max]; greedy tokens equal: {same}/{NEW}")
    table = Table("transformers")

    def tps(n: int):
        return lambda s: f"{n / s:.1f} tok/s"

    one = dict(max_new_tokens=1, min_new_tokens=1, do_sample=False)
    with torch.no_grad():
        t_ours = decode_only(
            lambda: ours.generate(prompt, eos_token_id=[], **greedy),
            lambda: ours.generate(prompt, eos_token_id=[], **one),
            args.repeat,
        )
        t_peer = decode_only(
            lambda: peer.generate(pt_prompt, pad_token_id=0, **greedy),
            lambda: peer.generate(pt_prompt, pad_token_id=0, **one),
            args.repeat,
        )
        table.add(
            f"decode, {PROMPT}-token prompt, {NEW} new tokens, greedy (decode steps only)",
            t_ours,
            t_peer,
            tps(NEW - 1),
        )
        t_pre = timed(lambda: ours(long_prompt), args.repeat)
        table.add(
            f"prefill, {PREFILL}-token prompt (logits of every position)",
            t_pre,
            timed(lambda: peer(pt_long), args.repeat),
            tps(PREFILL),
        )
        first = dict(max_new_tokens=1, min_new_tokens=1, do_sample=False)
        t_first = timed(lambda: ours.generate(long_prompt, eos_token_id=[], **first), args.repeat)
        table.add(
            f"time to first token, {PREFILL}-token prompt (generate, max_new_tokens=1)",
            t_first,
            timed(lambda: peer.generate(pt_long, pad_token_id=0, **first), args.repeat),
            tps(PREFILL),
        )
        sample = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True)
        sample1 = dict(sample, max_new_tokens=1, min_new_tokens=1)
        kw5 = dict(num_return_sequences=SEQS)
        t5 = decode_only(
            lambda: ours.generate(prompt, seed=0, eos_token_id=[], **kw5, **sample),
            lambda: ours.generate(prompt, seed=0, eos_token_id=[], **kw5, **sample1),
            args.repeat,
        )
        p5 = decode_only(
            lambda: peer.generate(pt_prompt, pad_token_id=0, **kw5, **sample),
            lambda: peer.generate(pt_prompt, pad_token_id=0, **kw5, **sample1),
            args.repeat,
        )
        table.add(
            f"num_return_sequences={SEQS}, do_sample, aggregate (decode steps only)",
            t5,
            p5,
            tps((NEW - 1) * SEQS),
        )
    table.print()

    single = (NEW - 1) / t_ours[0]
    aggregate = (NEW - 1) * SEQS / t5[0]
    print(
        f"\n{SEQS} sequences together: {aggregate:.1f} tok/s aggregate = "
        f"{aggregate / single:.2f}x ferrolm's single-sequence rate ({single:.1f} tok/s)"
    )
    bw = read_bandwidth()
    weight = ours._core.weight_bytes
    ceiling = bw / weight
    print(
        f"memory bandwidth ({args.threads} threads, measured): {bw / 1e9:.1f} GB/s; weights read "
        f"per token: {weight / 1e6:.0f} MB; ceiling {ceiling:.1f} tok/s; ferrolm decodes at "
        f"{single / ceiling * 100:.0f}% of it"
    )
    rss = int(
        subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, str(folder), str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
    )
    kv = ours._core.new_cache(1).nbytes
    print(
        f"peak RSS (load + generate, fresh process): {rss / 1e6:.0f} MB = "
        f"{rss / (weight + kv):.2f}x (weights {weight / 1e6:.0f} MB + KV cache {kv / 1e6:.0f} MB)"
    )
    if args.llama_bench and args.gguf:
        ll = llama_cpp(args.llama_bench, args.gguf, args.threads, args.repeat)
        print(
            f"\nllama.cpp (llama-bench, f32 GGUF of the same weights): decode "
            f"{ll['decode']:.1f} tok/s -> ferrolm {single / ll['decode']:.2f}x; prefill "
            f"{ll['prefill']:.1f} tok/s -> ferrolm {PREFILL / t_first[0] / ll['prefill']:.2f}x "
            "(time to first token)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
