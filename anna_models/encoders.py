"""Sequence models: per domain, event encoder → sequence encoder; then embedding → head (the ptls split).

A model reads one domain (a domain encoder) or several at once (the fusion model): each domain's
pooled state is concatenated, projected to the client's embedding (the penultimate layer), and
the head maps that to the task's outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from anna_models.batching import Batch

ARCHITECTURES = ("gru", "lstm", "transformer")


def embedding_size(vocab_size: int) -> int:
    """Entity-embedding width of a categorical feature: sub-linear in the vocabulary size, at most 32."""
    return max(2, min(32, round(1.6 * vocab_size**0.56)))


@dataclass
class EncoderConfig:
    """One domain's event and sequence encoder."""

    categorical: dict[str, int]  # feature name -> vocab size, in the EventTable's (sorted) order
    n_dense: int  # numeric features + 4 time features
    architecture: str = "gru"
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.1
    max_len: int = 256


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model from its state dict (saved as model.json next to it)."""

    encoders: dict[str, EncoderConfig]  # domain -> its encoder; one entry for a domain model
    task_type: str
    n_outputs: int  # 1 for binary and regression, C for multiclass
    hidden: int = 64  # embedding width
    dropout: float = 0.1
    classes: list = field(default_factory=list)  # multiclass/binary labels, in output order
    target_mean: float = 0.0  # regression: the head predicts (y - mean) / std
    target_std: float = 1.0

    @property
    def domains(self) -> list[str]:
        return list(self.encoders)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        raw = json.loads(Path(path).read_text())
        raw["encoders"] = {d: EncoderConfig(**e) for d, e in raw["encoders"].items()}
        return cls(**raw)


class EventEncoder(nn.Module):
    """Per-event vectors: (B, T, n_cat) codes and (B, T, n_dense) floats → (B, T, hidden)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(vocab, embedding_size(vocab), padding_idx=0) for vocab in config.categorical.values()
        )
        n_dense = config.n_dense + 4 if config.n_dense >= 2 else config.n_dense  # + sin/cos of hour, weekday
        width = sum(e.embedding_dim for e in self.embeddings) + n_dense
        self.projection = nn.Linear(width, config.hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        parts = [emb(categorical[..., j]) for j, emb in enumerate(self.embeddings)]
        # Normalised numerics can still have extreme tails (e.g. a one-off huge transfer); clip them.
        dense = dense.clamp(-8.0, 8.0)
        if dense.shape[-1] >= 2:
            # Hour of day and day of week are the last two time features, as fractions of their period:
            # on a circle, 23:00 sits next to 00:00, so "nights" form one region rather than two.
            angle = dense[..., -2:] * (2 * math.pi)
            dense = torch.cat([dense, torch.sin(angle), torch.cos(angle)], dim=-1)
        parts.append(dense)
        return self.dropout(self.projection(torch.cat(parts, dim=-1)))


class SequenceEncoder(nn.Module):
    """Right-padded event vectors (B, T, H) and lengths (B,) → pooled state (B, 3H + 1).

    Pooled = [state after the last real event, masked mean and max over real events, log length].
    With right padding the recurrent output at ``length - 1`` is exact without packing. Rows with
    no events get a learned "no history" vector instead.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.architecture = config.architecture
        h = config.hidden
        inner_dropout = config.dropout if config.layers > 1 else 0.0
        if config.architecture == "gru":
            self.rnn: nn.Module = nn.GRU(h, h, config.layers, batch_first=True, dropout=inner_dropout)
        elif config.architecture == "lstm":
            self.rnn = nn.LSTM(h, h, config.layers, batch_first=True, dropout=inner_dropout)
        elif config.architecture == "transformer":
            heads = 4 if h % 4 == 0 else 1
            layer = nn.TransformerEncoderLayer(
                h, heads, dim_feedforward=2 * h, dropout=config.dropout, batch_first=True, norm_first=True
            )
            self.rnn = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
            self.positions = nn.Embedding(config.max_len + 1, h)
        else:
            raise ValueError(f"unknown architecture {config.architecture!r}; choose one of {ARCHITECTURES}")
        self.out_width = 3 * h + 1
        self.no_history = nn.Parameter(torch.zeros(self.out_width))

    def forward(self, events: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, width, _ = events.shape
        steps = torch.arange(width, device=events.device)
        mask = steps[None, :] < lengths[:, None]  # (B, T) real events
        if self.architecture == "transformer":
            # Positions count back from the latest event, so "most recent" means the same at any length.
            back = (lengths[:, None] - 1 - steps[None, :]).clamp(0, self.positions.num_embeddings - 1)
            padding = ~mask
            padding[:, 0] = False  # an all-masked row would give NaNs; empty rows are replaced below
            out = self.rnn(events + self.positions(back), src_key_padding_mask=padding)
        else:
            # Outside autocast: cuDNN's autocast wrapper runs recurrences in float16 whatever dtype autocast
            # asks for, and float16 gradients underflow without a loss scaler. At these widths the
            # recurrence is bound by its sequential steps, not by arithmetic, so float32 costs little.
            with torch.autocast(events.device.type, enabled=False):
                out, _ = self.rnn(events.float())  # (B, T, H)
        # Pool in float32 (a no-op on CPU): bf16 sums over hundreds of steps keep about three digits.
        out = out.float()
        last_index = (lengths - 1).clamp(min=0)
        last = out[torch.arange(batch, device=out.device), last_index]  # (B, H)
        weights = mask.to(out.dtype).unsqueeze(-1)
        mean = (out * weights).sum(1) / lengths.clamp(min=1).to(out.dtype).unsqueeze(-1)
        peak = out.masked_fill(~mask.unsqueeze(-1), -1e4).amax(1)
        # How much history there is says something itself (activity), which mean and max pooling lose.
        count = torch.log1p(lengths.to(out.dtype)).unsqueeze(-1) / 5
        pooled = torch.cat([last, mean, peak, count], dim=-1)  # (B, 3H + 1)
        empty = (lengths == 0).unsqueeze(-1)
        return torch.where(empty, self.no_history.to(pooled.dtype).expand_as(pooled), pooled)


class DomainModel(nn.Module):
    """A domain encoder (one domain) or the fusion model (several).

    ``forward({domain: Batch})`` with the same rows in every domain's batch returns
    (outputs (B, n_outputs), embedding (B, hidden)).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # Lists, not ModuleDicts keyed by domain: domain names may hold characters module names cannot.
        self.events = nn.ModuleList(EventEncoder(c) for c in config.encoders.values())
        self.sequences = nn.ModuleList(SequenceEncoder(c) for c in config.encoders.values())
        width = sum(s.out_width for s in self.sequences)
        self.embed = nn.Sequential(nn.Linear(width, config.hidden), nn.ReLU(), nn.Dropout(config.dropout))
        self.head = nn.Linear(config.hidden, config.n_outputs)
        self._init_weights()

    def _init_weights(self) -> None:
        for sequence in self.sequences:
            for name, param in sequence.rnn.named_parameters():
                # Orthogonal recurrent weights keep the hidden state's scale stable over long histories.
                if "weight_hh" in name:
                    for chunk in param.data.chunk(param.shape[0] // param.shape[1]):
                        nn.init.orthogonal_(chunk)
        nn.init.normal_(self.head.weight, std=0.1 / math.sqrt(self.config.hidden))
        nn.init.zeros_(self.head.bias)

    def forward(self, batches: Mapping[str, Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = [
            sequence(events(batches[domain].categorical, batches[domain].dense), batches[domain].lengths)
            for domain, events, sequence in zip(self.config.domains, self.events, self.sequences, strict=True)
        ]
        # float32 from the pooled states on (a no-op on CPU): bf16 logits keep ~3 digits, which ties scores
        # that rank-based metrics then cannot order, and these layers cost next to nothing.
        with torch.autocast(pooled[0].device.type, enabled=False):
            embedding = self.embed(torch.cat(pooled, dim=-1).float())
            return self.head(embedding), embedding

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / "model.json")
        torch.save(self.state_dict(), folder / "model.pt")

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> DomainModel:
        folder = Path(folder)
        model = cls(ModelConfig.load(folder / "model.json"))
        model.load_state_dict(torch.load(folder / "model.pt", map_location=device, weights_only=True))
        return model.to(device).eval()
