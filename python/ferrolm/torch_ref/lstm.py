"""The LSTM language model in plain PyTorch: the reference of ferrolm's LSTM tests and the model
the example trains (``examples/lstm_lm.py``).

``LSTMRef`` is Embedding → ``nn.LSTM(batch_first=True)`` → Linear, with the module names
(``embedding``, ``lstm``, ``fc``) that ``ferrolm.LSTMLanguageModel`` reads; ``save`` writes the
folder ferrolm loads, ``greedy`` is the reference greedy loop, ``train_lm`` a small training loop
(Adam, next-token cross-entropy) over a list of token ids.
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
    """Embedding → ``num_layers`` LSTM layers → Linear to the vocabulary (logits)."""

    def __init__(
        self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int = 1
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(
        self, ids: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Logits ``[batch, time, vocab]`` and the final ``(h, c)``."""
        out, new_state = self.lstm(self.embedding(ids), state)
        return self.fc(out), new_state

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
