"""ferrolm's recurrent language models (Embedding → LSTM or GRU layers → Dense) against
PyTorch's nn.LSTM / nn.GRU and Keras 3's ``model.predict`` (PyTorch backend) on the same seeded
weights: probabilities, the explicit recurrent state, padded batches, greedy decoding, int8,
perplexity, streaming, stacks of layers of different sizes, and the errors a bad file or bad
input gives."""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Keras picks its backend when first imported: the references run on PyTorch.
os.environ["KERAS_BACKEND"] = "torch"

torch = pytest.importorskip("torch", reason="the reference LSTMs are built and run with PyTorch")
from torch import nn  # noqa: E402

import ferrolm  # noqa: E402
from ferrolm.lstm import save_torch_lstm  # noqa: E402

# Keras 3.15 on numpy 2 warns on every predict; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

V, E, H = 60, 16, 32  # vocabulary, embedding width, LSTM units
# Tolerances, with what this suite measured (x86-64, 2 threads).
# Probabilities: the acceptance bound (measured: 7.5e-7 vs torch, 6.6e-7 vs keras).
PROB_TOL = 1e-5
LOGIT_TOL = 2e-5  # logits against torch, |logit| up to ~7 (measured: 3.3e-6)
# One model computed two ways (token by token vs whole, padded vs alone): the batched input
# projection and the per-step products sum in different orders (measured: up to 1.4e-6).
SAME_TOL = 1e-5
# q8_0 weights against float32, probabilities at length 64 (measured: 1.0e-2; 1.9e-2 at 512;
# logits 0.1; argmax agreement 98%). The error grows along the sequence through the state.
INT8_TOL = 3e-2
# A GRU's probabilities move more under q8_0 (measured at length 64: up to 4.6e-2 over the GRU
# models below, mean 4e-4; LSTMs of the same sizes 1.0e-2): its state is h alone, in (-1, 1)
# undamped by an output gate, so the Dense layer sees larger inputs and sharper distributions.
GRU_INT8_TOL = 6e-2
TIE = 1e-4  # reference scores closer than this are a tie: either token is a correct greedy pick
LAYERS = [1, 2]

TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "Every cloud has a silver lining, and the early bird catches the worm. "
    "Actions speak louder than words; the pen is mightier than the sword. "
    "When in Rome, do as the Romans do. Fortune favours the bold, and practice "
    "makes perfect. Don't count your chickens before they hatch. "
) * 6


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The references run on one thread: with ferrolm's pool busy on this machine's cores,
    PyTorch's spinning OpenMP threads make every small op orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Ref:
    """A seeded PyTorch LSTM LM, its saved folder and ferrolm's model of that folder."""

    emb: nn.Embedding
    lstm: Any  # an nn.LSTM / nn.GRU, or a list of them (layers of different sizes)
    fc: nn.Linear
    folder: Path
    model: ferrolm.LSTMLanguageModel

    def run(self, ids: Any, state: Any = None) -> tuple[Any, Any, Any]:
        """PyTorch's logits ``[batch, time, vocab]`` and ``(h_n, c_n)`` (c_n None for a GRU),
        from ``state`` = ``(h_0, c_0)`` (c_0 None for a GRU). For a list of modules the states
        are as ferrolm's ``get_state`` gives them: lists of one ``[batch, H_k]`` per layer."""
        x = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        h0, c0 = (None, None) if state is None else state
        with torch.no_grad():
            y = self.emb(x)
            if isinstance(self.lstm, nn.RNNBase):
                init = None if h0 is None else h0 if c0 is None else (h0, c0)
                y, s = self.lstm(y, init)
                h, c = s if isinstance(s, tuple) else (s, None)
                return self.fc(y), h, c
            hs, cs = [], []
            for k, layer in enumerate(self.lstm):
                init = None
                if h0 is not None:
                    hk = torch.as_tensor(np.asarray(h0[k])).unsqueeze(0)
                    init = hk if c0 is None else (hk, torch.as_tensor(np.asarray(c0[k]))[None])
                y, s = layer(y, init)
                h, c = s if isinstance(s, tuple) else (s, None)
                hs.append(h[0])
                cs.append(None if c is None else c[0])
            return self.fc(y), hs, None if cs[0] is None else cs


def build_torch(
    layers: int, seed: int, vocab: int = V, bias: bool = True, cell: str = "lstm"
) -> tuple[Any, ...]:
    """Embedding / LSTM / Linear from PyTorch's default init, scaled so that the gates saturate
    and the next-token distributions are far from flat (seeded, the global RNG untouched)."""
    return build_rnn(cell, [H] * layers, seed, vocab=vocab, bias=bias)


def build_rnn(
    cell: str, sizes: list[int], seed: int, vocab: int = V, bias: bool = True
) -> tuple[Any, ...]:
    """As ``build_torch``, ``cell`` "lstm" or "gru" layers of ``sizes`` units: one module when
    the sizes are equal, else a list of one single-layer module per size (how a PyTorch user
    stacks layers of different sizes)."""
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        emb = nn.Embedding(vocab, E)
        if len(set(sizes)) == 1:
            mods: Any = rnn(E, sizes[0], len(sizes), batch_first=True, bias=bias)
            params = list(mods.parameters())
        else:
            ins = [E, *sizes[:-1]]
            mods = [rnn(i, h, batch_first=True, bias=bias) for i, h in zip(ins, sizes, strict=True)]
            params = [p for m in mods for p in m.parameters()]
        fc = nn.Linear(sizes[-1], vocab, bias=bias)
        with torch.no_grad():
            for p in params:
                p.mul_(3.0)
            fc.weight.mul_(12.0)
    if isinstance(mods, list):
        return emb.eval(), [m.eval() for m in mods], fc.eval()
    return emb.eval(), mods.eval(), fc.eval()


def make_ref(folder: Path, layers: int, seed: int, **kwargs: Any) -> Ref:
    tokenizer = kwargs.pop("tokenizer", None)
    vocab = kwargs.pop("vocab", V)
    bias = kwargs.pop("bias", True)
    cell = kwargs.pop("cell", "lstm")
    sizes = kwargs.pop("sizes", [H] * layers)
    emb, lstm, fc = build_rnn(cell, sizes, seed, vocab=vocab, bias=bias)
    save_torch_lstm(folder, emb, lstm, fc, tokenizer=tokenizer, **kwargs)
    return Ref(emb, lstm, fc, folder, ferrolm.LSTMLanguageModel.from_pretrained(folder))


def softmax(x: Any) -> Any:
    return torch.as_tensor(x).softmax(-1).numpy()


def max_diff(a: Any, b: Any) -> float:
    """max |a - b| of two float arrays or tensors of the same shape."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def random_ids(shape: tuple[int, ...], seed: int, vocab: int = V) -> Any:
    return np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int64)


def read_safetensors(path: Path) -> dict[str, Any]:
    """A float32 safetensors file as name → numpy array."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32"
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(body[lo:hi], dtype="<f4").reshape(info["shape"])
    return out


