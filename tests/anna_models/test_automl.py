"""The AutoML search: given params first, bad trials pruned, the budget kept, the best valid trial chosen,
and through the pipeline a searched model that the report, MLflow and scoring all see."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anna_models import automl, search_space
from anna_models.config import RunConfig, StepContext, TrainParams
from anna_models.search_space import Candidate

GOOD = [0.70, 0.75, 0.78, 0.80]
BAD = [0.55, 0.56, 0.57, 0.58]
BEST = [0.72, 0.79, 0.82, 0.83]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTrainer:
    """Trains nothing: each architecture has a fixed valid curve, and every epoch advances the clock by
    ``epoch_s`` times the candidate's relative cost. Asks should_stop after each epoch, as training does."""

    def __init__(self, clock: Clock, curves: dict[str, list[float]], epoch_s: float = 1.0) -> None:
        self.clock, self.curves, self.epoch_s = clock, curves, epoch_s
        self.calls: list[tuple[TrainParams, Any]] = []
        self.epoch_seconds: list[float] = []

    def __call__(self, train: Any, y_train: Any, valid: Any, y_valid: Any, *, params: TrainParams,
                 init: Any, should_stop: Any, **_: Any) -> tuple[Any, list[dict[str, float]]]:
        self.calls.append((params, init))
        history: list[dict[str, float]] = []
        for epoch, value in enumerate(self.curves[params.architecture][: params.max_epochs], start=1):
            seconds = self.epoch_s * automl.relative_cost(params)
            self.clock.now += seconds
            self.epoch_seconds.append(seconds)
            history.append({"epoch": epoch, "valid_metric": value, "seconds": seconds})
            if should_stop(history):
                break
        return (params.architecture, params.hidden, params.layers), history


def run_search(trainer: FakeTrainer, clock: Clock, *, metric: str = "roc_auc", seed: int = 0,
               pretrained: Any = None, progress: Any = None, **params: Any) -> automl.SearchResult:
    given = TrainParams(**{"max_epochs": 4, "search_budget_s": 1000.0, **params})
    # Without a pretrained encoder, search's own default queue (the space in a seeded order).
    queue = None if pretrained is None else search_space.candidates(given, seed=seed, pretrained=pretrained)
    return automl.search({"cards": None}, np.zeros(4), {"cards": None}, np.zeros(4), task_type="binary",
                         metric=metric, classes=[0, 1], manifests={"cards": {}}, params=given, seed=seed,
                         queue=queue, trainer=trainer, clock=clock, progress=progress)


def test_search_prunes_bad_trials_and_chooses_the_best_valid_one() -> None:
    clock = Clock()
    trainer = FakeTrainer(clock, {"gru": GOOD, "lstm": BAD, "transformer": BEST})
    result = run_search(trainer, clock)

    assert len(result.trials) == len(search_space.SEARCH_SPACE)  # the given GRU 64 is in the space once
    assert {t.params.architecture for t in result.trials} == {"gru", "lstm", "transformer"}
    for trial in result.trials:
        if trial.params.architecture == "lstm":
            # Worse than the median of the earlier trials at epoch 2: stopped there.
            assert (trial.state, trial.epochs) == ("pruned", automl.PRUNE_AFTER_EPOCH)
    chosen = result.trials[result.chosen]
    assert chosen.params.architecture == "transformer" and chosen.best("roc_auc") == 0.83
    assert result.params == chosen.params
    assert result.model == (chosen.params.architecture, chosen.params.hidden, chosen.params.layers)
    assert result.history[-1]["valid_metric"] == 0.83

    saved = result.to_json(metric="roc_auc", budget_s=1000.0)
    assert saved["chosen"] == result.chosen
    assert [t["state"] for t in saved["trials"]].count("pruned") >= 3
    assert saved["trials"][0]["params"] == asdict(TrainParams(max_epochs=4, search_budget_s=1000.0))
    json.dumps(saved)  # trials.json must be writable as it is


