"""Length-bucketed, padded batches from ragged ``Sequences``.

Sorting rows by length before cutting batches is what makes recurrent encoders fast on
heavy-tailed histories: a batch is padded to its own longest row, so almost no time step
is spent on padding. All gathers are vectorised; Python loops run once per batch, never per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from anna_models.sequences import Sequences


@dataclass
class Batch:
    """One padded batch. Padded positions hold code 0 and zeros, and come after the real events.

    ``rows`` are the batch rows' positions in the source ``Sequences`` (to restore order).
    """

    rows: np.ndarray  # (B,) int64
    categorical: torch.Tensor  # (B, T, n_categorical) int64 codes, 0 = padding
    dense: torch.Tensor  # (B, T, n_numeric + 4) float32: numeric features, then time features
    lengths: torch.Tensor  # (B,) int64, may be 0

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``: asynchronous from pinned memory (``pin_memory``); a no-op if there."""
        return Batch(
            rows=self.rows,
            categorical=self.categorical.to(device, non_blocking=True),
            dense=self.dense.to(device, non_blocking=True),
            lengths=self.lengths.to(device, non_blocking=True),
        )

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory, so that ``to("cuda")`` overlaps with the GPU's work."""
        return Batch(
            rows=self.rows,
            categorical=self.categorical.pin_memory(),
            dense=self.dense.pin_memory(),
            lengths=self.lengths.pin_memory(),
        )


class EventTable:
    """The events of a ``Sequences`` stacked into two tensors, plus one all-zero padding event at the end.

    A batch is then one gather per tensor: ``table[index]`` with padded slots pointing at the padding event.
    The gather runs where the table lives (``to``): on a GPU only the (B, T) index crosses the bus.
    """

    def __init__(self, seqs: Sequences, vocab_sizes: dict[str, int] | None = None) -> None:
        self.names_categorical = sorted(seqs.categorical)
        self.names_numeric = sorted(seqs.numeric)
        self.offsets = np.asarray(seqs.offsets, dtype=np.int64)
        self.lengths = np.diff(self.offsets)
        n_events = int(self.offsets[-1])
        self.pad = n_events  # index of the padding event
        cat = np.zeros((n_events + 1, len(self.names_categorical)), dtype=np.int64)
        for j, name in enumerate(self.names_categorical):
            codes = np.asarray(seqs.categorical[name], dtype=np.int64)
            if vocab_sizes is not None:
                # A mart refreshed after training may hold codes the model never saw: treat them as unknown.
                codes = np.where(codes < vocab_sizes[name], codes, 1)
            cat[:n_events, j] = codes
        dense = np.zeros((n_events + 1, len(self.names_numeric) + seqs.time_features.shape[1]), np.float32)
        for j, name in enumerate(self.names_numeric):
            dense[:n_events, j] = seqs.numeric[name]
        dense[:n_events, len(self.names_numeric) :] = seqs.time_features
        # Missing numerics would poison a whole batch's gradients; they carry no signal after normalisation.
        np.nan_to_num(dense, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        self.categorical = torch.from_numpy(cat)
        self.dense = torch.from_numpy(dense)

    @property
    def n_rows(self) -> int:
        return len(self.lengths)

    @property
    def device(self) -> torch.device:
        return self.categorical.device

    @property
    def nbytes(self) -> int:
        """Bytes the event tensors take (what ``to`` moves)."""
        return self.categorical.nbytes + self.dense.nbytes

    def to(self, device: torch.device | str) -> EventTable:
        """Move the event tensors to ``device`` (in place; returns self): batches are then gathered there."""
        self.categorical = self.categorical.to(device)
        self.dense = self.dense.to(device)
        return self

    def batch(self, rows: np.ndarray) -> Batch:
        """Pad ``rows`` to their own longest length (at least 1, so empty rows still form a tensor)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        width = max(int(lengths.max(initial=0)), 1)
        steps = np.arange(width, dtype=np.int64)
        index = self.offsets[rows][:, None] + steps[None, :]  # (B, T)
        real = steps[None, :] < lengths[:, None]
        index = np.where(real, index, self.pad)
        flat, lengths_t = torch.from_numpy(index.reshape(-1)), torch.from_numpy(lengths)
        if self.device.type != "cpu":
            # Pageable sources are staged by the driver before the call returns, so the numpy arrays may go;
            # non_blocking spares a wait for the GPU's queued work (a blocking copy synchronises the stream).
            flat = flat.to(self.device, non_blocking=True)
            lengths_t = lengths_t.to(self.device, non_blocking=True)
        shape = (len(rows), width)
        return Batch(
            rows=rows,
            categorical=self.categorical[flat].view(*shape, -1),
            dense=self.dense[flat].view(*shape, -1),
            lengths=lengths_t,
        )


def plan_batches(
    lengths: np.ndarray,
    *,
    batch_size: int,
    max_tokens: int | None = None,
    rng: np.random.Generator | None = None,
    jitter: float = 0.05,
) -> list[np.ndarray]:
    """Cut rows into batches of similar length; returns each batch's row indices.

    A batch holds at most ``batch_size`` rows and, when ``max_tokens`` is set, at most
    ``max_tokens`` padded slots (rows × its longest row; a single row always fits).
    With ``rng`` the order is randomised for training: rows are sorted by log-length plus
    uniform noise of width ``jitter`` (so neighbours differ from epoch to epoch while
    padding stays within ~``jitter`` of the real length), and the batches are shuffled.
    Without ``rng`` the plan is deterministic (for inference).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    key = np.log1p(lengths.astype(np.float64))
    if rng is not None:
        key = key + rng.uniform(0.0, jitter, size=len(lengths))
    order = np.argsort(key, kind="stable")
    sorted_len = np.maximum(lengths[order], 1)
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        stop = min(start + batch_size, n)
        if max_tokens is not None:
            # Rows start..k-1 fit if (k - start) * max(len[start:k]) <= max_tokens; the noise in the
            # sort key means the longest row is not always the last one, hence the running maximum.
            widths = np.maximum.accumulate(sorted_len[start:stop])
            fits = np.arange(1, stop - start + 1) * widths <= max_tokens
            stop = start + max(int(np.argmin(fits)) if not fits.all() else len(fits), 1)
        batches.append(order[start:stop])
        start = stop
    if rng is not None:
        rng.shuffle(batches)
    return batches


def iterate_batches(table: EventTable, plan: list[np.ndarray]) -> Iterator[Batch]:
    """Materialise the planned batches one by one (only one padded batch is in memory at a time)."""
    for rows in plan:
        yield table.batch(rows)
