"""GPT-2 tokenization, ferrolm against tiktoken, side by side in one process.

    python benches/bench_tokenize.py [--corpus FILE ...] [--repeat N] [--threads N]

Each figure is the median of N timed repetitions after a warm-up ([min..max] beside it); the
ratio is tiktoken's time over ferrolm's (above 1: ferrolm is faster). Both run the same GPT-2
ranks (the file bundled with ferrolm) and the same split pattern. By default the corpora are
../shared/data/corpora/{en,zh}-fortunes.txt (when present) and the first 4 MB of CPython's sorted
stdlib *.py files. Adversarial inputs (one letter, spaces, random bytes decoded with
replacement) run at 50 and 200 KB to show how time grows, against tiktoken and Hugging Face
tokenizers (GPT-2 rebuilt from the same ranks); the resident memory that loading the
tokenizer adds is measured in a fresh process for each.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

from common import Table, machine, micros, millis, per_call, rate, timed

import ferrolm
from ferrolm._data import data_path
from ferrolm.tokenizer import GPT2_PATTERN


def load_corpora(paths: list[Path] | None) -> dict[str, str]:
    from corpora import shared_corpus_dir, stdlib_code

    if paths:
        return {p.name: p.read_text(encoding="utf-8", errors="replace") for p in paths}
    out: dict[str, str] = {}
    d = shared_corpus_dir()
    if d is not None:
        for name in ("en-fortunes.txt", "zh-fortunes.txt"):
            if (d / name).is_file():
                out[name] = (d / name).read_text(encoding="utf-8", errors="replace")
    out["stdlib-code (4 MB)"] = stdlib_code()
    return out


def documents(text: str) -> list[str]:
    """Cuts text into documents of 1-2 KB."""
    docs, i = [], 0
    while i < len(text):
        n = 1000 + (i * 7919) % 1000
        docs.append(text[i : i + n])
        i += n
    return docs


def main() -> int:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", action="append", type=Path, help="text file (repeatable)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads for the batch rows")
    args = ap.parse_args()

    ours = ferrolm.Tokenizer.builtin("gpt2")
    peer = tiktoken.Encoding(
        "gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(data_path("gpt2.tiktoken"))),
        special_tokens={"<|endoftext|>": 50256},
    )
    ferrolm.set_num_threads(args.threads)
    print(f"machine: {machine()}; ferrolm {ferrolm.__version__}, tiktoken {tiktoken.__version__}")
    print(f"median of {args.repeat} runs [min..max]")
    table = Table("tiktoken")
    r = args.repeat

    for name, text in load_corpora(args.corpus).items():
        assert ours.encode_ordinary(text) == peer.encode_ordinary(text), name
        mb = rate(len(text.encode()))
        table.add(
            f"encode, 1 thread: {name}",
            timed(lambda t=text: ours.encode_ordinary(t), r),
            timed(lambda t=text: peer.encode_ordinary(t), r),
            mb,
        )
        docs = documents(text)
        table.add(
            f"encode_batch, {args.threads} threads, 1-2 KB docs: {name}",
            timed(lambda d=docs: ours.encode_batch(d, disallowed_special=()), r),
            timed(lambda d=docs: peer.encode_ordinary_batch(d, num_threads=args.threads), r),
            mb,
        )
        ids = peer.encode_ordinary(text)
        table.add(
            f"decode: {name}",
            timed(lambda i=ids: ours.decode(i), r),
            timed(lambda i=ids: peer.decode(i), r),
            mb,
        )

    sentence = "The quick brown fox jumps over the lazy dog near the river."
    table.add(
        "encode one 10-word sentence per call (default special check)",
        per_call(lambda: ours.encode(sentence), r, 20000),
        per_call(lambda: peer.encode(sentence), r, 20000),
        micros,
    )
    table.add(
        "encode_ordinary one 10-word sentence per call",
        per_call(lambda: ours.encode_ordinary(sentence), r, 20000),
        per_call(lambda: peer.encode_ordinary(sentence), r, 20000),
        micros,
    )
    growth = []
    hf = hf_gpt2()
    adversarial = Table("tokenizers")
    rng = random.Random(0)
    noise = rng.randbytes(200_000).decode("utf-8", errors="replace")
    for label, make in (
        ("one letter, no spaces", lambda n: "a" * n),
        ("spaces", lambda n: " " * n),
        ("random bytes decoded with replacement", lambda n: noise[: n // 2]),
    ):
        pair = []
        for n in (50_000, 200_000):
            t = make(n)
            assert ours.encode(t) == peer.encode(t), label
            timings = (timed(lambda t=t: ours.encode(t), r), timed(lambda t=t: peer.encode(t), r))
            pair.append(timings)
            size = len(t.encode()) // 1000
            table.add(f"adversarial {label}, {size} KB", *timings, millis)
            assert hf.encode(t).ids == peer.encode(t), label
            adversarial.add(
                f"adversarial {label}, {size} KB",
                timings[0],
                timed(lambda t=t: hf.encode(t).ids, min(r, 3)),
                millis,
            )
        growth.append(
            f"{label}: ferrolm {pair[1][0][0] / pair[0][0][0]:.1f}x, "
            f"tiktoken {pair[1][1][0] / pair[0][1][0]:.1f}x"
        )
    table.print()
    adversarial.print()
    print("\ntime for 4x the adversarial input (linear: about 4x):")
    for g in growth:
        print("  " + g)
    print("\nresident memory added by loading GPT-2 and encoding one sentence:")
    for who in ("ferrolm", "tiktoken"):
        print(f"  {who}: {rss_of_loading(who):.1f} MB")
    return 0


_RSS_PROBE = """
import sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == "ferrolm":
    import ferrolm
    from ferrolm._data import data_path
    before = rss()
    tok = ferrolm.Tokenizer.from_tiktoken(data_path("gpt2.tiktoken"))
else:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    import ferrolm
    from ferrolm._data import data_path
    from ferrolm.tokenizer import GPT2_PATTERN
    before = rss()
    tok = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(data_path("gpt2.tiktoken"))), special_tokens={})
tok.encode("The quick brown fox jumps over the lazy dog.")
print((rss() - before) / 1e6)
"""


def hf_gpt2():  # type: ignore[no-untyped-def]
    """GPT-2 in Hugging Face tokenizers, from vocab.json + merges.txt rebuilt offline from the
    same bundled ranks (tests/gpt2_files.py)."""
    import tempfile

    import tokenizers
    from gpt2_files import write_gpt2_files
    from tokenizers import decoders, models, pre_tokenizers

    folder = write_gpt2_files(Path(tempfile.mkdtemp(prefix="ferrolm-bench-")))
    tok = tokenizers.Tokenizer(
        models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def rss_of_loading(who: str) -> float:
    """Resident memory (MB) that loading the GPT-2 tokenizer adds, in a fresh process (Linux)."""
    if not Path("/proc/self/statm").exists():
        return float("nan")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, who], check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip())


if __name__ == "__main__":
    sys.exit(main())
