"""GPT-2's vocab.json + merges.txt, rebuilt offline from the bundled tiktoken ranks, so that the
tests can load GPT-2 through Hugging Face tokenizers / transformers without a model hub.

The merges are recovered from the ranks the way the ranks were made: each token (in rank order)
is the merge of the two parts that BPE with the lower-ranked tokens splits it into.
"""

from __future__ import annotations

import json
from pathlib import Path

from ferrolm._data import data_path


def byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (bytes_to_unicode in OpenAI's encoder.py)."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def _split(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def write_gpt2_files(folder: Path) -> Path:
    """Writes vocab.json and merges.txt for GPT-2 into ``folder``; returns it."""
    chars = byte_chars()
    ranks: dict[bytes, int] = {}
    for line in data_path("gpt2.tiktoken").read_text().splitlines():
        import base64

        tok, rank = line.split()
        ranks[base64.b64decode(tok)] = int(rank)

    def enc(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _split(token, ranks, rank)
        assert len(parts) == 2, (token, parts)
        merges.append(f"{enc(parts[0])} {enc(parts[1])}")
    vocab = {enc(t): r for t, r in ranks.items()}
    vocab["<|endoftext|>"] = 50256
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    return folder
