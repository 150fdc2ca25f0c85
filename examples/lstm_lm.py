"""The seed's LSTM language model, end to end and offline: a BPE vocabulary trained by ferrolm,
an Embedding → LSTM → Dense model trained with PyTorch, exported, then run by ferrolm
(generation and perplexity) without PyTorch.

    python examples/lstm_lm.py [--corpus FILE] [--minutes 3] [--out FOLDER]

The corpus defaults to ../shared/data/corpora/en-fortunes.txt when it exists, else the
CPython standard library's ``*.py`` files (code is text too). 90% trains, the last 10% is
held out for perplexity. The model is saved to ``--out``, by default a new temporary folder
(its path is printed), never into the current directory unasked.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import ferrolm


def default_corpus() -> str:
    shared = Path(__file__).resolve().parents[2] / "shared/data/corpora/en-fortunes.txt"
    if shared.is_file():
        return shared.read_text(encoding="utf-8")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for f in sorted(stdlib.glob("*.py")):
        t = f.read_text(encoding="utf-8", errors="replace")
        texts.append(t)
        size += len(t)
        if size > 3_000_000:
            break
    return "\n".join(texts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="a UTF-8 text file")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time (default 3)")
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--embedding", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument(
        "--out", type=Path, help="the folder to save the model to (default: a new temporary folder)"
    )
    ap.add_argument("--prompt", default="The meaning of life is")
    args = ap.parse_args()
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="ferrolm-lstm-lm-"))

    import torch

    from ferrolm.torch_ref.lstm import LSTMRef, train_lm

    text = args.corpus.read_text(encoding="utf-8") if args.corpus else default_corpus()
    cut = int(len(text) * 0.9)
    train_text, held_out = text[:cut], text[cut:]
    print(f"corpus: {len(text):,} characters ({len(train_text):,} to train on)")

    # 1. A byte-level BPE vocabulary, trained by ferrolm.
    t0 = time.perf_counter()
    tok = ferrolm.train_bpe([train_text], vocab_size=args.vocab_size)
    ids = tok.encode(train_text)
    print(f"1. tokenizer: {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f} s; "
          f"{len(ids):,} training tokens")  # fmt: skip

    # 2. The Keras program's model, in PyTorch, trained for a few minutes on the CPU.
    torch.manual_seed(0)
    torch.set_num_threads(ferrolm.get_num_threads())
    model = LSTMRef(tok.vocab_size, args.embedding, args.hidden, args.layers)

    def report(step: int, loss: float, elapsed: float) -> None:
        print(f"   step {step:5d}  loss {loss:.3f}  ({elapsed:.0f} s)", flush=True)

    loss = train_lm(model, ids, seconds=60 * args.minutes, report=report)
    print(f"2. trained {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
          f"final training loss {loss:.3f}")  # fmt: skip

    # 3. Exported as the folder ferrolm reads (safetensors + config.json + tokenizer.json).
    eot = tok.token_to_id("<|endoftext|>")
    folder = model.save(args.out, tokenizer=tok, eos_token_id=eot, bos_token_id=eot)
    print(f"3. saved to {folder}/")

    # 4. ferrolm alone: generation and perplexity (no PyTorch needed from here on).
    lm = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    print(f"4. {lm}")
    out = lm.generate_text(args.prompt, max_new_tokens=40, do_sample=True, top_k=40, seed=0)
    print(f"   sample: {out!r}")
    t0 = time.perf_counter()
    # Windows of 1,024 tokens, side by side (an LSTM needs no overlap to see its context).
    ppl = ferrolm.perplexity(lm, lm.tokenizer, held_out[:100_000], max_length=1024, stride=1024)
    print(f"   perplexity on the held-out 10% (first 100k characters): {ppl:.1f} "
          f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