def test_the_search_ends_its_progress_on_the_chosen_trial_not_on_the_last_one_tried() -> None:
    """`anna train --wait` ends a domain's line on this report; it showed the last pruned trial's figures."""
    clock = Clock()
    reports: list[dict[str, Any]] = []
    result = run_search(FakeTrainer(clock, {"gru": BAD, "lstm": BEST, "transformer": GOOD}), clock,
                        progress=lambda **fields: reports.append(fields), architecture="lstm")
    chosen = result.trials[result.chosen]
    assert result.chosen != result.trials[-1].number and result.trials[-1].epochs < chosen.epochs
    last = reports[-1]
    assert last["message"].startswith(f"chose trial {chosen.number}: lstm 64")
    assert (last["epoch"], last["max_epochs"], last["metric"]) == (4, 4, 0.83)


def test_lower_is_better_metrics_prune_and_choose_the_other_way() -> None:
    clock = Clock()
    rmse = {"gru": [1.0, 0.9, 0.85, 0.8], "lstm": [2.0, 1.9, 1.8, 1.7], "transformer": [0.9, 0.7, 0.6, 0.5]}
    result = run_search(FakeTrainer(clock, rmse), clock, metric="rmse")
    assert result.trials[result.chosen].best("rmse") == 0.5
    assert {t.state for t in result.trials if t.params.architecture == "lstm"} == {"pruned"}


def test_budget_zero_trains_only_the_given_params() -> None:
    clock = Clock()
    trainer = FakeTrainer(clock, {"gru": GOOD, "lstm": BEST, "transformer": BEST})
    result = run_search(trainer, clock, architecture="lstm", hidden=16, search_budget_s=0.0)
    assert [(p.architecture, p.hidden, init) for p, init in trainer.calls] == [("lstm", 16, None)]
    assert [(t.state, t.epochs) for t in result.trials] == [("completed", 4)]
    assert result.skipped == [] and result.params.architecture == "lstm"


def test_the_budget_stops_the_search_within_one_epoch_and_skips_what_cannot_fit() -> None:
    clock = Clock()
    rising = [*GOOD, 0.81, 0.82]
    same = {"gru": rising, "lstm": rising, "transformer": rising}  # nothing is pruned: only the budget stops
    trainer = FakeTrainer(clock, same, epoch_s=10.0)
    result = run_search(trainer, clock, max_epochs=6, search_budget_s=100.0)

    assert result.trials[0].state == "completed"
    assert clock.now <= 100.0 + max(trainer.epoch_seconds)
    assert len(result.trials) >= 2 and result.skipped  # some trials ran, the rest did not fit
    assert result.trials[-1].state == "budget"  # the last one ran into the budget and was stopped there

    # A budget the given params alone exceed: they still train to the end, and nothing else starts.
    clock = Clock()
    trainer = FakeTrainer(clock, same, epoch_s=10.0)
    result = run_search(trainer, clock, max_epochs=6, search_budget_s=5.0)
    assert [(t.state, t.epochs) for t in result.trials] == [("completed", 6)]
    assert len(result.skipped) == len(search_space.SEARCH_SPACE) - 1


def test_a_frozen_candidate_is_judged_by_its_forward_only_cost_when_the_budget_is_short() -> None:
    """A frozen encoder's epoch costs ~0.4 of the same encoder trained whole: the search must not skip it
    as if it needed the full time (the fusion model's frozen start was skipped so on a busy run)."""
    clock = Clock()
    trainer = FakeTrainer(clock, {"gru": [*GOOD, 0.81, 0.82]}, epoch_s=10.0)
    given = TrainParams(max_epochs=6, search_budget_s=75.0)
    frozen = Candidate(replace(given, freeze_encoder=True), init="encoder (frozen)", weights={})
    whole = Candidate(given, init="encoder", weights={})
    result = automl.search({"cards": None}, np.zeros(4), {"cards": None}, np.zeros(4), task_type="binary",
                           metric="roc_auc", classes=[0, 1], manifests={"cards": {}}, params=given,
                           queue=[Candidate(given), whole, frozen], trainer=trainer, clock=clock)

    # 60 s for the given params leaves 15 s: two whole epochs (20 s) do not fit, two frozen ones (8 s) do.
    assert [t.init for t in result.trials] == ["scratch", "encoder (frozen)"]
    assert result.skipped == [{"candidate": "gru 64 from encoder", "needs_s": 20.0, "left_s": 15.0}]
    assert trainer.calls[-1][0].freeze_encoder