def write_safetensors(path: Path, tensors: dict[str, Any]) -> None:
    """name → array as a float32 safetensors file."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def copy_folder(src: Path, dst: Path, tensors: dict[str, Any], **config: Any) -> Path:
    """``dst``: ``src``'s config.json (updated with ``config``) and ``tensors``."""
    dst.mkdir(parents=True)
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    write_safetensors(dst / "model.safetensors", tensors)
    return dst


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Ref]:
    """layers → a softmax-headed model saved from PyTorch (1 and 2 layers)."""
    root = tmp_path_factory.mktemp("lstm")
    return {
        n: make_ref(root / f"torch-{n}", n, seed=10 + n, output_activation="softmax")
        for n in LAYERS
    }


@pytest.fixture(scope="module")
def keras() -> Any:
    pytest.importorskip("h5py", reason="ferrolm reads .keras files with h5py")
    k = pytest.importorskip("keras", reason="the .keras files are written by Keras 3")
    if not k.__version__.startswith("3."):
        pytest.skip(f"the .keras format is Keras 3's; this is Keras {k.__version__}")
    if k.backend.backend() != "torch":
        pytest.skip(f"keras was imported with the {k.backend.backend()} backend, not torch")
    return k


def keras_weights(ref: Ref) -> list[Any]:
    """``ref``'s weights in Keras' layout (kernels [in, 4h], one bias b_ih + b_hh)."""

    def np_(t: Any) -> Any:
        return t.detach().numpy()

    out = [np_(ref.emb.weight)]
    for mod in ref.lstm if isinstance(ref.lstm, list) else [ref.lstm]:
        for k in range(mod.num_layers):
            w_ih, w_hh = getattr(mod, f"weight_ih_l{k}"), getattr(mod, f"weight_hh_l{k}")
            b_ih, b_hh = getattr(mod, f"bias_ih_l{k}"), getattr(mod, f"bias_hh_l{k}")
            if mod.mode == "LSTM":
                out += [np_(w_ih).T, np_(w_hh).T, np_(b_ih + b_hh)]
                continue
            # GRU: PyTorch's gates r z n are Keras' z r h (reset_after=True); the bias is
            # (2, 3u): input then recurrent.
            u = mod.hidden_size
            perm = np.r_[u : 2 * u, 0:u, 2 * u : 3 * u]
            bias = np.stack([np_(b_ih)[perm], np_(b_hh)[perm]])
            out += [np_(w_ih).T[:, perm], np_(w_hh).T[:, perm], bias]
    return [*out, np_(ref.fc.weight).T, np_(ref.fc.bias)]


def keras_lm(keras: Any, layers: int, *, functional: bool, clear: bool = True, **names: Any) -> Any:
    """Input → Embedding → LSTM × layers (Dropout between) → Dense(softmax). ``clear``: a
    fresh Keras session first, so the layers get their default names."""
    kl = keras.layers
    if clear:
        keras.backend.clear_session()
    inp = keras.Input((None,), dtype="int32")
    stack: list[Any] = [kl.Embedding(V, E, name=names.get("embedding"))]
    for k in range(layers):
        if k:
            stack.append(kl.Dropout(0.25))
        stack.append(kl.LSTM(H, return_sequences=True, name=names.get(f"lstm{k}")))
    stack.append(kl.Dense(V, activation="softmax", name=names.get("dense")))
    if not functional:
        return keras.Sequential([inp, *stack])
    x = inp
    for layer in stack:
        x = layer(x)
    return keras.Model(inp, x)


@dataclass
class KerasRef:
    keras_model: Any
    path: Path
    model: ferrolm.LSTMLanguageModel


@pytest.fixture(scope="module")
def keras_refs(
    keras: Any, refs: dict[int, Ref], tmp_path_factory: pytest.TempPathFactory
) -> dict[int, KerasRef]:
    """layers → the PyTorch model's weights in a Keras model (1 layer: functional API; 2
    layers: Sequential with a Dropout between the LSTMs), its .keras file and ferrolm's model
    of that file."""
    root = tmp_path_factory.mktemp("keras")
    out = {}
    for n in LAYERS:
        km = keras_lm(keras, n, functional=n == 1)
        km.set_weights(keras_weights(refs[n]))
        path = root / f"lm-{n}.keras"
        km.save(path)
        out[n] = KerasRef(km, path, ferrolm.LSTMLanguageModel.from_pretrained(path))
    return out


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("seq", [1, 7, 64, 512])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layers", LAYERS)
def test_predict_matches_torch(refs: dict[int, Ref], layers: int, batch: int, seq: int) -> None:
    ref = refs[layers]
    ids = random_ids((batch, seq), seed=layers * 1000 + batch * 100 + seq)
    logits, _, _ = ref.run(ids)
    got = ref.model.predict(ids)
    assert got.dtype == np.float32 and got.shape == (batch, seq, V)
    assert max_diff(got, softmax(logits)) < PROB_TOL
    out = ref.model(torch.from_numpy(ids))
    assert isinstance(out.logits, torch.Tensor) and out.logits.dtype == torch.float32
    assert max_diff(out.logits, logits) < LOGIT_TOL


@pytest.mark.parametrize("seq", [1, 7, 64, 512])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layers", LAYERS)
def test_predict_matches_keras(
    keras_refs: dict[int, KerasRef], layers: int, batch: int, seq: int
) -> None:
    kref = keras_refs[layers]
    ids = random_ids((batch, seq), seed=layers * 1000 + batch * 100 + seq + 7)
    want = np.asarray(kref.keras_model.predict(ids.astype(np.int32), verbose=0))
    got = kref.model.predict(ids)
    assert got.dtype == np.float32 and got.shape == (batch, seq, V)
    assert max_diff(got, want) < PROB_TOL


@pytest.mark.parametrize("layers", LAYERS)
def test_keras_file_and_torch_folder_are_the_same_model(
    refs: dict[int, Ref], keras_refs: dict[int, KerasRef], layers: int
) -> None:
    ids = random_ids((4, 33), seed=5)
    assert keras_refs[layers].model.config["num_layers"] == layers
    assert keras_refs[layers].model.config["output_activation"] == "softmax"
    assert max_diff(keras_refs[layers].model.predict(ids), refs[layers].model.predict(ids)) < 1e-6


def test_linear_head_predict_returns_the_logits(tmp_path: Path) -> None:
    ref = make_ref(tmp_path / "linear", 2, seed=3, output_activation="linear")
    ids = random_ids((3, 20), seed=6)
    logits, _, _ = ref.run(ids)
    assert max_diff(ref.model.predict(ids), logits) < LOGIT_TOL


def test_predict_batch_size_does_not_change_the_result(refs: dict[int, Ref]) -> None:
    ids = random_ids((8, 16), seed=7)
    model = refs[2].model
    assert max_diff(model.predict(ids, batch_size=3), model.predict(ids)) < SAME_TOL


