"""GPT-2 tokenization, ferrolm against tiktoken, side by side in one process.

    python benches/bench_tokenize.py [--corpus FILE ...] [--repeat N] [--threads N]

Each figure is the median of N timed repetitions after a warm-up (min and max in brackets);
ratios are ferrolm's speed over tiktoken's (higher is better for ferrolm). Both run the same GPT-2
ranks (the file bundled with ferrolm) and the same split pattern. By default the corpora are
../shared/data/corpora/{en,zh}-fortunes.txt (when present) and the first 4 MB of CPython's sorted
stdlib *.py files.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import tiktoken
from corpora import shared_corpus_dir, stdlib_code
from tiktoken.load import load_tiktoken_bpe

import ferrolm
from ferrolm._data import data_path
from ferrolm.tokenizer import GPT2_PATTERN


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def per_call(fn: Callable[[], object], repeat: int, calls: int) -> tuple[float, float, float]:
    def loop() -> None:
        for _ in range(calls):
            fn()

    med, lo, hi = timed(loop, repeat)
    return med / calls, lo / calls, hi / calls


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", action="append", type=Path, help="text file (repeatable)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads for the batch rows")
    args = ap.parse_args()

    corpora: dict[str, str] = {}
    if args.corpus:
        for p in args.corpus:
            corpora[p.name] = p.read_text(encoding="utf-8", errors="replace")
    else:
        d = shared_corpus_dir()
        if d is not None:
            for name in ("en-fortunes.txt", "zh-fortunes.txt"):
                if (d / name).is_file():
                    corpora[name] = (d / name).read_text(encoding="utf-8", errors="replace")
        corpora["stdlib-code (4 MB)"] = stdlib_code()

    ours = ferrolm.Tokenizer.builtin("gpt2")
    peer = tiktoken.Encoding(
        "gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(data_path("gpt2.tiktoken"))),
        special_tokens={"<|endoftext|>": 50256},
    )
    ferrolm.set_num_threads(args.threads)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs; ferrolm {ferrolm.__version__}, "
        f"tiktoken {tiktoken.__version__}; median of {args.repeat} [min..max]"
    )
    rows: list[tuple[str, str, str, str]] = []

    def cell(t: tuple[float, float, float], unit: Callable[[float], str]) -> str:
        # Rates fall as times rise: show the range of displayed values in ascending order.
        lo, hi = sorted((t[1], t[2]), key=lambda x: float(unit(x).split()[0]))
        return f"{unit(t[0])} [{unit(lo).split()[0]}..{unit(hi).split()[0]}]"

    def row(
        what: str,
        ours_t: tuple[float, float, float],
        peer_t: tuple[float, float, float],
        unit: Callable[[float], str],
    ) -> None:
        rows.append((what, cell(ours_t, unit), cell(peer_t, unit), f"{peer_t[0] / ours_t[0]:.2f}x"))

    def corpus_rows(name: str, text: str) -> None:
        mb = len(text.encode()) / 1e6
        assert ours.encode_ordinary(text) == peer.encode_ordinary(text), name

        def rate(s: float) -> str:
            return f"{mb / s:.1f} MB/s"

        row(
            f"encode, 1 thread: {name}",
            timed(lambda: ours.encode_ordinary(text), args.repeat),
            timed(lambda: peer.encode_ordinary(text), args.repeat),
            rate,
        )

        docs, i = [], 0
        while i < len(text):
            n = 1000 + (i * 7919) % 1000  # documents of 1-2 KB
            docs.append(text[i : i + n])
            i += n
        row(
            f"encode_batch, {args.threads} threads, 1-2 KB docs: {name}",
            timed(lambda: ours.encode_batch(docs, disallowed_special=()), args.repeat),
            timed(lambda: peer.encode_ordinary_batch(docs, num_threads=args.threads), args.repeat),
            rate,
        )

        ids = peer.encode_ordinary(text)
        row(
            f"decode: {name}",
            timed(lambda: ours.decode(ids), args.repeat),
            timed(lambda: peer.decode(ids), args.repeat),
            rate,
        )

    for name, text in corpora.items():
        corpus_rows(name, text)

    sentence = "The quick brown fox jumps over the lazy dog near the river."

    def us(s: float) -> str:
        return f"{s * 1e6:.2f} us"

    row(
        "encode one 10-word sentence per call (default special check)",
        per_call(lambda: ours.encode(sentence), args.repeat, 20000),
        per_call(lambda: peer.encode(sentence), args.repeat, 20000),
        us,
    )
    row(
        "encode_ordinary one 10-word sentence per call",
        per_call(lambda: ours.encode_ordinary(sentence), args.repeat, 20000),
        per_call(lambda: peer.encode_ordinary(sentence), args.repeat, 20000),
        us,
    )

    for label, gen in (("one letter, no spaces", lambda n: "a" * n), ("spaces", lambda n: " " * n)):
        for n in (50_000, 200_000):
            t = gen(n)
            row(
                f"adversarial {label}, {n // 1000} KB",
                timed(lambda t=t: ours.encode(t), 3),
                timed(lambda t=t: peer.encode(t), 3),
                us,
            )

    table = [("workload", "ferrolm", "tiktoken", "tiktoken time / ferrolm time"), *rows]
    w = [max(len(r[i]) for r in table) for i in range(4)]
    print()
    for r in table:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
