"""Self-supervised training of one domain's event + sequence encoder, CoLES-style.

Contrastive learning of event sequences (CoLES): random contiguous sub-sequences ("views") of the same
client's history are pulled together and those of other clients pushed apart, so the pooled state
learns what stays the same about a client over time — the traits that most targets are about.
``anna_models.pretrain`` stores the result; ``train_model(init=...)`` starts a task from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from anna_models.batching import Batch, EventTable, plan_batches
from anna_models.config import TrainParams
from anna_models.encoders import DomainModel, ModelConfig, SequenceEncoder
from anna_models.event_encoder import EventEncoder
from anna_models.sequences import Sequences

ENCODER_PREFIXES = ("events.", "sequences.")


@dataclass
class ColesParams:
    """Pretraining hyperparameters; the encoder's shape (architecture, hidden, layers, max_len) is the
    fine-tuning run's, so it must match the ``TrainParams`` of the runs that start from it."""

    architecture: str = "gru"
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.1
    max_len: int | None = None  # events per client; None: the mart's default_max_len
    # Once per mart, so worth its time. bench/pretrain.py on the demo, pretrained 4 / 6 / 12 / 24 epochs:
    # fine-tuned, the encoder reaches the from-scratch valid metric in at most half the epochs in
    # 4 / 3 / 5 / 5 of 9 cases and scores a better test metric in 6 / 5 / 8 / 6 (frozen: 4 / 3 / 5 / 6
    # and 4 / 7 / 8 / 8); 24 epochs take 1.5x the time of 12 for a mixed result.
    epochs: int = 12
    clients_per_batch: int = 64
    views: int = 3  # sub-sequences per client and batch; the others' views are the negatives
    min_share: float = 0.3  # a view keeps between these shares of the client's history
    max_share: float = 0.8
    min_events: int = 4  # clients with fewer events before the cutoff are left out; views keep at least this
    temperature: float = 0.1
    # Pretrain the model's embedding layer (pooled state -> client embedding) as the projection's first
    # layer and hand it over too, so that a task starts with only its head untrained.
    transfer_embedding: bool = True
    lr: float = 3e-3
    weight_decay: float = 1e-5
    threads: int = 1
    seed: int = 0

    def train_params(self) -> TrainParams:
        return TrainParams(architecture=self.architecture, hidden=self.hidden, layers=self.layers,
                           dropout=self.dropout, max_len=self.max_len or 256, threads=self.threads)


def sample_views(table: EventTable, rows: np.ndarray, *, n_numeric: int, params: ColesParams,
                 rng: np.random.Generator) -> tuple[Batch, np.ndarray]:
    """``params.views`` random contiguous sub-sequences of each client in ``rows``, as one padded batch.

    Returns the batch (B·K rows, ordered client by client) and each view's client position (B·K,).
    Time features are re-anchored as if each view were extracted at a report date between its last
    event and the next one, so views look like what point-in-time extraction gives a task.
    """
    k = params.views
    full = table.lengths[rows].repeat(k)  # (V,) history length of each view's client
    owner = np.arange(len(rows)).repeat(k)
    share = rng.uniform(params.min_share, params.max_share, size=len(full))
    size = np.clip(np.round(share * full).astype(np.int64), np.minimum(params.min_events, full), full)
    start = np.floor(rng.random(len(full)) * (full - size + 1)).astype(np.int64)
    first = table.offsets[rows].repeat(k) + start  # (V,) event index of each view's first event
    width = max(int(size.max(initial=0)), 1)
    steps = np.arange(width, dtype=np.int64)
    index = np.where(steps[None, :] < size[:, None], first[:, None] + steps[None, :], table.pad)
    flat = torch.from_numpy(index.reshape(-1))
    categorical = table.categorical[flat].view(len(full), width, -1)
    dense = table.dense[flat].view(len(full), width, -1)  # a fresh tensor (advanced indexing copies)

    # Column n_numeric holds log1p(days before the cutoff), the next one log1p(days since the previous event).
    before, since = n_numeric, n_numeric + 1
    days = torch.expm1(dense[..., before])  # (V, T) days before the cutoff
    last = days[torch.arange(len(full)), torch.from_numpy(size - 1)]  # (V,)
    after = first + size  # the event right after the view, if the history goes on
    has_next = torch.from_numpy(start + size < full)
    next_days = torch.where(has_next, torch.expm1(table.dense[torch.from_numpy(np.minimum(after, table.pad)),
                                                              before]), torch.zeros_like(last))
    report = next_days + torch.from_numpy(rng.random(len(full)).astype(np.float32)) * (last - next_days)
    real = torch.from_numpy(steps[None, :] < size[:, None])
    dense[..., before] = torch.where(real, torch.log1p((days - report[:, None]).clamp(min=0)), 0.0)
    dense[:, 0, since] = 0.0  # a view's first event has no previous one in the view
    return Batch(rows=owner, categorical=categorical, dense=dense, lengths=torch.from_numpy(size)), owner