def test_checkpoint_without_biases_matches_torch(tmp_path: Path) -> None:
    ref = make_ref(tmp_path / "nobias", 2, seed=4, bias=False)
    ids = random_ids((2, 30), seed=8)
    logits, _, _ = ref.run(ids)
    assert max_diff(ref.model(ids).logits, logits) < LOGIT_TOL


# --------------------------------------------------------------------------- state


@pytest.mark.parametrize("layers", LAYERS)
def test_one_token_at_a_time_equals_whole_sequence(refs: dict[int, Ref], layers: int) -> None:
    ref = refs[layers]
    ids = random_ids((3, 40), seed=20 + layers)
    whole = ref.model(ids)
    state = ref.model.new_state(3)
    steps = [ref.model(ids[:, i : i + 1], past_key_values=state).logits for i in range(40)]
    assert max_diff(np.concatenate(steps, axis=1), whole.logits) < SAME_TOL
    for a, b in zip(
        ref.model.get_state(state), ref.model.get_state(whole.past_key_values), strict=True
    ):
        assert max_diff(a, b) < SAME_TOL


@pytest.mark.parametrize("layers", LAYERS)
def test_chunks_of_varying_sizes_equal_whole_sequence(refs: dict[int, Ref], layers: int) -> None:
    ref = refs[layers]
    ids = random_ids((2, 64), seed=30 + layers)
    whole, h_n, c_n = ref.run(ids)
    first = ref.model(ids[:, :5])  # no past_key_values: a fresh state comes back
    state, parts, at = first.past_key_values, [first.logits], 5
    for size in (1, 3, 11, 2, 16, 7, 19):
        parts.append(ref.model(ids[:, at : at + size], past_key_values=state).logits)
        at += size
    assert at == 64
    assert max_diff(np.concatenate(parts, axis=1), whole) < LOGIT_TOL
    h, c = ref.model.get_state(state)
    assert h.shape == c.shape == (layers, 2, H)
    assert max_diff(h, h_n) < LOGIT_TOL and max_diff(c, c_n) < LOGIT_TOL


@pytest.mark.parametrize("layers", LAYERS)
def test_initial_state_matches_torch_h0_c0(refs: dict[int, Ref], layers: int) -> None:
    ref = refs[layers]
    rng = np.random.default_rng(40 + layers)
    h0 = (0.5 * rng.standard_normal((layers, 4, H))).astype(np.float32)
    c0 = (2.0 * rng.standard_normal((layers, 4, H))).astype(np.float32)
    ids = random_ids((4, 25), seed=41)
    want, h_n, c_n = ref.run(ids, (torch.from_numpy(h0), torch.from_numpy(c0)))
    state = ref.model.new_state(4, h=h0, c=c0)
    assert all(
        max_diff(a, b) == 0 for a, b in zip(ref.model.get_state(state), (h0, c0), strict=True)
    )
    got = ref.model(torch.from_numpy(ids), past_key_values=state)
    assert got.past_key_values is state
    assert max_diff(got.logits, want) < LOGIT_TOL
    h, c = ref.model.get_state(state)
    assert max_diff(h, h_n) < LOGIT_TOL and max_diff(c, c_n) < LOGIT_TOL


def test_initial_h_alone_leaves_c_zero(refs: dict[int, Ref]) -> None:
    ref = refs[2]
    h0 = np.random.default_rng(42).standard_normal((2, 1, H)).astype(np.float32)
    ids = random_ids((1, 9), seed=43)
    want, _, _ = ref.run(ids, (torch.from_numpy(h0), torch.zeros(2, 1, H)))
    got = ref.model(ids, past_key_values=ref.model.new_state(1, h=h0)).logits
    assert max_diff(got, want) < LOGIT_TOL


# --------------------------------------------------------------------------- padding

LENGTHS = [5, 12, 1, 9, 12]
PAD = 7  # a real token id: padding must be ignored because of the mask, not because of its id


def ragged(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, size=n).tolist() for n in LENGTHS]


def padded(rows: list[list[int]], side: str) -> tuple[Any, Any]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[b, cols] = torch.tensor(r)
        mask[b, cols] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("layers", LAYERS)
def test_padded_batch_equals_rows_alone(refs: dict[int, Ref], layers: int, side: str) -> None:
    model = refs[layers].model
    rows = ragged(50 + layers)
    ids, mask = padded(rows, side)
    out = model(ids, attention_mask=mask)
    h, c = model.get_state(out.past_key_values)
    nxt = torch.tensor([[3]] * len(rows))
    after = model(nxt, attention_mask=torch.ones_like(nxt), past_key_values=out.past_key_values)
    width = ids.shape[1]
    for b, r in enumerate(rows):
        alone = model([r])
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        assert max_diff(out.logits[b, cols], alone.logits[0]) < SAME_TOL, f"row {b}"
        h1, c1 = model.get_state(alone.past_key_values)
        assert max_diff(h[:, b], h1[:, 0]) < SAME_TOL and max_diff(c[:, b], c1[:, 0]) < SAME_TOL
        cont = model([[3]], past_key_values=alone.past_key_values).logits
        assert max_diff(after.logits[b], cont[0]) < SAME_TOL, f"row {b} after the padding"


# --------------------------------------------------------------------------- generation

NEW = 30


def torch_greedy(ref: Ref, prompt: list[int], n: int) -> tuple[list[int], list[Any]]:
    """PyTorch's greedy continuation of ``prompt`` (n tokens) and the scores of each step."""
    logits, h, c = ref.run([prompt])
    tokens, scores = [], []
    for _ in range(n):
        last = logits[0, -1]
        scores.append(last)
        tokens.append(int(last.argmax()))
        logits, h, c = ref.run([[tokens[-1]]], (h, c))
    return tokens, scores


def assert_greedy_agrees(got: list[int], want: list[int], scores: list[Any], row: int) -> None:
    """ferrolm's greedy tokens equal PyTorch's, except where ferrolm picked a token whose
    reference score is within TIE of the best: from such a tie on, the row may go another way."""
    if got == want:
        return
    assert len(got) == len(want), f"row {row}: {len(got)} new tokens, PyTorch {len(want)}"
    j = next(i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y)
    gap = float(scores[j].max() - scores[j][got[j]])
    assert gap < TIE, (
        f"row {row}: new token {j}: ferrolm chose {got[j]}, PyTorch {want[j]} (scores "
        f"{gap:.3g} apart, not a tie)\nferrolm: {got}\nPyTorch: {want}"
    )


@pytest.mark.parametrize("layers", LAYERS)
def test_greedy_generate_matches_torch_loop(refs: dict[int, Ref], layers: int) -> None:
    ref = refs[layers]
    prompt = random_ids((6,), seed=60 + layers).tolist()
    out = ref.model.generate(torch.tensor([prompt]), max_new_tokens=NEW)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, len(prompt) + NEW)
    assert out[0, : len(prompt)].tolist() == prompt
    want, scores = torch_greedy(ref, prompt, NEW)
    assert_greedy_agrees(out[0, len(prompt) :].tolist(), want, scores, 0)


