"""Tokenizer training, ferrolm against Hugging Face tokenizers' trainers, side by side.

    python benches/bench_train.py [--corpus FILE ...] [--repeat N] [--threads N]

The same corpus, vocabulary size, special tokens and min_frequency (2) for both:
- byte-level BPE (GPT-2's split pattern, the 256 bytes as initial alphabet):
  ``ferrolm.train_bpe`` against ``BpeTrainer`` with the ByteLevel pre-tokenizer;
- WordPiece (BERT normalizer and pre-tokenizer): ``ferrolm.train_wordpiece`` against
  ``WordPieceTrainer``.
Corpora default to ../shared/data/corpora (English, Chinese) and 4 MB of CPython's stdlib.
Each row also prints how many tokens the two vocabularies share (same greedy algorithm; ties
among the rarest merges may go either way). The ratio is tokenizers' time over ferrolm's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common import Table, machine, millis, timed

import ferrolm
from ferrolm.train import BERT_SPECIAL_TOKENS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, action="append", help="a UTF-8 text file (repeatable)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    # tokenizers sizes its pool from this variable; set before it is imported.
    os.environ["RAYON_RS_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    import tokenizers
    from corpora import shared_corpus_dir, stdlib_code
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    ferrolm.set_num_threads(args.threads)
    named: dict[str, str] = {}
    if args.corpus:
        for p in args.corpus:
            named[p.name] = p.read_text(encoding="utf-8", errors="replace")
    else:
        d = shared_corpus_dir()
        for name in ("en-fortunes.txt", "zh-fortunes.txt"):
            if d is not None and (d / name).is_file():
                named[name] = (d / name).read_text(encoding="utf-8")
        named["stdlib-code (4 MB)"] = stdlib_code()

    print(
        f"machine: {machine()}; ferrolm {ferrolm.__version__}, tokenizers {tokenizers.__version__}"
    )
    print(f"median of {args.repeat} runs [min..max]; {args.threads} threads for both")
    table = Table("tokenizers")
    notes = []
    first = next(iter(named))
    everything = "".join(named.values())
    size_all = len(everything.encode()) / 1e6
    size_first = len(named[first].encode()) / 1e6

    def hf_bpe(texts: list[str], vocab: int) -> tokenizers.Tokenizer:
        t = tokenizers.Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tr = trainers.BpeTrainer(
            vocab_size=vocab,
            min_frequency=2,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        t.train_from_iterator(texts, tr)
        return t

    def hf_wordpiece(texts: list[str], vocab: int) -> tokenizers.Tokenizer:
        t = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
        t.normalizer = normalizers.BertNormalizer(lowercase=True)
        t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tr = trainers.WordPieceTrainer(
            vocab_size=vocab,
            min_frequency=2,
            special_tokens=list(BERT_SPECIAL_TOKENS),
            show_progress=False,
        )
        t.train_from_iterator(texts, tr)
        return t

    def ours_bpe(texts: list[str], vocab: int) -> ferrolm.Tokenizer:
        return ferrolm.train_bpe(texts, vocab, show_progress=False)

    def ours_wordpiece(texts: list[str], vocab: int) -> ferrolm.Tokenizer:
        return ferrolm.train_wordpiece(texts, vocab, show_progress=False)

    import json

    runs = [
        (f"BPE, vocab 8,000, {first} ({size_first:.1f} MB)", [named[first]], 8000, "bpe"),
        (f"BPE, vocab 32,000, all corpora ({size_all:.1f} MB)", [everything], 32000, "bpe"),
        (f"WordPiece, vocab 30,522, all corpora ({size_all:.1f} MB)", [everything], 30522, "wp"),
    ]
    for what, texts, vocab, kind in runs:
        ours_fn = ours_bpe if kind == "bpe" else ours_wordpiece
        peer_fn = hf_bpe if kind == "bpe" else hf_wordpiece
        ours_vocab = set(json.loads(ours_fn(texts, vocab).to_json())["model"]["vocab"])
        peer_vocab = set(peer_fn(texts, vocab).get_vocab())
        notes.append(
            f"{what}: vocabularies of {len(ours_vocab)} and {len(peer_vocab)} tokens share "
            f"{len(ours_vocab & peer_vocab)}"
        )
        table.add(
            what,
            timed(lambda f=ours_fn, t=texts, v=vocab: f(t, v), args.repeat),
            timed(lambda f=peer_fn, t=texts, v=vocab: f(t, v), args.repeat),
            millis,
        )
    table.print()
    print()
    for n in notes:
        print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