def test_a_candidate_that_fails_costs_only_itself_but_the_given_params_failing_fails_the_search() -> None:
    class OutOfMemory(FakeTrainer):
        def __call__(self, *args: Any, params: TrainParams, **kwargs: Any) -> Any:
            if params.architecture == "transformer":
                raise RuntimeError("CUDA out of memory")
            return super().__call__(*args, params=params, **kwargs)

    clock = Clock()
    result = run_search(OutOfMemory(clock, {"gru": GOOD, "lstm": BEST}), clock)
    failed = [t for t in result.trials if t.state == "failed"]
    assert {t.params.architecture for t in failed} == {"transformer"} and "out of memory" in failed[0].note
    assert result.trials[result.chosen].params.architecture == "lstm"

    clock = Clock()
    with pytest.raises(RuntimeError, match="out of memory"):
        run_search(OutOfMemory(clock, {"gru": GOOD}), clock, architecture="transformer")


def test_order_given_then_pretrained_fine_tuned_and_frozen_then_the_space_in_a_seeded_order() -> None:
    from anna_models.pretrain import PretrainedEncoder

    weights = {"events.0.embeddings.0.weight": "pretrained tensor"}
    pretrained = PretrainedEncoder(name="pretrained-cards v1", architecture="lstm", hidden=32, layers=1,
                                   max_len=128, cutoff="2025-01-01", state=weights)
    orders = []
    for seed in (0, 0, 1):
        clock = Clock()
        trainer = FakeTrainer(clock, {"gru": GOOD, "lstm": GOOD, "transformer": GOOD})
        result = run_search(trainer, clock, seed=seed, pretrained=pretrained, architecture="transformer",
                            hidden=32)
        first, second = trainer.calls[:2]
        assert (first[0].architecture, first[0].hidden, first[1]) == ("transformer", 32, None)
        assert (second[0].architecture, second[0].hidden, second[0].max_len, second[1]) == (
            "lstm", 32, 128, weights)
        third = trainer.calls[2]
        assert (third[0].architecture, third[0].freeze_encoder, third[1]) == ("lstm", True, weights)
        assert [t.init for t in result.trials[1:3]] == ["pretrained-cards v1", "pretrained-cards v1 (frozen)"]
        assert not first[0].freeze_encoder and not second[0].freeze_encoder
        orders.append([(p.architecture, p.hidden, p.layers) for p, _ in trainer.calls[3:]])
    assert orders[0] == orders[1] != orders[2]
    assert ("transformer", 32, 1) not in orders[0]  # the given params are not trained twice


def test_a_missing_pretrain_module_or_a_failing_registry_means_no_pretrained_candidate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    messages: list[str] = []
    monkeypatch.setitem(sys.modules, "anna_models.pretrain", None)  # import fails
    assert search_space.find_pretrained_encoder("sqlite:///x.db", "cards", manifest={"version": "v1"},
                                          earliest_report_date="2025-01-01") is None

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("registry down")

    monkeypatch.setitem(sys.modules, "anna_models.pretrain", types.SimpleNamespace(find_pretrained=broken))
    found = search_space.find_pretrained_encoder("http://mlflow:5000", "cards", manifest={"version": "v1"},
                                           earliest_report_date="2025-01-01",
                                           progress=lambda **f: messages.append(f["message"]))
    assert found is None and "registry down" in messages[0]


# ---------------------------------------------------------------- through the pipeline, real training

@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anna_models.demo_data import generate_demo

    data = tmp_path_factory.mktemp("data")
    summary = generate_demo(data, clients=300, seed=5)
    sample = pd.read_csv(data / "demo" / "samples" / "default_12m.csv", parse_dates=["report_date"])
    sample.to_parquet(data / "sample.parquet", index=False)
    (data / "versions.json").write_text(json.dumps(summary["mart_versions"]))
    return data