@pytest.mark.parametrize("layers", LAYERS)
def test_batched_left_padded_greedy_matches_torch_loop(refs: dict[int, Ref], layers: int) -> None:
    ref = refs[layers]
    rng = np.random.default_rng(70 + layers)
    prompts = [rng.integers(1, V, size=n).tolist() for n in (4, 11, 1, 7)]
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)  # pad 0 = the pad token below
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1
    out = ref.model.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0)
    assert tuple(out.shape) == (len(prompts), width + NEW)
    assert out[:, :width].tolist() == ids.tolist()
    for b, p in enumerate(prompts):
        want, scores = torch_greedy(ref, p, NEW)
        assert_greedy_agrees(out[b, width:].tolist(), want, scores, b)
    # Ragged lists (no mask) are left-padded by generate itself: the same rows.
    lists = ref.model.generate(prompts, max_new_tokens=NEW, pad_token_id=0)
    assert [list(map(int, r)) for r in lists] == out.tolist()


# --------------------------------------------------------------------------- int8


def test_int8_is_close_to_float32(refs: dict[int, Ref]) -> None:
    ref = refs[2]
    q = ferrolm.LSTMLanguageModel.from_pretrained(ref.folder, quantize="int8")
    assert q.quantization == "q8_0" and ref.model.quantization is None
    ids = random_ids((8, 64), seed=80)
    assert max_diff(q.predict(ids), ref.model.predict(ids)) < INT8_TOL
    # The quantized model is still the same model: its argmax agrees almost everywhere.
    agree = (q.predict(ids).argmax(-1) == ref.model.predict(ids).argmax(-1)).mean()
    assert agree > 0.95


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def text_ref(tmp_path_factory: pytest.TempPathFactory) -> Ref:
    """A 2-layer model over the vocabulary of a BPE tokenizer trained on TEXT, saved with it."""
    tok = ferrolm.train_bpe([TEXT], vocab_size=300, show_progress=False)
    folder = tmp_path_factory.mktemp("text") / "lm"
    return make_ref(folder, 2, seed=90, vocab=tok.vocab_size, tokenizer=tok)


def test_perplexity_matches_torch(text_ref: Ref) -> None:
    tok = text_ref.model.tokenizer
    assert tok is not None, "the folder's tokenizer.json was not picked up"
    text = "The early fox catches the lazy worm; practice makes the Romans bold."
    ids = tok.encode(text)
    assert len(ids) > 10
    logits, _, _ = text_ref.run([ids])
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    want = math.exp(float(nll.mean()))
    got = ferrolm.perplexity(text_ref.model, tok, text)
    assert got == pytest.approx(want, rel=1e-5)


def test_stream_and_generate_text_agree_with_generate(text_ref: Ref) -> None:
    model, tok = text_ref.model, text_ref.model.tokenizer
    prompt = "The quick brown"
    p = tok.encode(prompt)
    new = [int(x) for x in model.generate([p], max_new_tokens=20)[0][len(p) :]]
    want, scores = torch_greedy(text_ref, p, 20)
    assert_greedy_agrees(new, want, scores, 0)
    text = tok.decode(new, skip_special_tokens=True)
    assert "".join(model.stream(prompt, max_new_tokens=20)) == text
    assert model.generate_text(prompt, max_new_tokens=20) == prompt + text


def test_tokenizer_argument(refs: dict[int, Ref], text_ref: Ref) -> None:
    tok = text_ref.model.tokenizer
    assert refs[1].model.tokenizer is None
    model = ferrolm.LSTMLanguageModel.from_pretrained(refs[1].folder, tokenizer=tok)
    assert model.tokenizer is tok


def test_cli_generate_and_perplexity_take_a_tokenizer(text_ref: Ref, tmp_path: Path) -> None:
    import subprocess
    import sys

    tok = text_ref.model.tokenizer
    # A model folder without its tokenizer: the CLI asks for one, then uses --tokenizer.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((text_ref.folder / f).read_bytes())
    cli = [sys.executable, "-m", "ferrolm"]
    run = lambda *a: subprocess.run([*cli, *a], capture_output=True, text=True)  # noqa: E731
    no_tok = run("generate", "--model", str(bare), "The quick", "--max-new-tokens", "5")
    assert no_tok.returncode != 0 and "--tokenizer" in no_tok.stderr
    tj = str(text_ref.folder / "tokenizer.json")
    gen = run(
        "generate", "--model", str(bare), "--tokenizer", tj, "The quick", "--max-new-tokens", "5"
    )
    assert gen.returncode == 0, gen.stderr
    p = tok.encode("The quick")
    new = text_ref.model.generate([p], max_new_tokens=5)[0][len(p) :]
    assert gen.stdout.rstrip("\n") == "The quick" + tok.decode(new, skip_special_tokens=True)
    text = tmp_path / "t.txt"
    text.write_text("The early fox catches the lazy worm; practice makes the Romans bold.")
    ppl = run("perplexity", "--model", str(bare), "--tokenizer", tj, str(text))
    assert ppl.returncode == 0, ppl.stderr
    want = ferrolm.perplexity(text_ref.model, tok, text.read_text())
    assert float(ppl.stdout) == pytest.approx(want, rel=1e-4)


# --------------------------------------------------------------------------- Auto


def test_auto_model_recognises_folder_and_keras_file(
    refs: dict[int, Ref], keras_refs: dict[int, KerasRef]
) -> None:
    ids = random_ids((2, 10), seed=100)
    for path, want in ((refs[2].folder, refs[2].model), (keras_refs[2].path, keras_refs[2].model)):
        model = ferrolm.AutoModelForCausalLM.from_pretrained(path)
        assert isinstance(model, ferrolm.LSTMLanguageModel), path
        assert model.config["model_type"] == "lstm"
        assert max_diff(model.predict(ids), want.predict(ids)) == 0


# --------------------------------------------------------------------------- bad Keras files


def _lstm_relu(keras: Any) -> Any:
    kl = keras.layers
    return [kl.Embedding(V, E), kl.LSTM(H, return_sequences=True, activation="relu"), kl.Dense(V)]


def _dense_relu(keras: Any) -> Any:
    kl = keras.layers
    return [kl.Embedding(V, E), kl.LSTM(H, return_sequences=True), kl.Dense(V, activation="relu")]


def _bidirectional(keras: Any) -> Any:
    kl = keras.layers
    lstm = kl.LSTM(H, return_sequences=True)
    return [kl.Embedding(V, E), kl.Bidirectional(lstm), kl.Dense(V, activation="softmax")]


def _gru_reset_before(keras: Any) -> Any:
    """The original GRU formula (r applied before W_hn): not PyTorch's, refused."""
    kl = keras.layers
    return [kl.Embedding(V, E), kl.GRU(H, return_sequences=True, reset_after=False), kl.Dense(V)]


