"""Saving is atomic (SECURITY.md, issue 23): ``save_pretrained`` over an existing model, killed
with SIGKILL or interrupted with Ctrl-C at any moment, or out of disk space, leaves a folder that
loads and equals the old model or the new one, never a mix; a destination that is the source
folder or a folder a live model reads is refused by inode, whatever path names it; a process
that maps the old weights keeps working (no SIGBUS)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ferrolm

sys.path.insert(0, str(Path(__file__).parent))

# About 150 MB of f32 weights: a save takes long enough to be interrupted at many points.
BIG = dict(n_embd=384, n_layer=8, n_head=6, n_positions=256, vocab_size=50257)
PROBE = [[464, 3290, 318, 257, 1332, 13]]


def _model(seed: int, **config: Any) -> Path:
    from gpt2_models import gpt2_model

    pytest.importorskip("transformers", reason="the test models are built with transformers")
    return gpt2_model(seed=seed, **config)


def _logits(folder: Path) -> Any:
    model = ferrolm.AutoModelForCausalLM.from_pretrained(folder)
    return np.asarray(model(PROBE).logits)


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, Any]:
    """Two models of different shapes (8 and 6 layers: one's weights under the other's
    config.json do not load), each saved by ferrolm, and their logits."""
    root = tmp_path_factory.mktemp("models")
    old, new = root / "old", root / "new"
    ferrolm.AutoModelForCausalLM.from_pretrained(_model(11, **BIG)).save_pretrained(old)
    smaller = {**BIG, "n_layer": 6}
    ferrolm.AutoModelForCausalLM.from_pretrained(_model(12, **smaller)).save_pretrained(new)
    return old, new, _logits(old), _logits(new)


SAVER = """
import signal, sys, ferrolm
signal.signal(signal.SIGINT, signal.default_int_handler)  # inherited ignored under nohup / &
model = ferrolm.AutoModelForCausalLM.from_pretrained(sys.argv[1])
print("loaded", flush=True)
sys.stdin.readline()
try:
    model.save_pretrained(sys.argv[2])
    print("saved", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def _save_in_child(src: Path, dest: Path, sig: int | None, after: float) -> str:
    """Saves `src`'s model over `dest` in a child process, sending `sig` `after` seconds into
    the save; returns what the child printed last."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(src), str(dest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "loaded"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if sig is not None:
        time.sleep(after)
        if proc.poll() is None:
            proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    return out.strip() or f"killed ({proc.returncode})"


def _same(a: Any, b: Any) -> bool:
    return bool(np.array_equal(a, b))


def test_an_interrupted_save_leaves_the_old_model_or_the_new(
    old_and_new: tuple[Path, Path, Any, Any], tmp_path: Path
) -> None:
    old, new, old_logits, new_logits = old_and_new
    dest = tmp_path / "dest"
    shutil.copytree(old, dest)
    (dest / "README.md").write_text("the user's own notes\n")
    # How long a whole save takes here: the signals land across that span.
    start = time.perf_counter()
    assert _save_in_child(new, tmp_path / "timing", None, 0) == "saved"
    span = time.perf_counter() - start
    outcomes: dict[str, int] = {}
    for i in range(12):
        shutil.rmtree(dest)
        shutil.copytree(old, dest)
        (dest / "README.md").write_text("the user's own notes\n")
        sig = signal.SIGKILL if i % 3 else signal.SIGINT
        result = _save_in_child(new, dest, sig, span * i / 12)
        logits = _logits(dest)
        which = "old" if _same(logits, old_logits) else "new" if _same(logits, new_logits) else ""
        assert which, f"a save stopped by {sig!r} at {span * i / 12:.2f} s left a mix ({result})"
        outcomes[which] = outcomes.get(which, 0) + 1
        assert (dest / "README.md").read_text() == "the user's own notes\n"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".dest")]
        if result != "killed (-9)":
            assert not leftovers, leftovers
    # A later save cleans up after a killed one and completes.
    assert _save_in_child(new, dest, None, 0) == "saved"
    assert _same(_logits(dest), new_logits)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".dest")]
    assert outcomes.get("old", 0) >= 1, outcomes


def test_a_save_that_fails_after_the_weights_leaves_the_old_model(
    old_and_new: tuple[Path, Path, Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deterministic twin of the signals above: the save fails at its last steps, after
    the new weights are written (copying the tokenizer files), and the folder is still the old
    model, its config.json and weights together."""
    import ferrolm._quant

    old, new, old_logits, _ = old_and_new
    dest = tmp_path / "dest"
    shutil.copytree(old, dest)
    model = ferrolm.AutoModelForCausalLM.from_pretrained(new)
    copies: list[str] = []

    def failing_copy(src: Any, dst: Any, **kw: Any) -> Any:
        copies.append(Path(src).name)
        raise OSError(5, "simulated I/O error", str(dst))

    monkeypatch.setattr(ferrolm._quant.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="simulated"):
        model.save_pretrained(dest)
    assert copies, "the save never reached its side files"
    assert _same(_logits(dest), old_logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def _mount_tmpfs(where: Path, size: str) -> bool:
    if sys.platform != "linux" or shutil.which("mount") is None:
        return False
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


def test_a_full_disk_leaves_the_old_model(
    old_and_new: tuple[Path, Path, Any, Any], tmp_path: Path
) -> None:
    old, new, old_logits, _ = old_and_new
    disk = tmp_path / "small-disk"
    size = sum(f.stat().st_size for f in old.iterdir() if f.is_file())
    # Room for the old model and a third of the new one.
    if not _mount_tmpfs(disk, f"{(size + size // 3) // 4096 * 4096}"):
        pytest.skip("cannot mount a small tmpfs here (needs Linux and the right to mount)")
    try:
        dest = disk / "model"
        shutil.copytree(old, dest)
        model = ferrolm.AutoModelForCausalLM.from_pretrained(new)
        with pytest.raises(OSError) as info:
            model.save_pretrained(dest)
        assert "No space left" in str(info.value) or info.value.errno == 28, info.value
        assert _same(_logits(dest), old_logits)
        assert sorted(p.name for p in disk.iterdir()) == ["model"], "the staged files remain"
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_the_source_folder_is_refused_by_inode_after_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "fx" / "C"
    shutil.copytree(_model(13, n_embd=32, n_layer=1, n_head=2, n_positions=32), folder)
    monkeypatch.chdir(tmp_path / "fx")
    model = ferrolm.AutoModelForCausalLM.from_pretrained("C")  # a relative path
    monkeypatch.chdir(tmp_path)
    before = (folder / "model.safetensors").read_bytes()
    for name in (folder, tmp_path / "fx" / "." / "C", "fx/C"):
        with pytest.raises(ValueError, match="the folder the model was loaded from"):
            model.save_pretrained(name)
    link = tmp_path / "link-to-C"
    link.symlink_to(folder)
    with pytest.raises(ValueError, match="the folder the model was loaded from"):
        model.save_pretrained(link)
    assert (folder / "model.safetensors").read_bytes() == before
    # The model still reads its own source files after the chdir: a save elsewhere works.
    model.save_pretrained(tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "config.json").is_file()


def test_a_folder_a_live_model_reads_is_refused_until_that_model_is_gone(tmp_path: Path) -> None:
    a = _model(14, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    b = _model(15, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    dest = tmp_path / "shared"
    ferrolm.AutoModelForCausalLM.from_pretrained(a).save_pretrained(dest)
    reader = ferrolm.AutoModelForCausalLM.from_pretrained(dest)
    want = np.asarray(reader(PROBE).logits)
    writer = ferrolm.AutoModelForCausalLM.from_pretrained(b)
    with pytest.raises(ValueError, match="another loaded model reads its weights"):
        writer.save_pretrained(dest)
    assert np.array_equal(np.asarray(reader(PROBE).logits), want)
    del reader
    writer.save_pretrained(dest)
    assert _same(_logits(dest), _logits(b))


def test_a_hard_linked_destination_leaves_the_other_file_alone(tmp_path: Path) -> None:
    a = _model(16, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    b = _model(17, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    keep = tmp_path / "keep"
    ferrolm.AutoModelForCausalLM.from_pretrained(a).save_pretrained(keep)
    kept = (keep / "model.safetensors").read_bytes()
    dest = tmp_path / "dest"
    dest.mkdir()
    for f in keep.iterdir():
        os.link(f, dest / f.name)
    ferrolm.AutoModelForCausalLM.from_pretrained(b).save_pretrained(dest)
    assert (keep / "model.safetensors").read_bytes() == kept
    assert _same(_logits(dest), _logits(b))


def test_a_process_mapping_the_old_weights_keeps_working(
    tmp_path: Path, old_and_new: tuple[Path, Path, Any, Any]
) -> None:
    """Another process reads the destination's weights while this one replaces them: it keeps
    the old inode (no SIGBUS), and its next load sees the new model."""
    old, new, old_logits, new_logits = old_and_new
    dest = tmp_path / "dest"
    shutil.copytree(old, dest)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, numpy as np, ferrolm\n"
            "m = ferrolm.AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
            "a = np.asarray(m([[464, 3290, 318, 257, 1332, 13]]).logits)\n"
            "print('ready', flush=True); sys.stdin.readline()\n"
            "b = np.asarray(m([[464, 3290, 318, 257, 1332, 13]]).logits)\n"
            "print('same' if np.array_equal(a, b) else 'changed', flush=True)\n",
            str(dest),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdin is not None and reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"
    ferrolm.AutoModelForCausalLM.from_pretrained(new).save_pretrained(dest)
    reader.stdin.write("go\n")
    reader.stdin.flush()
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0, f"the reader died ({reader.returncode}): {out}"
    assert out.strip() == "same"
    assert _same(_logits(dest), new_logits) and not _same(new_logits, old_logits)


def test_tokenizer_save_is_atomic_and_makes_folders(tmp_path: Path) -> None:
    tok = ferrolm.train_bpe(["some text to learn from " * 50], vocab_size=300)
    path = tok.save(tmp_path / "a" / "b" / "tokenizer.json")
    assert path.is_file() and ferrolm.Tokenizer.from_file(path).encode("some") == tok.encode("some")
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]
