"""The event encoder: one domain's events, categorical codes and dense features, as per-event vectors.

It is the first half of a domain's encoder (``anna_models.encoders.SequenceEncoder`` is the second): entity
embeddings of the codes, the dense features clipped and with the time of day and week on a circle, one
projection to the recurrence's width, and, for scoring, the same product as lookup tables of input gates.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from anna_models import fused_gru

if TYPE_CHECKING:
    from anna_models.encoders import EncoderConfig

# Scoring turns embeddings of up to this many codes into lookup tables of input gates (EventEncoder):
# a table costs vocab × embedding width × gates multiplications once per batch, and a batch holds tens of
# thousands of events.
LOOKUP_MAX_VOCAB = 4096


def embedding_size(vocab_size: int) -> int:
    """Entity-embedding width of a categorical feature: sub-linear in the vocabulary size, at most 32."""
    return max(2, min(32, round(1.6 * vocab_size**0.56)))


class EventEncoder(nn.Module):
    """Per-event vectors: (B, T, n_cat) codes and (B, T, n_dense) floats → (B, T, hidden).

    ``features`` is the part before the projection, (B, T, width); ``SequenceEncoder.forward_features``
    takes it with the projection, to fold the projection into the recurrence's input weights.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(vocab, embedding_size(vocab), padding_idx=0) for vocab in config.categorical.values()
        )
        n_dense = config.n_dense + 4 if config.n_dense >= 2 else config.n_dense  # + sin/cos of hour, weekday
        self.width = sum(e.embedding_dim for e in self.embedding_layers) + n_dense
        self.projection = nn.Linear(self.width, config.hidden)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def embedding_layers(self) -> list[nn.Embedding]:
        """``embeddings`` as what they are (a ModuleList's items are typed as any module)."""
        return cast(list[nn.Embedding], list(self.embeddings))

    def features(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(B, T, width): embeddings and dense features, with a row's dropout mask in training."""
        parts = [emb(categorical[..., j]) for j, emb in enumerate(self.embeddings)]
        parts.append(self._dense(dense))
        features = torch.cat(parts, dim=-1)
        if self.training and self.dropout.p > 0:
            # One mask per row, the same at every step (a row loses a feature for its whole history):
            # B × width random draws instead of B × T × hidden, and the recurrence sees a consistent
            # input (variational dropout). Applied before the projection so that it can still be folded.
            features = features * self.dropout(features.new_ones(features.shape[0], 1, self.width))
        return features

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(categorical, dense))

    @staticmethod
    def _dense(dense: torch.Tensor) -> torch.Tensor:
        """The dense part of ``features``: clipped, with the circular time features added."""
        # Normalised numerics can still have extreme tails (e.g. a one-off huge transfer); clip them.
        dense = dense.clamp(-8.0, 8.0)
        if dense.shape[-1] >= 2:
            # Hour of day and day of week are the last two time features, as fractions of their period:
            # on a circle, 23:00 sits next to 00:00, so "nights" form one region rather than two.
            angle = dense[..., -2:] * (2 * math.pi)
            dense = torch.cat([dense, torch.sin(angle), torch.cos(angle)], dim=-1)
        return dense

    def input_gates(self, categorical: torch.Tensor, dense: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor) -> fused_gru.InputGates:
        """``F.linear(features(categorical, dense), weight, bias)`` time-major, in parts: for scoring.

        An embedding followed by a linear map is a lookup table (vocab, out): for every feature with at
        most ``LOOKUP_MAX_VOCAB`` codes an event's share of the product is one row of its table. The tables
        are made once per call; the compiled step adds an event's rows and multiplies only the remaining
        features (dense ones, embeddings of larger vocabularies) by their columns. With the demo's card
        features that skips over 80% of the product's multiplications. The dropout mask is not applied.
        """
        categorical, dense = categorical.transpose(0, 1), self._dense(dense.transpose(0, 1))  # (T, B, ·)
        widths = [emb.embedding_dim for emb in self.embedding_layers] + [dense.shape[-1]]
        columns = weight.split(widths, dim=1)
        tables, codes, rest, rest_columns = [], [], [dense], [columns[-1]]
        start = 0
        for j, (emb, part) in enumerate(zip(self.embedding_layers, columns, strict=False)):
            if emb.num_embeddings <= LOOKUP_MAX_VOCAB:
                tables.append(emb.weight @ part.t())
                codes.append(categorical[..., j].long() + start)
                start += emb.num_embeddings
            else:
                rest.append(emb(categorical[..., j]))
                rest_columns.append(part)
        return fused_gru.InputGates(
            x=torch.cat(rest, dim=-1), weight=torch.cat(rest_columns, dim=1).t(), bias=bias,
            codes=torch.stack(codes, dim=-1) if codes else None, tables=torch.cat(tables) if tables else None,
        )