def _lstm_then_gru(keras: Any) -> Any:
    kl = keras.layers
    rnns = [kl.LSTM(H, return_sequences=True), kl.GRU(H, return_sequences=True)]
    return [kl.Embedding(V, E), *rnns, kl.Dense(V)]


def _attention(keras: Any) -> Any:
    """Functional: the LSTM's outputs attend to themselves."""
    kl = keras.layers
    inp = keras.Input((None,), dtype="int32")
    x = kl.LSTM(H, return_sequences=True)(kl.Embedding(V, E)(inp))
    x = kl.Attention()([x, x])
    return keras.Model(inp, kl.Dense(V, activation="softmax")(x))


UNSUPPORTED: dict[str, tuple[Callable[[Any], Any], str]] = {
    "bidirectional": (_bidirectional, "bidirectional"),
    "attention": (_attention, "attention"),
    "gru-reset-after-false": (_gru_reset_before, "gru"),
    "lstm-then-gru": (_lstm_then_gru, "gru"),
    "lstm-relu": (_lstm_relu, "lstm"),
    "dense-relu": (_dense_relu, "dense"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_keras_layer_is_refused(keras: Any, tmp_path: Path, case: str) -> None:
    build, layer = UNSUPPORTED[case]
    keras.backend.clear_session()  # default layer names
    made = build(keras)
    if isinstance(made, list):
        made = keras.Sequential([keras.Input((None,), dtype="int32"), *made])
    path = tmp_path / f"{case}.keras"
    made.save(path)
    for cls in (ferrolm.LSTMLanguageModel, ferrolm.AutoModelForCausalLM):
        with pytest.raises(ferrolm.FormatError) as err:
            cls.from_pretrained(path)
        msg = str(err.value).replace(str(path), "<path>")  # the test's folder says unsupported
        assert f"'{layer}'" in msg, f"the message does not name layer {layer!r}: {msg}"
        assert "unsupported" in msg.lower(), f"the message does not say unsupported: {msg}"


@pytest.mark.parametrize("how", ["explicit-names", "second-model-in-session"])
def test_keras_layer_names_do_not_matter(
    keras: Any, refs: dict[int, Ref], tmp_path: Path, how: str
) -> None:
    """Keras 3 stores weights by the layer's class (layers/lstm, layers/lstm_1, ...), not by
    its name: a model with named layers, or the second model built in a session (embedding_1,
    lstm_2, ...), loads all the same."""
    if how == "explicit-names":
        names = dict(embedding="tokens", lstm0="rnn_a", lstm1="rnn_b", dense="head")
        km = keras_lm(keras, 2, functional=False, **names)
    else:
        keras_lm(keras, 2, functional=False)  # takes the default names
        km = keras_lm(keras, 2, functional=False, clear=False)
    km.set_weights(keras_weights(refs[2]))
    path = tmp_path / "named.keras"
    km.save(path)
    model = ferrolm.LSTMLanguageModel.from_pretrained(path)
    ids = random_ids((2, 12), seed=110)
    assert max_diff(model.predict(ids), km.predict(ids.astype(np.int32), verbose=0)) < PROB_TOL


def test_keras_mask_zero_is_refused_or_honoured(keras: Any, tmp_path: Path) -> None:
    """Embedding(mask_zero=True) makes Keras skip the steps of id 0: ferrolm must either run
    the same or refuse the file, not silently compute something else."""
    keras.backend.clear_session()
    kl = keras.layers
    km = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            kl.Embedding(V, E, mask_zero=True),
            kl.LSTM(H, return_sequences=True),
            kl.Dense(V, activation="softmax"),
        ]
    )
    path = tmp_path / "mask-zero.keras"
    km.save(path)
    try:
        model = ferrolm.LSTMLanguageModel.from_pretrained(path)
    except ferrolm.FormatError as e:
        assert "mask_zero" in str(e)
        return
    ids = np.array([[5, 0, 7, 0, 0, 9, 11]])
    assert max_diff(model.predict(ids), km.predict(ids.astype(np.int32), verbose=0)) < PROB_TOL


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def corruptions(raw: bytes) -> dict[str, bytes]:
    """Broken variants of a valid .keras file's bytes."""
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    h5 = entries["model.weights.h5"]
    rng = np.random.default_rng(120)
    garbage = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    flipped = bytearray(raw)
    mid = len(raw) // 2
    flipped[mid : mid + 64] = garbage[:64]
    return {
        "cut-half": raw[: len(raw) // 2],
        "cut-tail": raw[:-10],
        "cut-100-bytes": raw[:100],
        "empty": b"",
        "garbage": garbage,
        "zip-magic-then-garbage": b"PK\x03\x04" + garbage,
        "bytes-flipped": bytes(flipped),
        "weights-garbage": _zip({**entries, "model.weights.h5": garbage}),
        "weights-truncated": _zip({**entries, "model.weights.h5": h5[: len(h5) // 2]}),
        "no-weights": _zip({k: v for k, v in entries.items() if k != "model.weights.h5"}),
        "config-not-json": _zip({**entries, "config.json": b"{not json"}),
        "config-without-layers": _zip({**entries, "config.json": b'{"config": {}}'}),
    }


CORRUPTIONS = [
    "cut-half",
    "cut-tail",
    "cut-100-bytes",
    "empty",
    "garbage",
    "zip-magic-then-garbage",
    "bytes-flipped",
    "weights-garbage",
    "weights-truncated",
    "no-weights",
    "config-not-json",
    "config-without-layers",
]


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupted_keras_file_is_a_format_error(
    keras_refs: dict[int, KerasRef], tmp_path: Path, case: str
) -> None:
    path = tmp_path / "broken.keras"
    variants = corruptions(keras_refs[1].path.read_bytes())
    assert sorted(variants) == sorted(CORRUPTIONS)
    path.write_bytes(variants[case])
    for load in (ferrolm.LSTMLanguageModel, ferrolm.AutoModelForCausalLM):
        with pytest.raises(ferrolm.FormatError):
            load.from_pretrained(path)


# --------------------------------------------------------------------------- bad folders

TENSORS = ["embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l1", "fc.weight"]


@pytest.mark.parametrize("name", TENSORS)
def test_missing_tensor_is_a_format_error_naming_it(
    refs: dict[int, Ref], tmp_path: Path, name: str
) -> None:
    src = refs[2].folder
    tensors = read_safetensors(src / "model.safetensors")
    del tensors[name]
    folder = copy_folder(src, tmp_path / "m", tensors)
    with pytest.raises(ferrolm.FormatError, match=re.escape(name)):
        ferrolm.LSTMLanguageModel.from_pretrained(folder)


@pytest.mark.parametrize("name", [*TENSORS, "lstm.bias_hh_l0", "fc.bias"])
def test_wrong_shape_is_a_format_error_naming_it(
    refs: dict[int, Ref], tmp_path: Path, name: str
) -> None:
    src = refs[2].folder
    tensors = read_safetensors(src / "model.safetensors")
    shape = tensors[name].shape
    tensors[name] = np.zeros((shape[0] + 1, *shape[1:]), dtype=np.float32)
    folder = copy_folder(src, tmp_path / "m", tensors)
    with pytest.raises(ferrolm.FormatError, match=re.escape(name)):
        ferrolm.AutoModelForCausalLM.from_pretrained(folder)


def test_more_layers_than_configured_is_a_format_error(
    refs: dict[int, Ref], tmp_path: Path
) -> None:
    src = refs[2].folder
    folder = copy_folder(
        src, tmp_path / "m", read_safetensors(src / "model.safetensors"), num_layers=1
    )
    with pytest.raises(ferrolm.FormatError, match=r"lstm\.weight_ih_l1"):
        ferrolm.LSTMLanguageModel.from_pretrained(folder)


# --------------------------------------------------------------------------- bad input


def test_id_outside_the_vocabulary_is_an_index_error(refs: dict[int, Ref]) -> None:
    model = refs[2].model
    bad = [[1, 2, 1000]]
    calls: list[Callable[[], Any]] = [
        lambda: model(bad),
        lambda: model(torch.tensor(bad)),
        lambda: model([[V]]),
        lambda: model.predict(np.array(bad)),
        lambda: model.generate(bad, max_new_tokens=3),
    ]
    for call in calls:
        with pytest.raises(IndexError, match=r"\b(1000|60)\b"):
            call()
    # A step that fails leaves the carried state as it was.
    out = model([[1, 2, 3], [4, 5, 6]])
    before = model.get_state(out.past_key_values)
    with pytest.raises(IndexError, match=r"\b1000\b"):
        model([[1], [1000]], past_key_values=out.past_key_values)
    after = model.get_state(out.past_key_values)
    assert all(max_diff(a, b) == 0 for a, b in zip(before, after, strict=True))
    with pytest.raises((IndexError, ValueError)):
        model([[1, -1]])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(h=np.zeros((2, 3, H))),  # batch 3, not 2
        dict(h=np.zeros((1, 2, H))),  # one layer, not 2
        dict(c=np.zeros((2, 2, H - 1))),  # hidden 31
        dict(h=np.zeros((2, 2, H)), c=np.zeros((2, 2))),
        dict(h=np.zeros((2, H))),
    ],
    ids=["batch", "layers", "hidden", "c-2d", "h-2d"],
)
def test_new_state_with_wrong_shape_is_a_value_error(
    refs: dict[int, Ref], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=r"\[2, 2, 32\]"):
        refs[2].model.new_state(2, **kwargs)


def test_state_of_another_batch_size_is_a_value_error(refs: dict[int, Ref]) -> None:
    model = refs[2].model
    with pytest.raises(ValueError):
        model([[1], [2], [3]], past_key_values=model.new_state(2))


# --------------------------------------------------------------------------- GRU, mixed sizes

# name → (cell, units of each layer). Equal sizes are one PyTorch module of several layers;
# different sizes a list of single-layer modules (and Keras' LSTM(40) → LSTM(56)).
RNNS: dict[str, tuple[str, list[int]]] = {
    "gru-1": ("gru", [H]),
    "gru-2": ("gru", [H, H]),
    "lstm-40-56": ("lstm", [40, 56]),
    "gru-40-56": ("gru", [40, 56]),
    "gru-56-24-40": ("gru", [56, 24, 40]),
}


@pytest.fixture(scope="module")
def rnn_refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ref]:
    """name → a softmax-headed model of RNNS saved from PyTorch."""
    root = tmp_path_factory.mktemp("rnn")
    return {
        name: make_ref(
            root / name,
            len(sizes),
            seed=200 + i,
            cell=cell,
            sizes=sizes,
            output_activation="softmax",
        )
        for i, (name, (cell, sizes)) in enumerate(RNNS.items())
    }


def rnn_state(ref: Ref, state: Any) -> tuple[Any, Any]:
    """ferrolm's state as ``Ref.run`` takes it: ``(h, c)``, c None for a GRU."""
    got = ref.model.get_state(state)
    return (got, None) if ref.model.config["cell"] == "gru" else got


def state_diff(a: Any, b: Any) -> float:
    """max |a - b| over two states (arrays, lists of per-layer arrays, or None)."""
    if a is None or b is None:
        assert a is None and b is None
        return 0.0
    if isinstance(a, list) or isinstance(b, list):
        assert len(a) == len(b)
        return max(max_diff(x, y) for x, y in zip(a, b, strict=True))
    return max_diff(a, b)


def test_config_says_cell_and_sizes(rnn_refs: dict[str, Ref]) -> None:
    for name, (cell, sizes) in RNNS.items():
        cfg = rnn_refs[name].model.config
        assert cfg["cell"] == cell and cfg["hidden_sizes"] == sizes, name
        assert cfg["num_layers"] == len(sizes)
        assert cfg["hidden_size"] == (sizes[0] if len(set(sizes)) == 1 else sizes)
        written = json.loads((rnn_refs[name].folder / "config.json").read_text())
        assert written["cell"] == cell and written["hidden_size"] == cfg["hidden_size"]


@pytest.mark.parametrize("seq", [1, 7, 64, 300])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", sorted(RNNS))
def test_rnn_predict_matches_torch(
    rnn_refs: dict[str, Ref], name: str, batch: int, seq: int
) -> None:
    ref = rnn_refs[name]
    ids = random_ids((batch, seq), seed=batch * 100 + seq + 3)
    logits, _, _ = ref.run(ids)
    got = ref.model.predict(ids)
    assert got.shape == (batch, seq, V)
    assert max_diff(got, softmax(logits)) < PROB_TOL
    assert max_diff(ref.model(torch.from_numpy(ids)).logits, logits) < LOGIT_TOL


def test_rnn_without_biases_matches_torch(tmp_path: Path) -> None:
    for cell, sizes in (("gru", [H, H]), ("gru", [40, 56]), ("lstm", [40, 56])):
        ref = make_ref(
            tmp_path / f"{cell}-{len(set(sizes))}", 2, seed=4, cell=cell, sizes=sizes, bias=False
        )
        ids = random_ids((2, 30), seed=8)
        logits, _, _ = ref.run(ids)
        assert max_diff(ref.model(ids).logits, logits) < LOGIT_TOL, (cell, sizes)


@pytest.mark.parametrize("name", sorted(RNNS))
def test_rnn_chunks_carry_the_state_like_torch(rnn_refs: dict[str, Ref], name: str) -> None:
    ref = rnn_refs[name]
    ids = random_ids((2, 48), seed=31)
    whole, h_n, c_n = ref.run(ids)
    first = ref.model(ids[:, :5])
    state, parts, at = first.past_key_values, [first.logits], 5
    for size in (1, 3, 11, 2, 16, 10):
        parts.append(ref.model(ids[:, at : at + size], past_key_values=state).logits)
        at += size
    assert at == 48
    assert max_diff(np.concatenate(parts, axis=1), whole) < LOGIT_TOL
    h, c = rnn_state(ref, state)
    assert state_diff(h, h_n) < LOGIT_TOL and state_diff(c, c_n) < LOGIT_TOL
    # One token at a time: the same again.
    state = ref.model.new_state(2)
    steps = [ref.model(ids[:, i : i + 1], past_key_values=state).logits for i in range(48)]
    assert max_diff(np.concatenate(steps, axis=1), whole) < LOGIT_TOL


@pytest.mark.parametrize("name", sorted(RNNS))
def test_rnn_initial_state_matches_torch(rnn_refs: dict[str, Ref], name: str) -> None:
    ref = rnn_refs[name]
    cell, sizes = RNNS[name]
    rng = np.random.default_rng(44)
    hs = [(0.5 * rng.standard_normal((4, n))).astype(np.float32) for n in sizes]
    cs = [(2.0 * rng.standard_normal((4, n))).astype(np.float32) for n in sizes]
    same = len(set(sizes)) == 1
    h0: Any = np.stack(hs) if same else hs
    c0: Any = None if cell == "gru" else np.stack(cs) if same else cs
    ids = random_ids((4, 25), seed=45)
    as_torch = (lambda x: None if x is None else torch.from_numpy(x)) if same else (lambda x: x)
    want, h_n, c_n = ref.run(ids, (as_torch(h0), as_torch(c0)))
    state = ref.model.new_state(4, h=h0, c=c0)
    h, c = rnn_state(ref, state)
    assert state_diff(h, h0) == 0 and state_diff(c, c0) == 0
    got = ref.model(torch.from_numpy(ids), past_key_values=state)
    assert max_diff(got.logits, want) < LOGIT_TOL
    h, c = rnn_state(ref, state)
    assert state_diff(h, h_n) < LOGIT_TOL and state_diff(c, c_n) < LOGIT_TOL


def test_gru_state_is_h_alone(rnn_refs: dict[str, Ref]) -> None:
    model = rnn_refs["gru-2"].model
    h = model.get_state(model([[1, 2, 3]] * 3).past_key_values)
    assert isinstance(h, np.ndarray) and h.shape == (2, 3, H)
    with pytest.raises(ValueError, match="no cell state"):
        model.new_state(3, h=h, c=h)
    uneven = rnn_refs["gru-40-56"].model
    h = uneven.get_state(uneven([[1, 2, 3]] * 3).past_key_values)
    assert [x.shape for x in h] == [(3, 40), (3, 56)]
    for bad in (np.zeros((2, 3, 40)), [np.zeros((3, 40))], [np.zeros((3, 40)), np.zeros((3, 40))]):
        with pytest.raises(ValueError, match=r"\[3, 40\], \[3, 56\]"):
            uneven.new_state(3, h=bad)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", sorted(RNNS))
def test_rnn_padded_batch_equals_rows_alone(rnn_refs: dict[str, Ref], name: str, side: str) -> None:
    ref = rnn_refs[name]
    model = ref.model
    rows = ragged(52)
    ids, mask = padded(rows, side)
    out = model(ids, attention_mask=mask)
    h, _ = rnn_state(ref, out.past_key_values)
    nxt = torch.tensor([[3]] * len(rows))
    after = model(nxt, attention_mask=torch.ones_like(nxt), past_key_values=out.past_key_values)
    width = ids.shape[1]
    for b, r in enumerate(rows):
        alone = model([r])
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        assert max_diff(out.logits[b, cols], alone.logits[0]) < SAME_TOL, f"row {b}"
        h1, _ = rnn_state(ref, alone.past_key_values)
        assert all(max_diff(x[b], y[0]) < SAME_TOL for x, y in zip(h, h1, strict=True))
        cont = model([[3]], past_key_values=alone.past_key_values).logits
        assert max_diff(after.logits[b], cont[0]) < SAME_TOL, f"row {b} after the padding"


@pytest.mark.parametrize("name", sorted(RNNS))
def test_rnn_greedy_generate_matches_torch_loop(rnn_refs: dict[str, Ref], name: str) -> None:
    ref = rnn_refs[name]
    rng = np.random.default_rng(71)
    prompts = [rng.integers(1, V, size=n).tolist() for n in (6, 11, 1)]
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1
    out = ref.model.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0)
    for b, p in enumerate(prompts):
        want, scores = torch_greedy(ref, p, NEW)
        assert_greedy_agrees(out[b, width:].tolist(), want, scores, b)
    alone = ref.model.generate(torch.tensor([prompts[0]]), max_new_tokens=NEW)
    want, scores = torch_greedy(ref, prompts[0], NEW)
    assert_greedy_agrees(alone[0, len(prompts[0]) :].tolist(), want, scores, 0)


