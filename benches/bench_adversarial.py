"""Adversarial text from 2^10 to 2^24 characters: time per doubling, ferrolm beside tiktoken and
Hugging Face tokenizers on the same GPT-2 ranks (and WordPiece beside tokenizers).

    python benches/bench_adversarial.py [--max-log2 24] [--repeat 3] [--file FILE]
                                        [--engines ferrolm]

Generators are in ``benches/adversarial.py`` (one letter repeated, digits, white space,
alternating scripts, random bytes, emoji with zero-width joiners); ``--file`` adds the text
of FILE, cut to each length. For each generator it prints the time at each length and the
growth per doubling over the last three doublings (linear: 2.0; the promise in SECURITY.md:
at most 2.2). Peers that are not installed are left out; a peer slower than 20 s on a length
is stopped there and shown as "-" from then on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from adversarial import GENERATORS
from common import machine

import ferrolm

LIMIT_S = 20.0


def engines() -> dict[str, Callable[[str], object]]:
    from ferrolm._data import data_path

    gpt2 = ferrolm.Tokenizer.from_tiktoken(data_path("gpt2.tiktoken"))
    bert = ferrolm.Tokenizer.builtin("bert-base-uncased")
    out: dict[str, Callable[[str], object]] = {
        "ferrolm gpt2": lambda t: gpt2.encode(t, disallowed_special=()),
        "ferrolm bert": lambda t: bert.encode(t, add_special_tokens=False),
    }
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        from ferrolm.tokenizer import GPT2_PATTERN

        tt = tiktoken.Encoding(
            "gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=load_tiktoken_bpe(str(data_path("gpt2.tiktoken"))),
            special_tokens={},
        )
        out["tiktoken gpt2"] = lambda t: tt.encode_ordinary(t)
    except ImportError:
        print("tiktoken not installed: left out", file=sys.stderr)
    try:
        import tempfile

        import tokenizers as hf
        from gpt2_files import write_gpt2_files

        files = write_gpt2_files(Path(tempfile.mkdtemp()))
        hf_gpt2 = hf.Tokenizer(
            hf.models.BPE.from_file(str(files / "vocab.json"), str(files / "merges.txt"))
        )
        hf_gpt2.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        out["tokenizers gpt2"] = lambda t: hf_gpt2.encode(t).ids
        vocab_txt = str(data_path("bert-base-uncased-vocab.txt"))
        hf_bert = hf.Tokenizer(hf.models.WordPiece.from_file(vocab_txt, unk_token="[UNK]"))
        hf_bert.normalizer = hf.normalizers.BertNormalizer(lowercase=True)
        hf_bert.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
        out["tokenizers bert"] = lambda t: hf_bert.encode(t, add_special_tokens=False).ids
    except ImportError:
        print("tokenizers not installed: left out", file=sys.stderr)
    return out


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median of `repeat` runs after one untimed run (the first call on a text also converts
    it to UTF-8, which Python then keeps, and touches fresh memory); a call over 5 s (a peer
    far off linear) is timed once."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > 5.0:
        return first
    times: list[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--min-log2", type=int, default=10)
    ap.add_argument("--max-log2", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--file", type=Path, help="also time this file's text, cut to each length")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engines", default="", help="comma-separated substrings: only these engines")
    args = ap.parse_args()
    ferrolm.set_num_threads(args.threads)
    gens: dict[str, Callable[[int], str]] = {
        k: (lambda n, g=g: g(n, seed=0)) for k, g in GENERATORS.items()
    }
    if args.file:
        body = args.file.read_text(encoding="utf-8", errors="replace")

        def from_file(n: int) -> str:
            return (body * (n // max(1, len(body)) + 1))[:n]

        gens[args.file.name] = from_file
    print(machine())
    sizes = [1 << k for k in range(args.min_log2, args.max_log2 + 1)]
    eng = engines()
    if args.engines:
        keep = [e.strip() for e in args.engines.split(",")]
        eng = {k: v for k, v in eng.items() if any(e in k for e in keep)}
    worst: dict[str, float] = {}
    for gname, gen in gens.items():
        print(f"\n{gname}")
        print(
            "| engine | "
            + " | ".join(f"2^{n.bit_length() - 1}" for n in sizes)
            + " | per doubling (last 3) |"
        )
        print("|---" * (len(sizes) + 2) + "|")
        texts = {n: gen(n) for n in sizes}
        for ename, enc in eng.items():
            row: list[float | None] = []
            stopped = False
            for n in sizes:
                if stopped:
                    row.append(None)
                    continue
                t = median_time(lambda enc=enc, text=texts[n]: enc(text), args.repeat)
                row.append(t)
                stopped = t > LIMIT_S
            done = [t for t in row if t is not None]
            growth = (
                (done[-1] / done[-4]) ** (1 / 3) if len(done) >= 4 and row[-1] is not None else None
            )
            if growth is not None and ename.startswith("ferrolm"):
                worst[f"{ename} / {gname}"] = growth
            g = f"{growth:.2f}x" if growth is not None else "-"
            print(f"| {ename} | " + " | ".join(fmt(t) for t in row) + f" | {g} |")
    if worst:
        name, g = max(worst.items(), key=lambda kv: kv[1])
        verdict = "linear" if g <= 2.2 else "ABOVE 2.2x"
        print(f"\nferrolm's largest growth per doubling: {g:.2f}x ({name}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