def test_pipeline_searches_and_the_chosen_model_is_what_report_mlflow_and_scoring_use(
        demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from anna_models import pipeline

    # A small space keeps the test quick; the architectures are what matter here.
    monkeypatch.setattr(search_space, "SEARCH_SPACE", [("transformer", 16, 1), ("lstm", 16, 1)])
    versions = json.loads((demo / "versions.json").read_text())
    domain = sorted(versions)[0]
    events: list = []
    config = RunConfig(
        run_id=3, task_name="automl-test", task_type="binary", metric="roc_auc", domains=[domain],
        sample_path=str(demo / "sample.parquet"), sample_fingerprint="t", marts_root=str(demo / "marts"),
        mart_versions=versions, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        params={"default": {"hidden": 8, "max_epochs": 3, "max_len": 32, "search_budget_s": 300}}, seed=2,
    )
    ctx = StepContext(run_dir=tmp_path / "run", config=config, progress=lambda s, **f: events.append((s, f)))
    uri = pipeline.run_all(ctx)

    models = ctx.run_dir / "models" / domain
    trials = json.loads((models / "trials.json").read_text())
    assert [t["params"]["architecture"] for t in trials["trials"]] == ["gru", "transformer", "lstm"]
    assert all(t["epochs"] >= 1 and t["state"] in ("completed", "pruned") for t in trials["trials"])
    chosen = trials["trials"][trials["chosen"]]
    best = max(t["best_valid_metric"] for t in trials["trials"])
    assert chosen["best_valid_metric"] == best
    # The saved model is the chosen trial's: its params, its shape, its curve.
    assert json.loads((models / "params.json").read_text()) == chosen["params"]
    encoder = json.loads((models / "model.json").read_text())["encoders"][domain]
    assert (encoder["architecture"], encoder["hidden"]) == (chosen["params"]["architecture"],
                                                            chosen["params"]["hidden"])
    history = json.loads((models / "history.json").read_text())
    assert [h["valid_metric"] for h in history] == pytest.approx(chosen["valid_metric"])

    report = json.loads((ctx.run_dir / "report.json").read_text())
    listed = report["domains"][domain]["trials"]
    assert [t["chosen"] for t in listed] == [t["number"] == trials["chosen"] for t in trials["trials"]]
    search = report["domains"][domain]["search"]  # what ``anna report`` tells about the budget
    assert search == {"budget_s": 300, "seconds": trials["seconds"], "skipped": []}
    messages = [f.get("message", "") for s, f in events if s == f"train.{domain}"]
    assert any(m.startswith("trial 2: lstm 16") for m in messages)
    # A trial's start clears the previous trial's epoch and metric from the step's progress line.
    [start] = [f for s, f in events if s == f"train.{domain}" and f.get("message") == "trial 2: lstm 16 ..."]
    assert (start["epoch"], start["metric"]) == (0, None)
    assert any(m.startswith("chose trial") for m in messages)

    # MLflow: one run per trial, nested in the domain's run, which holds the chosen params.
    client = mlflow.MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("automl-test").experiment_id])
    domain_run = next(r for r in runs if r.info.run_name == domain)
    assert domain_run.data.params["architecture"] == chosen["params"]["architecture"]
    trial_runs = sorted((r for r in runs if r.info.run_name.startswith(f"{domain} trial ")),
                        key=lambda r: r.info.run_name)
    assert [r.data.tags["mlflow.parentRunId"] for r in trial_runs] == [domain_run.info.run_id] * 3
    assert [r.data.tags["anna.trial_state"] for r in trial_runs] == [t["state"] for t in trials["trials"]]
    assert [r.data.tags["anna.trial_chosen"] for r in trial_runs].count("True") == 1
    curve = client.get_metric_history(trial_runs[1].info.run_id, "valid_metric")
    assert [m.value for m in curve] == pytest.approx(trials["trials"][1]["valid_metric"])

    # The registered model rebuilds whichever architecture won and scores test rows as the report did.
    split = pd.read_parquet(ctx.run_dir / "split.parquet")
    blended = pd.read_parquet(ctx.run_dir / "blend" / "predictions.parquet")
    test_rows = split.loc[split.part == "test", ["client_id", "report_date"]]
    scored = mlflow.pyfunc.load_model(uri).predict(test_rows)
    np.testing.assert_allclose(scored["score"].to_numpy(),
                               blended.loc[blended.part == "test", "score_0"].to_numpy(), atol=1e-6)