@pytest.mark.parametrize("name", ["gru-2", "gru-40-56", "lstm-40-56"])
def test_rnn_int8_is_close_to_float32(rnn_refs: dict[str, Ref], name: str) -> None:
    ref = rnn_refs[name]
    q = ferrolm.LSTMLanguageModel.from_pretrained(ref.folder, quantize="int8")
    assert q.quantization == "q8_0"
    ids = random_ids((8, 64), seed=81)
    tol = GRU_INT8_TOL if RNNS[name][0] == "gru" else INT8_TOL
    assert max_diff(q.predict(ids), ref.model.predict(ids)) < tol
    assert np.abs(q.predict(ids) - ref.model.predict(ids)).mean() < 1e-3
    agree = (q.predict(ids).argmax(-1) == ref.model.predict(ids).argmax(-1)).mean()
    assert agree > 0.95


def test_old_config_without_cell_loads_as_lstm(refs: dict[int, Ref], tmp_path: Path) -> None:
    """Folders written before `cell` existed (an int hidden_size, no cell) load as before."""
    src = refs[2].folder
    dst = tmp_path / "old"
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    del cfg["cell"]
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    model = ferrolm.LSTMLanguageModel.from_pretrained(dst)
    assert model.config["cell"] == "lstm" and model.config["hidden_size"] == H
    ids = random_ids((2, 20), seed=46)
    assert max_diff(model.predict(ids), refs[2].model.predict(ids)) == 0


