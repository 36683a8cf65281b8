"""The candidates an AutoML search tries (``anna_models.automl.search``), in the order it tries them.

A domain's encoder: the run's params, then the domain's pretrained encoder when the registry has one that
fits (``find_pretrained_encoder``; fine-tuned, then frozen), then GRU, LSTM and transformer encoders of a
few widths (``SEARCH_SPACE``) in an order fixed by the seed. The fusion model: ``fusion_candidates``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from anna_models.config import TrainParams
from anna_models.encoders import ARCHITECTURES

SEARCH_SPACE: list[tuple[str, int, int]] = [  # (architecture, hidden, layers)
    *[(a, h, 1) for a in ARCHITECTURES for h in (32, 64, 128)], ("transformer", 64, 2)
]


@dataclass
class Candidate:
    """Params to train with, and the weights to start from (None: from scratch)."""

    params: TrainParams
    init: str = "scratch"  # "scratch" or the pretrained encoder's name
    weights: Mapping[str, Any] | None = None
    frozen_share: float = 1.0  # with params.freeze_encoder: the share of the model's domains frozen


def candidates(params: TrainParams, *, seed: int, pretrained: Any = None) -> list[Candidate]:
    """The given params, then the pretrained encoder (if any; fine-tuned, then frozen), then the search
    space in a seeded order."""
    out = [Candidate(params)]
    if pretrained is not None:
        # The pretrained weights fix the encoder's shape (architecture, width, layers, position table).
        shaped = pretrained.train_params(params)
        out.append(Candidate(shaped, init=str(pretrained.name), weights=pretrained.state))
        # Frozen: only the embedding and head train, in less than half the time; wins when labels are few.
        out.append(Candidate(replace(shaped, freeze_encoder=True), init=f"{pretrained.name} (frozen)",
                             weights=pretrained.state))
    given = (params.architecture, params.hidden, params.layers)
    space = [s for s in SEARCH_SPACE if s != given]
    order = np.random.default_rng(seed).permutation(len(space))
    for i in order:
        architecture, hidden, layers = space[int(i)]
        out.append(Candidate(replace(params, architecture=architecture, hidden=hidden, layers=layers)))
    return out


def fusion_candidates(params: TrainParams, domains: list[str], pretrained: Mapping[str, Any]
                      ) -> list[Candidate]:
    """The fusion model's trials: its given params from scratch; when domains have pretrained encoders
    (``pretrained``: domain -> encoder or None), first the same model started from them with those
    encoders frozen, so that only the layers over them train, then the given params.

    Frozen start first: the search trains its first candidate to the end and starts the next only if
    it fits the time left, and the scratch trial often does not leave room (on the demo it took 85-190 s
    of the 150 s budget; at 100k clients one epoch would). The frozen trial costs ~0.4 of it and has won
    on the demo every time both ran; the scratch trial still runs when time is left and replaces it
    when it beats it on valid by more than the frozen trial's own spread.

    Frozen, not fine-tuned: on the demo (default_12m, 20k clients) the frozen start scored valid ROC-AUC
    0.8346 against 0.8313 from scratch at the same width and 0.8303 fine-tuned, test 0.8198 against 0.8116
    and 0.8177, in 45 s against 97 s and 99 s. The fusion model takes one encoder shape for all domains:
    that of the most domains' encoders (the first domain's on a tie); a domain whose encoder has another
    shape, or that has none, trains its encoder from scratch in that shape.
    """
    scratch = Candidate(params)
    found = {d: pretrained[d] for d in domains if pretrained.get(d) is not None}
    if not found:
        return [scratch]

    def shape(encoder: Any) -> tuple:
        # A transformer's position table has max_len rows; a GRU's or LSTM's weights do not depend on it.
        return (encoder.architecture, encoder.hidden, encoder.layers,
                encoder.max_len if encoder.architecture == "transformer" else None)

    shapes = [shape(e) for e in found.values()]
    common = max(shapes, key=shapes.count)  # max keeps the first of equal counts: domain order
    used = [d for d in found if shape(found[d]) == common]
    weights: dict[str, Any] = {}
    for index, domain in enumerate(domains):
        if domain not in used:
            continue
        for key, value in found[domain].state.items():
            part, _, rest = key.partition(".")  # "events.0.<name>" -> "events.<index>.<name>"
            if part in ("events", "sequences"):
                weights[f"{part}.{index}.{rest.partition('.')[2]}"] = value
    shaped = replace(found[used[0]].train_params(params), freeze_encoder=True)
    if shaped.architecture != "transformer":
        shaped = replace(shaped, max_len=params.max_len)
    names = ", ".join(str(found[d].name) for d in used)
    frozen = Candidate(shaped, init=f"{names} (frozen)", weights=weights,
                       frozen_share=len(used) / len(domains))
    return [frozen, scratch]


def find_pretrained_encoder(tracking_uri: str, domain: str, *, manifest: dict[str, Any],
                            earliest_report_date: str, progress: Callable[..., None] | None = None) -> Any:
    """The registry's pretrained encoder (``anna_models.pretrain.PretrainedEncoder``) that fits this
    domain's mart and was pretrained only on events before ``earliest_report_date``, or None.

    A failing lookup costs the run only this candidate, so it is reported, not raised.
    """
    try:
        from anna_models.pretrain import find_pretrained
    except ImportError:
        return None
    try:
        return find_pretrained(tracking_uri, domain, mart_version=manifest.get("version"),
                               earliest_report_date=earliest_report_date, manifest=manifest)
    except Exception as error:  # noqa: BLE001 - any registry failure means "no pretrained encoder"
        if progress is not None:
            progress(message=f"no pretrained encoder: the lookup failed ({type(error).__name__}: {error})")
        return None