def test_a_registered_pretrained_encoder_is_tried_fine_tuned_and_frozen(
        demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anna_models import pipeline
    from anna_models.coles import ColesParams
    from anna_models.pretrain import log_encoder, pretrain_domain

    monkeypatch.setattr(search_space, "SEARCH_SPACE", [])  # only the run's params and the pretrained encoder
    versions = json.loads((demo / "versions.json").read_text())
    domain = sorted(versions)[0]
    earliest = str(pd.read_parquet(demo / "sample.parquet")["report_date"].min().date())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    coles = ColesParams(hidden=16, epochs=2, clients_per_batch=32, views=2, seed=0)
    encoder, _ = pretrain_domain(demo / "marts" / domain, before=earliest, params=coles)
    log_encoder(encoder, uri)
    config = RunConfig(
        run_id=4, task_name="automl-pretrained", task_type="binary", metric="roc_auc", domains=[domain],
        sample_path=str(demo / "sample.parquet"), sample_fingerprint="t", marts_root=str(demo / "marts"),
        mart_versions=versions, tracking_uri=uri,
        params={"default": {"hidden": 8, "max_epochs": 2, "max_len": 32, "search_budget_s": 300}}, seed=2,
    )
    ctx = StepContext(run_dir=tmp_path / "run", config=config)
    pipeline.validate_split(ctx)
    pipeline.extract(ctx, domain)
    pipeline.train(ctx, domain)

    models = ctx.run_dir / "models" / domain
    trials = json.loads((models / "trials.json").read_text())["trials"]
    name = f"pretrained-{domain} v1"
    assert [t["init"] for t in trials] == ["scratch", name, f"{name} (frozen)"]
    assert [(t["params"]["hidden"], t["params"]["freeze_encoder"]) for t in trials] == [
        (8, False), (16, False), (16, True)]
    chosen = trials[json.loads((models / "trials.json").read_text())["chosen"]]
    assert json.loads((models / "model.json").read_text())["hidden"] == chosen["params"]["hidden"]


def test_a_trial_must_beat_the_given_params_by_more_than_their_epoch_spread() -> None:
    settled = [0.78, 0.80, 0.79, 0.81]  # spread over the last 3 epochs: 0.008
    clock = Clock()
    lucky = FakeTrainer(clock, {"gru": settled, "lstm": [0.70, 0.79, 0.815, 0.814], "transformer": BAD})
    assert run_search(lucky, clock).chosen == 0  # +0.005: within the given params' own noise

    clock = Clock()
    clear = FakeTrainer(clock, {"gru": settled, "lstm": [0.70, 0.80, 0.84, 0.83], "transformer": BAD})
    result = run_search(clear, clock)
    assert result.trials[result.chosen].params.architecture == "lstm"  # +0.03: a real gain


def test_the_margin_runs_in_the_metrics_direction() -> None:
    assert automl.beats("rmse", 0.90, 1.0, margin=0.05) and not automl.beats("rmse", 0.97, 1.0, margin=0.05)
    assert automl.beats("roc_auc", 0.86, 0.80, margin=0.05) and not automl.beats("roc_auc", 0.84, 0.80, 0.05)


# ---------------------------------------------------------------- the fusion model's two candidates

def _encoder(domain: str, architecture: str = "gru", hidden: int = 64, max_len: int = 256) -> Any:
    from anna_models.pretrain import PretrainedEncoder

    state = {"events.0.embeddings.0.weight": f"{domain} events",
             "sequences.0.rnn.weight_hh_l0": f"{domain} rnn", "embed.0.weight": f"{domain} embed"}
    return PretrainedEncoder(name=f"pretrained-{domain} v1", architecture=architecture, hidden=hidden,
                             layers=1, max_len=max_len, cutoff="2025-01-01", state=state)


def test_fusion_starts_from_the_domains_pretrained_encoders_frozen_renumbered_to_its_domains() -> None:
    params = TrainParams(hidden=32, max_len=256, threads=2)
    domains = ["account", "cards", "credit", "other"]
    pretrained = {"account": None, "cards": _encoder("cards"), "credit": _encoder("credit", max_len=128),
                  "other": _encoder("other", architecture="lstm", hidden=32)}
    frozen, given = search_space.fusion_candidates(params, domains, pretrained)
    assert (given.params, given.weights, given.init) == (params, None, "scratch")
    # GRU 64 is the shape of two encoders (a GRU's weights do not depend on max_len); "other" is an LSTM
    # 32, so it trains from scratch in GRU 64, as does "account", which has no encoder.
    shaped = frozen.params
    assert (shaped.architecture, shaped.hidden, shaped.freeze_encoder) == ("gru", 64, True)
    assert shaped.max_len == 256 and shaped.threads == 2
    assert frozen.weights == {  # no embed.*: the fusion model's is wider
        "events.1.embeddings.0.weight": "cards events", "sequences.1.rnn.weight_hh_l0": "cards rnn",
        "events.2.embeddings.0.weight": "credit events", "sequences.2.rnn.weight_hh_l0": "credit rnn"}
    assert frozen.init == "pretrained-cards v1, pretrained-credit v1 (frozen)"
    assert frozen.frozen_share == 0.5  # two of the four domains' encoders
    assert search_space.fusion_candidates(params, domains, {"account": None}) == [Candidate(params)]


def test_a_model_freezing_only_some_domains_is_costed_by_that_share_when_the_budget_is_short() -> None:
    # The given GRU 64 trains 4 epochs of 10 s; 10 s are left. Two epochs of a fully frozen candidate
    # (0.4 of the cost) fit in 8 s; with half its domains frozen they take 14 s, so it is not started.
    given = TrainParams(max_epochs=4, search_budget_s=50.0)
    frozen = replace(given, freeze_encoder=True)
    started = {}
    for share in (1.0, 0.5):
        clock = Clock()
        trainer = FakeTrainer(clock, {"gru": GOOD}, epoch_s=10.0)
        queue = [Candidate(given), Candidate(frozen, init="enc (frozen)", weights={}, frozen_share=share)]
        result = automl.search({"a": None, "b": None}, np.zeros(4), {"a": None, "b": None}, np.zeros(4),
                               task_type="binary", metric="roc_auc", classes=[0, 1],
                               manifests={"a": {}, "b": {}}, params=given, queue=queue, trainer=trainer,
                               clock=clock)
        started[share] = len(result.trials)
        if share < 1:
            skipped = {"candidate": "gru 64 from enc (frozen)", "needs_s": 14.0, "left_s": 10.0}
            assert result.skipped == [skipped]
    assert started == {1.0: 2, 0.5: 1}


def test_a_given_queue_replaces_the_search_space_and_budget_zero_still_trains_only_the_given_params() -> None:
    queue = search_space.fusion_candidates(TrainParams(hidden=32), ["cards", "credit"],
                                     {"cards": _encoder("cards"), "credit": _encoder("credit")})
    frozen, scratch = (64, True, True), (32, False, False)  # (hidden, frozen, started from weights)
    for budget, calls in ((1000.0, [frozen, scratch]), (0.0, [scratch])):
        clock = Clock()
        trainer = FakeTrainer(clock, {"gru": GOOD})
        given = TrainParams(hidden=32, max_epochs=4, search_budget_s=budget)
        result = automl.search({"cards": None, "credit": None}, np.zeros(4), {"cards": None, "credit": None},
                               np.zeros(4), task_type="binary", metric="roc_auc", classes=[0, 1],
                               manifests={"cards": {}, "credit": {}}, queue=queue, trainer=trainer,
                               clock=clock, params=given)
        assert [(p.hidden, p.freeze_encoder, w is not None) for p, w in trainer.calls] == calls
        assert len(result.trials) == len(calls)


def test_the_fusion_model_trains_its_frozen_pretrained_start_even_when_the_scratch_one_would_spend_the_budget(
) -> None:
    # From scratch, 4 epochs take 40 s, past the 30 s budget; the frozen start (0.4 of the cost) takes 16 s
    # and is trained first, so it exists however slow the scratch trial is, which then does not fit.
    params = TrainParams(max_epochs=4, search_budget_s=30.0)
    queue = search_space.fusion_candidates(params, ["cards", "credit"],
                                     {"cards": _encoder("cards"), "credit": _encoder("credit")})
    clock = Clock()
    trainer = FakeTrainer(clock, {"gru": GOOD}, epoch_s=10.0)
    result = automl.search({"cards": None, "credit": None}, np.zeros(4), {"cards": None, "credit": None},
                           np.zeros(4), task_type="binary", metric="roc_auc", classes=[0, 1],
                           manifests={"cards": {}, "credit": {}}, queue=queue, trainer=trainer, clock=clock,
                           params=params)
    assert [t.init for t in result.trials] == ["pretrained-cards v1, pretrained-credit v1 (frozen)"]
    assert result.params.freeze_encoder
    assert result.skipped == [{"candidate": "gru 64", "needs_s": 20.0, "left_s": 14.0}]


def test_the_fusion_step_tries_the_registered_pretrained_encoders_frozen(demo: Path, tmp_path: Path) -> None:
    from anna_models import pipeline
    from anna_models.coles import ColesParams
    from anna_models.pretrain import log_encoder, pretrain_domain

    versions = json.loads((demo / "versions.json").read_text())
    domains = sorted(versions)
    earliest = str(pd.read_parquet(demo / "sample.parquet")["report_date"].min().date())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    coles = ColesParams(hidden=16, epochs=1, clients_per_batch=32, views=2, seed=0)
    encoders = {d: pretrain_domain(demo / "marts" / d, before=earliest, params=coles)[0] for d in domains[:2]}
    for encoder in encoders.values():
        log_encoder(encoder, uri)
    config = RunConfig(
        run_id=5, task_name="fusion-pretrained", task_type="binary", metric="roc_auc", domains=domains,
        sample_path=str(demo / "sample.parquet"), sample_fingerprint="t", marts_root=str(demo / "marts"),
        mart_versions=versions, tracking_uri=uri,
        params={"default": {"hidden": 8, "max_epochs": 2, "max_len": 32, "search_budget_s": 300}}, seed=2,
    )
    ctx = StepContext(run_dir=tmp_path / "run", config=config)
    pipeline.validate_split(ctx)
    for domain in domains:
        pipeline.extract(ctx, domain)
    pipeline.train_fusion(ctx)

    models = ctx.run_dir / "models" / "fusion"
    search = json.loads((models / "trials.json").read_text())
    names = ", ".join(f"pretrained-{d} v1" for d in domains[:2])
    assert [t["init"] for t in search["trials"]] == [f"{names} (frozen)", "scratch"]
    assert [(t["params"]["hidden"], t["params"]["freeze_encoder"]) for t in search["trials"]] == [
        (16, True), (8, False)]
    chosen = search["trials"][search["chosen"]]
    assert json.loads((models / "params.json").read_text()) == chosen["params"]
    saved = json.loads((models / "model.json").read_text())["encoders"]
    assert {d: saved[d]["hidden"] for d in domains} == dict.fromkeys(domains, chosen["params"]["hidden"])
    # On 300 clients the 8-wide scratch model barely learns (valid ROC-AUC ~0.49) and the pretrained start
    # wins (~0.74): the saved model holds the pretrained weights, unchanged.
    assert search["chosen"] == 0
    import torch

    state = torch.load(models / "model.pt", weights_only=True)
    for index, domain in enumerate(domains[:2]):
        for key, value in encoders[domain].state.items():
            if key.startswith(("events.0.", "sequences.0.")):
                assert torch.equal(state[key.replace(".0.", f".{index}.", 1)], value)


def test_a_scratch_trial_is_not_pruned_for_trailing_a_pretrained_start_early() -> None:
    # The frozen pretrained start leads after two epochs (0.79 against 0.60) by its head start; the scratch
    # trial is judged only against other scratch trials, so it trains on, ends ahead and is chosen.
    params = TrainParams(max_epochs=4, search_budget_s=1000.0)
    frozen = Candidate(replace(params, architecture="lstm", freeze_encoder=True), init="enc (frozen)",
                       weights={})
    clock = Clock()
    trainer = FakeTrainer(clock, {"lstm": BEST, "gru": [0.50, 0.60, 0.80, 0.85]})
    result = automl.search({"cards": None}, np.zeros(4), {"cards": None}, np.zeros(4), task_type="binary",
                           metric="roc_auc", classes=[0, 1], manifests={"cards": {}}, params=params,
                           queue=[frozen, Candidate(params)], trainer=trainer, clock=clock)
    assert [(t.init, t.state, t.epochs) for t in result.trials] == [
        ("enc (frozen)", "completed", 4), ("scratch", "completed", 4)]
    assert result.chosen == 1