def contrastive_loss(projected: torch.Tensor, owner: torch.Tensor, temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE with several positives: (V, D) projections, (V,) client of each view → (loss, accuracy).

    Each view's positives are the other views of its client; every other view in the batch is a
    negative. Accuracy is the share of views whose most similar other view belongs to their client.
    """
    z = F.normalize(projected.float(), dim=-1)
    similarity = z @ z.T / temperature  # (V, V)
    self_pair = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pair, -1e9)
    positive = (owner[:, None] == owner[None, :]) & ~self_pair
    log_prob = F.log_softmax(similarity, dim=1)
    loss = -(log_prob * positive).sum(1) / positive.sum(1).clamp(min=1)
    accuracy = positive[torch.arange(len(z)), similarity.argmax(1)].float().mean()
    return loss.mean(), accuracy


def encoder_state(model: DomainModel, *, embedding: bool = False) -> dict[str, torch.Tensor]:
    """The transferable part of a single-domain model: its ``events.0.*`` and ``sequences.0.*`` weights,
    and with ``embedding`` its ``embed.*`` ones."""
    prefixes = (*ENCODER_PREFIXES, "embed.") if embedding else ENCODER_PREFIXES
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def train_coles(seqs: Sequences, config: ModelConfig, params: ColesParams,
                progress: Callable[..., None] | None = None) -> tuple[DomainModel, list[dict[str, float]]]:
    """Pretrain the encoder of a single-domain model of shape ``config`` on ``seqs`` (one row per client).

    Returns the model (its ``embed``/``head`` untouched, fresh) and one history entry per epoch
    (loss, view retrieval accuracy, seconds, events/s).
    """
    progress = progress or (lambda **_: None)
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    model = DomainModel(config)
    events, sequence = model.events[0], model.sequences[0]
    assert isinstance(events, EventEncoder) and isinstance(sequence, SequenceEncoder)
    # A projection head (SimCLR): the contrastive task shapes the projection's space, so the pooled state
    # below it keeps more of what the views share than the loss alone asks for.
    # The embedding layer without its dropout: noise right before the loss blurs which views match.
    first: nn.Module = (nn.Sequential(model.embed[0], model.embed[1]) if params.transfer_embedding else
                        nn.Sequential(nn.Linear(sequence.out_width, params.hidden), nn.ReLU()))
    projection = nn.Sequential(first, nn.Linear(params.hidden, params.hidden))
    trained = [*events.parameters(), *sequence.parameters(), *projection.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=params.lr, weight_decay=params.weight_decay)
    table = EventTable(seqs, vocab_sizes=config.encoders[config.domains[0]].categorical)
    n_numeric = len(seqs.numeric)
    eligible = np.flatnonzero(table.lengths >= params.min_events)
    if len(eligible) < 2:
        raise ValueError(f"only {len(eligible)} client(s) have {params.min_events}+ events before the "
                         "cutoff; contrastive pretraining needs more (pick a later cutoff)")
    steps_per_epoch = math.ceil(len(eligible) / params.clients_per_batch)
    total = max(steps_per_epoch * params.epochs, 1)
    warmup = min(50, total // 10 + 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(total - warmup, 1)))))
    model.train()
    projection.train()
    history: list[dict[str, float]] = []
    for epoch in range(1, params.epochs + 1):
        # Clients of similar length share a batch: less padding, and negatives that length alone cannot tell.
        plan = plan_batches(table.lengths[eligible], batch_size=params.clients_per_batch, rng=rng)
        started, n_events, loss_sum, accuracy_sum, n_views = time.perf_counter(), 0, 0.0, 0.0, 0
        report_every = max(len(plan) // 10, 1)
        for i, part in enumerate(plan):
            if len(part) < 2:
                continue  # one client has no negatives
            batch, owner = sample_views(table, eligible[part], n_numeric=n_numeric, params=params, rng=rng)
            pooled = sequence(events(batch.categorical, batch.dense), batch.lengths)
            loss, accuracy = contrastive_loss(projection(pooled), torch.from_numpy(owner), params.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            n_events += int(batch.lengths.sum())
            loss_sum += float(loss.detach()) * len(owner)
            accuracy_sum += float(accuracy) * len(owner)
            n_views += len(owner)
            if (i + 1) % report_every == 0 and i + 1 < len(plan):
                progress(epoch=epoch, max_epochs=params.epochs, unit="epoch", fraction=(i + 1) / len(plan))
        seconds = time.perf_counter() - started
        entry = {"epoch": epoch, "loss": loss_sum / max(n_views, 1),
                 "accuracy": accuracy_sum / max(n_views, 1), "seconds": seconds,
                 "events_per_s": n_events / max(seconds, 1e-9)}
        history.append(entry)
        progress(epoch=epoch, max_epochs=params.epochs, unit="epoch", metric=entry["loss"],
                 metric_name="contrastive_loss", fraction=1.0)
    return model.eval(), history
