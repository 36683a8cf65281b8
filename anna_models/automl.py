"""AutoML search of one domain's encoder: architecture and size within a time budget, bad trials pruned.
The fusion model runs the same search over two candidates.

What is tried, in which order, is ``anna_models.search_space``'s: the given params first (so a model
always exists, trained to the end as without a search), then the domain's pretrained encoder, then GRU,
LSTM and transformer encoders of a few widths in an order fixed by the seed (the fusion model:
``search_space.fusion_candidates``). Trials run one after another. A trial whose best valid metric after
epoch ``k >= PRUNE_AFTER_EPOCH`` is worse than the median of the earlier trials' best at epoch ``k`` is
pruned (Optuna's MedianPruner rule), judged only against trials with the same start: a pretrained start is
ahead after two epochs by its head start, not because the scratch trial would end worse.
The budget counts from the search's start: a trial is started only when it can reach its first
pruning check in the time left (estimated from the finished trials' seconds per epoch, scaled by
``relative_cost``), and a running one is stopped once the budget is spent, its best epoch kept.
The trial with the best valid metric is chosen, but another trial replaces the given params only when it
beats them by more than their own spread over their last epochs (``NOISE_EPOCHS``): with a valid set of
a few thousand rows, the best of ten trials on it is otherwise partly the luckiest, not the best on test.
"Valid" here is whatever rows the caller passes as valid: the pipeline passes the encoder's stopping rows
(a client-grouped share of the train rows, ``anna_models.split.stopping_rows``), not the run's valid part.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anna_models.config import TrainParams
from anna_models.metrics import beats, is_better
from anna_models.search_space import Candidate, candidates

PRUNE_AFTER_EPOCH = 2  # epoch 1 mostly reflects the warm-up, not the architecture
NOISE_EPOCHS = 3  # the given params' valid metric over this many last epochs sets the margin to beat
# Seconds per epoch relative to a one-layer GRU 64, before any trial of the architecture has run (CPU,
# demo card transactions, max_len 256: attention over 256 steps costs the transformer ~3.5x a GRU).
ARCH_COST = {"gru": 1.0, "lstm": 1.1, "transformer": 3.5}
# A frozen encoder runs forward only: no backward pass through the recurrence or the attention. Measured
# per epoch against the same encoder trained whole on the demo (default_12m): 0.36-0.42 in the domain
# models, 0.32 in the fusion model. A fusion model that freezes only some domains' encoders (the others
# have no pretrained one) costs in between, by the share of domains frozen (``frozen_share``).
FROZEN_COST = 0.4
Trainer = Callable[..., tuple[Any, list[dict[str, float]]]]


@dataclass
class Trial:
    """One candidate's training: what a user reads in trials.json, report.json and MLflow."""

    number: int
    params: TrainParams
    init: str
    frozen_share: float = 1.0  # the candidate's
    state: str = "running"  # completed | pruned | budget (stopped when the budget ran out) | failed
    valid_metric: list[float | None] = field(default_factory=list)  # per epoch
    seconds: float = 0.0
    note: str = ""

    @property
    def epochs(self) -> int:
        return len(self.valid_metric)

    def best(self, metric: str) -> float | None:
        running = best_so_far(metric, self.valid_metric)
        return running[-1] if running else None

    def label(self) -> str:
        p = self.params
        layers = f"x{p.layers}" if p.layers > 1 else ""
        start = "" if self.init == "scratch" else f" from {self.init}"
        return f"{p.architecture} {p.hidden}{layers}{start}"

    def to_json(self, metric: str) -> dict[str, Any]:
        return {"number": self.number, "params": asdict(self.params), "init": self.init, "state": self.state,
                "epochs": self.epochs, "seconds": round(self.seconds, 3), "valid_metric": self.valid_metric,
                "best_valid_metric": self.best(metric), "note": self.note}


@dataclass
class SearchResult:
    """The chosen trial's model (best epoch), its history and params, and every trial."""

    model: Any
    history: list[dict[str, float]]
    params: TrainParams
    trials: list[Trial]
    chosen: int
    # Candidates not started because the budget could not fit them: {"candidate", "needs_s", "left_s"}.
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, *, metric: str, budget_s: float) -> dict[str, Any]:
        return trials_json(self.trials, metric=metric, budget_s=budget_s, chosen=self.chosen,
                           skipped=self.skipped)


