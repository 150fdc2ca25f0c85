"""LSTM language models: ferrolm beside PyTorch eager, ONNX Runtime and Keras 3, one run.

    python benches/bench_lstm.py [--threads 2] [--repeat 5] [--vocab 10000] [--hidden 1024]

Shapes (issue 9): vocabulary 10,000, embedding 256, 2 LSTM layers of 1,024 units, Dense to the
vocabulary: about 24M parameters (96 MB fp32), random weights from a fixed seed, the same for
every engine (PyTorch modules saved with ``ferrolm.lstm.save_torch_lstm``; Keras' layers given
the same arrays; ONNX Runtime runs ``torch.onnx.export`` of a one-step model and of a whole-
sequence model).

- generation, batch 1: per-token latency of a greedy loop (the state carried step to step; the
  argmax picked by each engine's caller); ferrolm's ``generate`` runs the whole loop in Rust.
  Printed beside the bandwidth floor: weight bytes read per step over the measured read bandwidth.
- scoring a 512-step sequence (perplexity): one call over the whole sequence; ferrolm computes
  all steps' input projections as one GEMM, PyTorch runs oneDNN's fused LSTM.
- batch 32 generation throughput: 32 sequences decoded together, 64 new tokens.

Targets: generation ≥ 3× PyTorch eager and ≥ 1.5× ONNX Runtime, within 1.3× of the bandwidth
floor; scoring ≥ 1.0× PyTorch; batch 32 ≥ 1.5× PyTorch. Keras' figures are printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

from common import machine, timed

import ferrolm

STEPS = 64
SCORE = 512
BATCH = 32


def median_time(fn: Any, repeat: int) -> float:
    return timed(fn, repeat)[0]


def verdict(ratio: float, target: float) -> str:
    return f"target {target}×: {'meets' if ratio >= target else 'SHORT'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=10_000)
    ap.add_argument("--embedding", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    ferrolm.set_num_threads(args.threads)
    torch.manual_seed(0)
    v, e, h, n_layers = args.vocab, args.embedding, args.hidden, args.layers
    emb = torch.nn.Embedding(v, e)
    lstm = torch.nn.LSTM(e, h, n_layers, batch_first=True)
    fc = torch.nn.Linear(h, v)
    for mod in (emb, lstm, fc):
        mod.eval().requires_grad_(False)
    tmp = Path(tempfile.mkdtemp(prefix="ferrolm-bench-lstm-"))
    ferrolm.lstm.save_torch_lstm(tmp / "model", emb, lstm, fc)
    ours = ferrolm.AutoModelForCausalLM.from_pretrained(tmp / "model")
    params = sum(p.numel() for m in (emb, lstm, fc) for p in m.parameters())
    print(f"# {machine()}; {args.threads} threads")
    print(f"# vocab {v}, embedding {e}, {n_layers} × LSTM {h}: {params / 1e6:.1f}M parameters")

    rng = np.random.default_rng(0)
    prompt = int(rng.integers(0, v))
    seq = rng.integers(0, v, SCORE).tolist()
    batch_prompts = rng.integers(0, v, (BATCH, 1)).tolist()
    rows: dict[str, dict[str, float]] = {}

    # ---- ferrolm
    gen = median_time(
        lambda: ours.generate([[prompt]], max_new_tokens=STEPS, eos_token_id=[]), args.repeat
    )
    score = median_time(lambda: ours([seq]), args.repeat)
    batch = median_time(
        lambda: ours.generate(batch_prompts, max_new_tokens=STEPS, eos_token_id=[]), args.repeat
    )
    rows["ferrolm"] = {"gen": gen / STEPS, "score": score, "batch": BATCH * STEPS / batch}

    # ---- PyTorch eager: a step loop with the state carried
    def torch_loop(first: Any) -> None:
        with torch.inference_mode():
            ids = torch.tensor(first)
            state = None
            for _ in range(STEPS):
                out, state = lstm(emb(ids), state)
                ids = fc(out[:, -1:]).argmax(-1)

    with torch.inference_mode():
        t_seq = torch.tensor([seq])
        score_pt = median_time(lambda: fc(lstm(emb(t_seq))[0]), args.repeat)
    rows["PyTorch eager"] = {
        "gen": median_time(lambda: torch_loop([[prompt]]), args.repeat) / STEPS,
        "score": score_pt,
        "batch": BATCH * STEPS / median_time(lambda: torch_loop(batch_prompts), args.repeat),
    }

    # ---- ONNX Runtime: one-step and whole-sequence models exported from the same modules
    if not args.no_onnx:
        import onnxruntime as ort

        class Step(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb, self.lstm, self.fc = emb, lstm, fc

            def forward(self, ids: Any, h0: Any, c0: Any) -> Any:
                out, (hn, cn) = self.lstm(self.emb(ids), (h0, c0))
                return self.fc(out), hn, cn

        z = torch.zeros(n_layers, 1, h)
        torch.onnx.export(
            Step(), (torch.zeros(1, 1, dtype=torch.long), z, z), str(tmp / "step.onnx"),
            input_names=["ids", "h0", "c0"], output_names=["logits", "hn", "cn"],
            dynamic_axes={"ids": {0: "b", 1: "t"}, "h0": {1: "b"}, "c0": {1: "b"},
                          "logits": {0: "b", 1: "t"}, "hn": {1: "b"}, "cn": {1: "b"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(tmp / "step.onnx"), so, providers=["CPUExecutionProvider"])

        def ort_loop(first: Any) -> None:
            ids = np.asarray(first, dtype=np.int64)
            b = ids.shape[0]
            hs = np.zeros((n_layers, b, h), dtype=np.float32)
            cs = hs.copy()
            for _ in range(STEPS):
                logits, hs, cs = sess.run(None, {"ids": ids, "h0": hs, "c0": cs})
                ids = logits[:, -1:].argmax(-1).astype(np.int64)

        zs = np.zeros((n_layers, 1, h), dtype=np.float32)
        feed = {"ids": np.asarray([seq], dtype=np.int64), "h0": zs, "c0": zs}
        rows["ONNX Runtime"] = {
            "gen": median_time(lambda: ort_loop([[prompt]]), args.repeat) / STEPS,
            "score": median_time(lambda: sess.run(None, feed), args.repeat),
            "batch": BATCH * STEPS / median_time(lambda: ort_loop(batch_prompts), args.repeat),
        }

    # ---- Keras 3 (PyTorch backend): predict over a sequence, a stateful step loop
    if not args.no_keras:
        import keras

        ids_in = keras.layers.Input(shape=(None,), dtype="int32")
        states_in = [keras.layers.Input(shape=(h,)) for _ in range(2 * n_layers)]
        x = keras.layers.Embedding(v, e)(ids_in)
        layers = [
            keras.layers.LSTM(h, return_sequences=True, return_state=True) for _ in range(n_layers)
        ]
        states_out = []
        for k, layer in enumerate(layers):
            x, hk, ck = layer(x, initial_state=[states_in[2 * k], states_in[2 * k + 1]])
            states_out += [hk, ck]
        dense = keras.layers.Dense(v, activation="softmax")
        probs = dense(x)
        step_model = keras.Model([ids_in, *states_in], [probs, *states_out])
        step_model.layers[1].set_weights([emb.weight.detach().numpy()])
        sd = {k: t.detach().numpy() for k, t in lstm.state_dict().items()}
        for k, layer in enumerate(layers):
            layer.set_weights([sd[f"weight_ih_l{k}"].T, sd[f"weight_hh_l{k}"].T,
                               sd[f"bias_ih_l{k}"] + sd[f"bias_hh_l{k}"]])  # fmt: skip
        dense.set_weights([fc.weight.detach().numpy().T, fc.bias.detach().numpy()])

        def keras_loop(first: Any) -> None:
            ids = np.asarray(first, dtype=np.int32)
            b = ids.shape[0]
            st = [np.zeros((b, h), dtype=np.float32) for _ in range(2 * n_layers)]
            with torch.inference_mode():
                for _ in range(STEPS):
                    out = step_model([ids, *st], training=False)
                    p, st = out[0], [np.asarray(s) for s in out[1:]]
                    ids = np.asarray(p)[:, -1:].argmax(-1).astype(np.int32)

        zst = [np.zeros((1, h), dtype=np.float32) for _ in range(2 * n_layers)]
        seq_in = np.asarray([seq], dtype=np.int32)
        rows["Keras 3 (torch)"] = {
            "gen": median_time(lambda: keras_loop([[prompt]]), max(1, args.repeat // 2)) / STEPS,
            "score": median_time(
                lambda: step_model.predict([seq_in, *zst], verbose=0), max(1, args.repeat // 2)
            ),
            "batch": BATCH * STEPS / median_time(lambda: keras_loop(batch_prompts), 1),
        }

    bandwidth = ferrolm._core._read_bandwidth(1 << 30)
    weight_bytes = ours._core.weight_bytes
    floor = weight_bytes / bandwidth
    us = rows["ferrolm"]
    print(f"\n{'engine':<18}{'gen, batch 1':>16}{'score 512 steps':>18}{'batch 32 gen':>16}")
    for name, r in rows.items():
        print(
            f"{name:<18}{r['gen'] * 1e3:>11.3f} ms/t{r['score'] * 1e3:>14.1f} ms"
            f"{r['batch']:>12.0f} t/s"
        )
    print(
        f"\nbandwidth floor: {weight_bytes / 1e6:.1f} MB per step at {bandwidth / 1e9:.1f} GB/s = "
        f"{floor * 1e3:.3f} ms; ferrolm at {us['gen'] / floor:.2f}× the floor (target ≤ 1.3×: "
        f"{'meets' if us['gen'] / floor <= 1.3 else 'SHORT'})"
    )
    pt = rows["PyTorch eager"]
    g, s, b = pt["gen"] / us["gen"], pt["score"] / us["score"], us["batch"] / pt["batch"]
    print(f"generation vs PyTorch eager: {g:.2f}× ({verdict(g, 3.0)})")
    if "ONNX Runtime" in rows:
        o = rows["ONNX Runtime"]["gen"] / us["gen"]
        print(f"generation vs ONNX Runtime: {o:.2f}× ({verdict(o, 1.5)})")
    print(f"scoring 512 steps vs PyTorch: {s:.2f}× ({verdict(s, 1.0)})")
    print(f"batch 32 generation vs PyTorch: {b:.2f}× ({verdict(b, 1.5)})")
    if "Keras 3 (torch)" in rows:
        k = rows["Keras 3 (torch)"]
        print(
            f"vs Keras 3: generation {k['gen'] / us['gen']:.1f}×, scoring "
            f"{k['score'] / us['score']:.1f}×, batch 32 {us['batch'] / k['batch']:.1f}×"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
