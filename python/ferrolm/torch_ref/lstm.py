"""The recurrent (LSTM / GRU) language model in plain PyTorch: the reference of ferrolm's LSTM
tests and the model the example trains (``examples/lstm_lm.py``).

``LSTMRef`` is Embedding → ``nn.LSTM`` or ``nn.GRU`` (``batch_first=True``) → Linear, with the
module names (``embedding``, ``lstm``, ``fc``) that ``ferrolm.LSTMLanguageModel`` reads. Given
one ``hidden_size``, ``lstm`` is one module of ``num_layers`` layers; given a list of sizes, it
is an ``nn.ModuleList`` of one single-layer module per size, run one after the other (its
state: a list of the modules' states). ``save`` writes the folder ferrolm loads, ``greedy_lstm``
is the reference greedy loop, ``train_lm`` a small training loop (Adam, next-token
cross-entropy) over a list of token ids.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LSTMRef", "greedy_lstm", "train_lm"]


class LSTMRef(nn.Module):
    """Embedding → recurrent layers (``cell`` ``"lstm"`` or ``"gru"``; ``num_layers`` of
    ``hidden_size``, or one layer per entry of a list of sizes) → Linear to the vocabulary."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int | Sequence[int],
        num_layers: int = 1,
        cell: str = "lstm",
    ) -> None:
        super().__init__()
        kinds: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in kinds:
            raise ValueError(f"cell must be 'lstm' or 'gru', not {cell!r}")
        rnn = kinds[cell]
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm: nn.Module
        if isinstance(hidden_size, int):
            self.lstm = rnn(embedding_dim, hidden_size, num_layers, batch_first=True)
            last = hidden_size
        else:
            sizes = list(hidden_size)
            ins = [embedding_dim, *sizes[:-1]]
            self.lstm = nn.ModuleList(
                rnn(i, h, 1, batch_first=True) for i, h in zip(ins, sizes, strict=True)
            )
            last = sizes[-1]
        self.fc = nn.Linear(last, vocab_size)

    def forward(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Logits ``[batch, time, vocab]`` and the final state (``(h, c)`` of an LSTM, ``h`` of
        a GRU; a list of them, one per module, for a list of sizes)."""
        x = self.embedding(ids)
        if not isinstance(self.lstm, nn.ModuleList):
            out, new_state = self.lstm(x, state)
            return self.fc(out), new_state
        states = []
        for k, layer in enumerate(self.lstm):
            x, s = layer(x, None if state is None else state[k])
            states.append(s)
        return self.fc(x), states

    def save(self, folder: str | Path, tokenizer: Any = None, **config: Any) -> Path:
        """The folder ``ferrolm.LSTMLanguageModel.from_pretrained`` reads."""
        from ferrolm.lstm import save_torch_lstm

        return save_torch_lstm(
            folder, self.embedding, self.lstm, self.fc, tokenizer=tokenizer, **config
        )


@torch.inference_mode()
def greedy_lstm(model: LSTMRef, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """The prompt and ``max_new_tokens`` greedy tokens, the state carried step to step."""
    logits, state = model(torch.tensor([list(prompt)]))
    out = list(prompt)
    for _ in range(max_new_tokens):
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]]), state)
    return out


def train_lm(
    model: LSTMRef,
    ids: Sequence[int],
    *,
    seq_len: int = 64,
    batch_size: int = 32,
    lr: float = 3e-3,
    seconds: float = 120.0,
    max_steps: int | None = None,
    seed: int = 0,
    report: Callable[[int, float, float], object] | None = None,
) -> float:
    """Trains on random windows of ``ids`` (next-token cross-entropy, Adam, gradients clipped
    to 1) until ``seconds`` pass or ``max_steps`` steps; ``report(step, loss, elapsed)`` every
    50 steps. Returns the last loss (averaged over the last 50 steps)."""
    data = torch.tensor(list(ids), dtype=torch.long)
    if len(data) <= seq_len + 1:
        raise ValueError(f"need more than {seq_len + 1} tokens to train, got {len(data)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    step = 0
    recent: list[float] = []
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=gen)
        window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        logits, _ = model(window[:, :-1])
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        recent = [*recent[-49:], loss.item()]
        elapsed = time.perf_counter() - start
        if report is not None and step % 50 == 0:
            report(step, sum(recent) / len(recent), elapsed)
        if elapsed >= seconds or (max_steps is not None and step >= max_steps):
            break
    model.eval()
    return sum(recent) / len(recent) if recent else math.nan