def trials_json(trials: list[Trial], *, metric: str, budget_s: float, chosen: int | None,
                skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """models/<domain>/trials.json: the search as the run shows it."""
    return {"metric": metric, "budget_s": budget_s, "seconds": round(sum(t.seconds for t in trials), 3),
            "chosen": chosen, "trials": [t.to_json(metric) for t in trials], "skipped": skipped}


def best_so_far(metric: str, curve: list[float | None]) -> list[float | None]:
    """The best value up to each epoch (None until a defined value appears)."""
    out: list[float | None] = []
    best: float | None = None
    for value in curve:
        if value is not None and is_better(metric, value, best):
            best = value
        out.append(best)
    return out


def spread(curve: list[float | None]) -> float:
    """Standard deviation of a trial's valid metric over its last ``NOISE_EPOCHS`` epochs (0 if fewer)."""
    values = [v for v in curve[-NOISE_EPOCHS:] if v is not None and not np.isnan(v)]
    return float(np.std(values)) if len(values) >= 2 else 0.0


def should_prune(metric: str, curve: list[float | None], earlier: list[Trial],
                 after_epoch: int = PRUNE_AFTER_EPOCH) -> bool:
    """Median stopping: prune when this trial's best so far at epoch k is worse than the median of the
    earlier trials' best at epoch k. A trial that finished before epoch k (early stopping) counts with its
    final best, since it would not have improved; a pruned one only up to where it stopped."""
    k = len(curve)
    if k < after_epoch:
        return False
    peers = []
    for trial in earlier:
        if trial.state == "failed":
            continue
        running = best_so_far(metric, trial.valid_metric)
        if len(running) >= k:
            peers.append(running[k - 1])
        elif running and trial.state == "completed":
            peers.append(running[-1])
    values = [p for p in peers if p is not None]
    if not values:
        return False
    mine = best_so_far(metric, curve)[-1]
    return mine is None or is_better(metric, float(np.median(values)), mine)


def same_start(a: Trial, b: Trial) -> bool:
    """Whether two trials both start from scratch or both from pretrained weights (comparable curves)."""
    return (a.init == "scratch") == (b.init == "scratch")


def relative_cost(params: TrainParams, frozen_share: float = 1.0) -> float:
    """Seconds per epoch relative to a one-layer GRU 64. The event encoder and batching cost the same at
    any width, so time grows slower than the recurrent layer's hidden**2; a frozen encoder costs less,
    and a model with ``frozen_share`` of its domains' encoders frozen costs in proportion."""
    frozen = 1.0 - frozen_share * (1.0 - FROZEN_COST) if params.freeze_encoder else 1.0
    return ARCH_COST.get(params.architecture, 1.0) * params.layers * (params.hidden / 64) ** 0.5 * frozen


def expected_seconds(candidate: TrainParams, finished: list[Trial], epochs: int,
                     frozen_share: float = 1.0) -> float:
    """Seconds ``epochs`` epochs of ``candidate`` (``frozen_share`` as in ``relative_cost``) should take,
    judged by the finished trials (those of its architecture when there are any: the prior costs are
    rough, measured ones are not)."""
    timed = [t for t in finished if t.epochs and t.state != "failed"]
    same = [t for t in timed if t.params.architecture == candidate.architecture]
    rates = [t.seconds / t.epochs / relative_cost(t.params, t.frozen_share) for t in same or timed]
    return float(np.median(rates)) * relative_cost(candidate, frozen_share) * epochs if rates else 0.0


def search(train: Mapping[str, Any], y_train: np.ndarray, valid: Mapping[str, Any], y_valid: np.ndarray, *,
           task_type: str, metric: str, classes: list, manifests: Mapping[str, dict], params: TrainParams,
           seed: int = 0, device: str = "auto", queue: list[Candidate] | None = None,
           progress: Callable[..., None] | None = None, trainer: Trainer | None = None,
           on_trial: Callable[[dict[str, Any]], None] | None = None,
           clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Search one domain's encoder within ``params.search_budget_s`` seconds; see the module docstring.

    ``train``/``valid``: {domain: Sequences} as ``training.train_model`` takes them; ``trainer`` defaults
    to ``training.train_model`` (tests pass a fake). ``on_trial(trials_json)`` is called after each trial.
    ``queue``: the candidates to try, the given params first (default ``candidates(params, seed=seed)``;
    a domain with a pretrained encoder passes ``candidates(..., pretrained=...)``, the fusion model
    ``fusion_candidates``). With a budget of 0 only the given params train.
    """
    if trainer is None:
        from anna_models import training

        trainer = training.train_model
    report = progress or (lambda **_: None)
    budget = float(params.search_budget_s)
    if budget <= 0:
        queue = [Candidate(params)]
    elif queue is None:
        queue = candidates(params, seed=seed)
    data = (train, y_train, valid, y_valid)
    options = {"task_type": task_type, "classes": classes, "manifests": manifests, "device": device,
               "seed": seed}
    started = clock()
    trials: list[Trial] = []
    skipped: list[dict[str, Any]] = []
    best: tuple[Trial, Any, list[dict[str, float]]] | None = None
    margin = 0.0
    for candidate in queue:
        trial = Trial(number=len(trials), params=candidate.params, init=candidate.init,
                      frozen_share=candidate.frozen_share)
        if trials:
            left = budget - (clock() - started)
            need = expected_seconds(candidate.params, trials, min(PRUNE_AFTER_EPOCH, params.max_epochs),
                                    candidate.frozen_share)
            if need > left:
                skipped.append({"candidate": trial.label(), "needs_s": round(need, 1),
                                "left_s": round(max(left, 0.0), 1)})
                continue
        deadline = started + budget if trials else float("inf")  # the given params always train to the end
        try:
            model, history = _run_trial(trial, candidate, list(trials), trainer=trainer, metric=metric,
                                        deadline=deadline, clock=clock, report=report, data=data,
                                        options=options)
        except (RuntimeError, ValueError) as error:
            if not trials:
                raise  # the run's own params failed: that is the run's error, as without a search
            # A candidate that cannot train here (e.g. out of GPU memory) costs only itself.
            trial.state, trial.note = "failed", f"{type(error).__name__}: {error}"[:300]
            trials.append(trial)
            report(message=f"trial {trial.number}: {trial.label()} failed: {trial.note}")
            continue
        trials.append(trial)
        value = trial.best(metric)
        if best is None or (value is not None and beats(metric, value, best[0].best(metric), margin)):
            best = (trial, model, history)
        if len(trials) == 1:
            margin = spread(trial.valid_metric)
        if on_trial is not None:
            on_trial(trials_json(trials, metric=metric, budget_s=budget, chosen=best[0].number,
                                 skipped=skipped))
    assert best is not None  # the first candidate always trains
    chosen, model, history = best
    chosen_best = chosen.best(metric)
    # The step's figures end as the chosen trial's (as its row in the report), not the last trial's.
    report(message=f"chose trial {chosen.number}: {chosen.label()} ({metric} {_fmt(chosen_best)}, "
                   f"{len(trials)} trial(s) in {clock() - started:.0f} s)",
           epoch=chosen.epochs, max_epochs=chosen.params.max_epochs, unit="epoch", metric=chosen_best,
           fraction=1.0)
    return SearchResult(model=model, history=history, params=chosen.params, trials=trials,
                        chosen=chosen.number, skipped=skipped)


def _run_trial(trial: Trial, candidate: Candidate, earlier: list[Trial], *, trainer: Trainer, metric: str,
               deadline: float, clock: Callable[[], float], report: Callable[..., None],
               data: tuple, options: dict[str, Any]) -> tuple[Any, list[dict[str, float]]]:
    """Train one candidate, pruned against ``earlier`` and stopped at ``deadline``; fills in ``trial``."""
    title = f"trial {trial.number}: {trial.label()}"

    def stop(history: list[dict[str, float]]) -> bool:
        trial.valid_metric = [_defined(h["valid_metric"]) for h in history]
        if trial.epochs >= candidate.params.max_epochs:
            return False  # finished anyway: neither pruned nor cut by the budget
        if should_prune(metric, trial.valid_metric, [t for t in earlier if same_start(t, trial)]):
            start = "scratch" if trial.init == "scratch" else "pretrained"
            trial.state = "pruned"
            trial.note = f"worse than the earlier {start} trials' median at epoch {trial.epochs}"
            return True
        if clock() >= deadline:
            trial.state = "budget"
            return True
        return False

    report(message=f"{title} ...", epoch=0, metric=None, fraction=0.0)  # not the last trial's figures
    started = clock()
    model, history = trainer(
        *data, metric=metric, params=candidate.params, init=candidate.weights, should_stop=stop,
        progress=lambda **fields: report(message=title, **fields), **options,
    )
    trial.seconds = clock() - started
    trial.valid_metric = [_defined(h["valid_metric"]) for h in history]
    if trial.state == "running":
        trial.state = "completed"
    report(message=f"{title}: {trial.state} after {trial.epochs} epoch(s), best {metric} "
                   f"{_fmt(trial.best(metric))}")
    return model, history


def _defined(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