@pytest.mark.parametrize(
    ("name", "tensor"),
    [
        ("gru-2", "gru.weight_hh_l1"),
        ("gru-40-56", "gru.weight_ih_l1"),
        ("lstm-40-56", "lstm.weight_hh_l1"),
        ("gru-40-56", "fc.weight"),
        ("gru-40-56", "gru.bias_hh_l0"),
    ],
)
def test_rnn_wrong_shape_is_a_format_error_naming_it(
    rnn_refs: dict[str, Ref], tmp_path: Path, name: str, tensor: str
) -> None:
    src = rnn_refs[name].folder
    tensors = read_safetensors(src / "model.safetensors")
    shape = tensors[tensor].shape
    tensors[tensor] = np.zeros((shape[0], *shape[1:-1], shape[-1] + 1), dtype=np.float32)
    folder = copy_folder(src, tmp_path / "m", tensors)
    with pytest.raises(ferrolm.FormatError, match=re.escape(tensor)):
        ferrolm.LSTMLanguageModel.from_pretrained(folder)


def test_rnn_config_errors(rnn_refs: dict[str, Ref], tmp_path: Path) -> None:
    src = rnn_refs["gru-40-56"].folder
    tensors = read_safetensors(src / "model.safetensors")
    # A GRU checkpoint under a config that says lstm: the error says which cell it is.
    folder = copy_folder(src, tmp_path / "as-lstm", tensors, cell="lstm")
    with pytest.raises(ferrolm.FormatError, match='"cell": "gru"'):
        ferrolm.LSTMLanguageModel.from_pretrained(folder)
    folder = copy_folder(src, tmp_path / "count", tensors, num_layers=3)
    with pytest.raises(ferrolm.FormatError, match="num_layers"):
        ferrolm.LSTMLanguageModel.from_pretrained(folder)
    folder = copy_folder(src, tmp_path / "rnn", tensors, cell="rnn")
    with pytest.raises(ferrolm.FormatError, match="cell"):
        ferrolm.LSTMLanguageModel.from_pretrained(folder)


