"""Sequence models: per domain, event encoder (``anna_models.event_encoder``) → sequence encoder; then
embedding → head (the ptls split).

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
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from torch.nn import functional as F

from anna_models import fused_gru
from anna_models.event_encoder import EventEncoder

if TYPE_CHECKING:
    from anna_models.batching import Batch

ARCHITECTURES = ("gru", "lstm", "transformer")


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
    class_weights: list[float] | None = None  # per class, in the training loss (anna_models.imbalance)

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
        # Recurrences run time-major, (T, B, ·): batch-first input reaches the input weights as a transposed
        # view, which PyTorch multiplies as T small batched products (2-4× slower on CPU than one product),
        # and time-major states pool with contiguous reductions over T.
        if config.architecture == "gru":
            self.rnn: nn.Module = nn.GRU(h, h, config.layers, dropout=inner_dropout)
        elif config.architecture == "lstm":
            self.rnn = nn.LSTM(h, h, config.layers, dropout=inner_dropout)
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
        if self.architecture == "transformer":
            steps = torch.arange(events.shape[1], device=events.device)
            padding = steps[None, :] >= lengths[:, None]  # (B, T)
            # Positions count back from the latest event, so "most recent" means the same at any length.
            back = (lengths[:, None] - 1 - steps[None, :]).clamp(0, self.positions.num_embeddings - 1)
            padding[:, 0] = False  # an all-masked row would give NaNs; empty rows are replaced below
            out = self.rnn(events + self.positions(back), src_key_padding_mask=padding)
            return self._pool(out.transpose(0, 1), lengths)
        # Outside autocast: cuDNN's autocast wrapper runs recurrences in float16 whatever dtype autocast
        # asks for, and float16 gradients underflow without a loss scaler. At these widths the
        # recurrence is bound by its sequential steps, not by arithmetic, so float32 costs little.
        with torch.autocast(events.device.type, enabled=False):
            out, _ = self.rnn(events.float().transpose(0, 1).contiguous())  # (T, B, H)
        return self._pool(out, lengths)

    def forward_events(self, events: EventEncoder, categorical: torch.Tensor, dense: torch.Tensor,
                       lengths: torch.Tensor) -> torch.Tensor:
        """``forward(events(categorical, dense), lengths)``, by the cheapest path there is.

        Scoring a single-layer GRU on CPU runs ``fused_gru.gru_pooled``, which makes the input gates from
        lookup tables (``EventEncoder.input_gates``) and pools the states as the steps run; anything else
        goes through ``forward_features``.
        """
        rnn = self.rnn
        if (torch.is_grad_enabled() or not isinstance(rnn, nn.GRU) or rnn.num_layers != 1
                or dense.device.type != "cpu" or not fused_gru.available()):
            return self.forward_features(events.features(categorical, dense), lengths, events.projection)
        projection = events.projection
        weight_ih, weight_hh, bias_ih, bias_hh = rnn.all_weights[0]
        with torch.autocast("cpu", enabled=False):
            w_ih = (weight_ih @ projection.weight).float()
            b_ih = torch.addmv(bias_ih, weight_ih, projection.bias).float()
            gates = events.input_gates(categorical, dense.float(), w_ih, b_ih)
            last, total, peak = fused_gru.gru_pooled(gates, weight_hh, bias_hh, lengths)
        mean = total / lengths.clamp(min=1).to(total.dtype).unsqueeze(-1)
        return self._pooled(last, mean, peak, lengths)

    def forward_features(self, features: torch.Tensor, lengths: torch.Tensor, projection: nn.Linear
                         ) -> torch.Tensor:
        """``forward(projection(features), lengths)``, cheaper on CPU where it can be.

        A recurrence multiplies its input by W_ih first, so W_ih·(P·x + b) = (W_ih·P)·x + W_ih·b: when
        the features are narrower than 1.5 × hidden, the folded (3H × width) product costs fewer
        operations per event than the projection plus W_ih, and the (B, T, H) projection is never
        materialised (nor its gradient). The weights and the result are the same; only rounding differs.
        A single-layer GRU then runs its steps through ``anna_models.fused_gru`` where that is available.
        """
        hidden = projection.out_features
        if self.architecture == "transformer" or features.device.type != "cpu":
            return self.forward(projection(features), lengths)
        rnn = cast(nn.GRU | nn.LSTM, self.rnn)
        weight_ih, weight_hh, bias_ih, bias_hh = rnn.all_weights[0]
        if features.shape[-1] < 1.5 * hidden:
            w_ih = weight_ih @ projection.weight
            b_ih = torch.addmv(bias_ih, weight_ih, projection.bias)
            steps = features.transpose(0, 1).contiguous()  # (T, B, width)
        else:
            w_ih, b_ih = weight_ih, bias_ih
            steps = projection(features).transpose(0, 1).contiguous()  # (T, B, H)
        if isinstance(rnn, nn.GRU) and rnn.num_layers == 1 and fused_gru.available():
            # One product for every step's input gates, then the fused recurrence (anna_models.fused_gru).
            # In float32 whatever autocast asks for, as in forward(): bf16 states drift over long histories.
            with torch.autocast("cpu", enabled=False):
                gates = F.linear(steps.float(), w_ih.float(), b_ih.float())
                out = fused_gru.gru(gates, weight_hh, bias_hh)
            return self._pool(out, lengths)
        # Every layer's (weight_ih, weight_hh, bias_ih, bias_hh), the order nn.GRU/LSTM pass them in.
        weights: list[torch.Tensor] = [w for layer in rnn.all_weights for w in layer]
        weights[0], weights[2] = w_ih, b_ih
        zeros = features.new_zeros(rnn.num_layers, features.shape[0], hidden)
        settings = (True, rnn.num_layers, rnn.dropout, self.training, False, False)  # what nn.GRU/LSTM pass
        if isinstance(rnn, nn.GRU):
            out = torch._VF.gru(steps, zeros, weights, *settings)[0]
        else:
            out = torch._VF.lstm(steps, (zeros, zeros), weights, *settings)[0]
        return self._pool(out, lengths)

    def _pool(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Time-major states (T, B, H) → (B, 3H + 1) pooled over each row's real events."""
        # Pool in float32 (a no-op on CPU): bf16 sums over hundreds of steps keep about three digits.
        out = out.float()
        batch = out.shape[1]
        real = torch.arange(out.shape[0], device=out.device)[:, None] < lengths[None, :]  # (T, B)
        last = out[(lengths - 1).clamp(min=0), torch.arange(batch, device=out.device)]  # (B, H)
        mean = (out * real.unsqueeze(-1)).sum(0) / lengths.clamp(min=1).to(out.dtype).unsqueeze(-1)
        # A (T, B, 1) penalty added, not masked_fill over (T, B, H); and max, whose backward scatters to the
        # chosen step, not amax, whose backward compares every entry again: together 2.5× cheaper.
        penalty = (~real).unsqueeze(-1).to(out.dtype) * -1e4
        peak = (out + penalty).max(0).values
        return self._pooled(last, mean, peak, lengths)

    def _pooled(self, last: torch.Tensor, mean: torch.Tensor, peak: torch.Tensor, lengths: torch.Tensor
                ) -> torch.Tensor:
        """(B, 3H + 1): the pooled parts and the log length; rows without events get ``no_history``."""
        # How much history there is says something itself (activity), which mean and max pooling lose.
        count = torch.log1p(lengths.to(last.dtype)).unsqueeze(-1) / 5
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
        width = sum(s.out_width for s in self.domain_parts()[1])
        self.embed = nn.Sequential(nn.Linear(width, config.hidden), nn.ReLU(), nn.Dropout(config.dropout))
        self.head = nn.Linear(config.hidden, config.n_outputs)
        self._init_weights()

    def domain_parts(self) -> tuple[list[EventEncoder], list[SequenceEncoder]]:
        """``events`` and ``sequences`` as what they are, in the order of ``config.domains``."""
        return cast(list[EventEncoder], list(self.events)), cast(list[SequenceEncoder], list(self.sequences))

    def _init_weights(self) -> None:
        for sequence in self.domain_parts()[1]:
            for name, param in sequence.rnn.named_parameters():
                # Orthogonal recurrent weights keep the hidden state's scale stable over long histories.
                if "weight_hh" in name:
                    for chunk in param.data.chunk(param.shape[0] // param.shape[1]):
                        nn.init.orthogonal_(chunk)
        nn.init.normal_(self.head.weight, std=0.1 / math.sqrt(self.config.hidden))
        nn.init.zeros_(self.head.bias)

    def forward(self, batches: Mapping[str, Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = [
            sequence.forward_events(events, batches[domain].categorical, batches[domain].dense,
                                    batches[domain].lengths)
            for domain, events, sequence in zip(self.config.domains, *self.domain_parts(), strict=True)
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