def test_save_torch_refuses_mixed_or_unchained_stacks(tmp_path: Path) -> None:
    emb, fc = nn.Embedding(V, E), nn.Linear(H, V)
    with pytest.raises(ValueError, match="one kind"):
        save_torch_lstm(
            tmp_path / "a",
            emb,
            [nn.LSTM(E, H, batch_first=True), nn.GRU(H, H, batch_first=True)],
            fc,
        )
    with pytest.raises(ValueError, match="input size"):
        save_torch_lstm(
            tmp_path / "b",
            emb,
            [nn.GRU(E, 40, batch_first=True), nn.GRU(56, H, batch_first=True)],
            fc,
        )
    with pytest.raises(ValueError, match=r"nn\.LSTM and nn\.GRU"):
        save_torch_lstm(tmp_path / "c", emb, nn.RNN(E, H, batch_first=True), fc)


def test_lstmref_of_sizes_saves_what_ferrolm_runs(tmp_path: Path) -> None:
    from ferrolm.torch_ref.lstm import LSTMRef, greedy_lstm

    for cell in ("lstm", "gru"):
        with torch.random.fork_rng():
            torch.manual_seed(5)
            ref = LSTMRef(V, E, [40, 56], cell=cell).eval()
        model = ferrolm.LSTMLanguageModel.from_pretrained(ref.save(tmp_path / cell))
        ids = random_ids((2, 17), seed=47)
        with torch.no_grad():
            want, _ = ref(torch.from_numpy(ids))
        assert max_diff(model(ids).logits, want) < LOGIT_TOL, cell
        prompt = [3, 1, 4, 1, 5]
        got = model.generate([prompt], max_new_tokens=10)[0]
        assert list(map(int, got)) == greedy_lstm(ref, prompt, 10), cell


# Keras: LSTM(40) → LSTM(56), GRU layers (reset_after=True), of the PyTorch models' weights.


def keras_rnn_lm(keras: Any, cell: str, sizes: list[int]) -> Any:
    """Sequential: Input → Embedding → cell layers of ``sizes`` (Dropout between) → Dense."""
    kl = keras.layers
    keras.backend.clear_session()
    layer = {"lstm": kl.LSTM, "gru": kl.GRU}[cell]
    stack: list[Any] = [keras.Input((None,), dtype="int32"), kl.Embedding(V, E)]
    for k, n in enumerate(sizes):
        if k:
            stack.append(kl.Dropout(0.25))
        stack.append(layer(n, return_sequences=True))
    stack.append(kl.Dense(V, activation="softmax"))
    return keras.Sequential(stack)


@pytest.fixture(scope="module")
def keras_rnn_refs(
    keras: Any, rnn_refs: dict[str, Ref], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, KerasRef]:
    root = tmp_path_factory.mktemp("keras-rnn")
    out = {}
    for name, (cell, sizes) in RNNS.items():
        km = keras_rnn_lm(keras, cell, sizes)
        km.set_weights(keras_weights(rnn_refs[name]))
        path = root / f"{name}.keras"
        km.save(path)
        out[name] = KerasRef(km, path, ferrolm.LSTMLanguageModel.from_pretrained(path))
    return out


@pytest.mark.parametrize("seq", [1, 7, 64])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", sorted(RNNS))
def test_rnn_predict_matches_keras(
    keras_rnn_refs: dict[str, KerasRef], name: str, batch: int, seq: int
) -> None:
    kref = keras_rnn_refs[name]
    ids = random_ids((batch, seq), seed=batch * 100 + seq + 9)
    want = np.asarray(kref.keras_model.predict(ids.astype(np.int32), verbose=0))
    assert max_diff(kref.model.predict(ids), want) < PROB_TOL


@pytest.mark.parametrize("name", sorted(RNNS))
def test_rnn_keras_file_and_torch_folder_are_the_same_model(
    rnn_refs: dict[str, Ref], keras_rnn_refs: dict[str, KerasRef], name: str
) -> None:
    cell, sizes = RNNS[name]
    model = keras_rnn_refs[name].model
    assert model.config["cell"] == cell and model.config["hidden_sizes"] == sizes
    ids = random_ids((4, 33), seed=6)
    assert max_diff(model.predict(ids), rnn_refs[name].model.predict(ids)) < 1e-6


def test_keras_gru_of_its_own_init_matches_keras(keras: Any, tmp_path: Path) -> None:
    """A GRU stack as Keras initialises it (biases set non-zero), not through PyTorch's
    weights: ferrolm's conversion alone against Keras' own GRU."""
    km = keras_rnn_lm(keras, "gru", [40, 56])
    rng = np.random.default_rng(48)
    km.set_weights([w + 0.3 * rng.standard_normal(w.shape) for w in km.get_weights()])
    path = tmp_path / "gru.keras"
    km.save(path)
    model = ferrolm.LSTMLanguageModel.from_pretrained(path)
    ids = random_ids((3, 40), seed=49)
    want = np.asarray(km.predict(ids.astype(np.int32), verbose=0))
    assert max_diff(model.predict(ids), want) < PROB_TOL


def test_keras_gru_reset_after_false_names_the_option(keras: Any, tmp_path: Path) -> None:
    km = keras.Sequential([keras.Input((None,), dtype="int32"), *_gru_reset_before(keras)])
    path = tmp_path / "reset-before.keras"
    km.save(path)
    with pytest.raises(ferrolm.FormatError, match=r"reset_after=False"):
        ferrolm.LSTMLanguageModel.from_pretrained(path)
