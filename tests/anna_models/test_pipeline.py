"""The pipeline on a tiny demo: splits honestly, resumes, registers a model that scores like the report."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anna_models import pipeline
from anna_models.config import RunConfig, StepContext, TrainParams
from anna_models.split import stopping_rows

CLIENTS = 400


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anna_models.demo_data import generate_demo

    data = tmp_path_factory.mktemp("data")
    summary = generate_demo(data, clients=CLIENTS, seed=3)
    sample = pd.read_csv(data / "demo" / "samples" / "default_12m.csv", parse_dates=["report_date"])
    (data / "samples").mkdir()
    sample.to_parquet(data / "samples" / "default.parquet", index=False)
    (data / "mlflow").mkdir()
    (data / "versions.json").write_text(json.dumps(summary["mart_versions"]))
    return data


def make_context(data: Path, run_dir: Path, events: list) -> StepContext:
    versions = json.loads((data / "versions.json").read_text())
    config = RunConfig(
        run_id=7,
        task_name="default-12m",
        task_type="binary",
        metric="roc_auc",
        domains=sorted(versions),
        sample_path=str(data / "samples" / "default.parquet"),
        sample_fingerprint="test",
        marts_root=str(data / "marts"),
        mart_versions=versions,
        tracking_uri=f"sqlite:///{data / 'mlflow' / 'mlflow.db'}",
        params={"default": {"hidden": 8, "max_epochs": 2, "max_len": 64, "search_budget_s": 0}},
        seed=1,
    )
    return StepContext(run_dir=run_dir, config=config, progress=lambda step, **f: events.append((step, f)))


class Spy:
    """Wraps a function and records the arguments of every call."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


def test_pipeline_end_to_end(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from anna_models import blend, boosting, training

    trainer = Spy(training.train_model)  # every model goes through it: each domain's, then the fusion
    monkeypatch.setattr(training, "train_model", trainer)
    booster = Spy(boosting.train_aggregate_model)
    monkeypatch.setattr(boosting, "train_aggregate_model", booster)
    blend_fit = Spy(blend.Blender.fit)
    monkeypatch.setattr(blend.Blender, "fit", lambda self, *a, **k: blend_fit(self, *a, **k))
    events: list = []
    ctx = make_context(demo, tmp_path / "run", events)
    uri = pipeline.run_all(ctx)

    split = pd.read_parquet(ctx.run_dir / "split.parquet")
    counts = split["part"].value_counts()
    report = json.loads((ctx.run_dir / "report.json").read_text())
    assert report["split"]["kind"] == "out_of_time"  # the demo's report dates span 12 months
    assert (
        split.loc[split.part == "test", "report_date"].min()
        > split.loc[split.part == "train", "report_date"].max()
    )
    # Encoders saw train rows only: they fit on most train clients and stop early on the others (the same
    # rows for every model), so no model stopped on, or was chosen on, the valid rows the blender is fit on.
    assert [sorted(args[0]) for args, _ in trainer.calls] == [[d] for d in ctx.config.domains] + [
        sorted(ctx.config.domains)
    ]
    train_rows = split[split.part == "train"]
    stop = stopping_rows(train_rows["client_id"].to_numpy(), TrainParams().stopping_share, ctx.config.seed)
    assert 0 < stop.sum() < len(stop)
    for args, _ in trainer.calls:
        fit_seqs, y_fit, stop_seqs, y_stop = args
        assert {s.n_rows for s in fit_seqs.values()} == {(~stop).sum()}
        assert {s.n_rows for s in stop_seqs.values()} == {stop.sum()}
        np.testing.assert_array_equal(y_fit, train_rows["y"].to_numpy()[~stop])
        np.testing.assert_array_equal(y_stop, train_rows["y"].to_numpy()[stop])
    for name in [*ctx.config.domains, "fusion"]:
        trials = json.loads((ctx.run_dir / "models" / name / "trials.json").read_text())
        assert trials["stopping"] == {"on": "train", "rows": int(stop.sum()), "share": 0.15}
    assert [len(args[3]) for args, _ in blend_fit.calls] == [counts["valid"]]
    # LightGBM on the aggregates fits train rows only (it stops early on some of them, not on valid).
    assert [len(args[1]) for args, _ in booster.calls] == [counts["train"]]
    assert {s.n_rows for s in booster.calls[0][0][0].values()} == {counts["train"]}

    # Every model and the blend on the leaderboard, best valid first; the blender says what it chose.
    names = [*ctx.config.domains, "fusion", "lightgbm"]
    board = report["leaderboard"]
    assert sorted(r["model"] for r in board) == sorted([*names, "blend"])
    assert [r["valid"] for r in board] == sorted((r["valid"] for r in board), reverse=True)
    lightgbm = report["lightgbm"]
    row = next(r for r in board if r["model"] == "lightgbm")
    assert row["test"] == lightgbm["test"]["metrics"]["roc_auc"] and row["kind"] == "lightgbm"
    assert lightgbm["test"]["rows"] == counts["test"] and lightgbm["epochs"] >= 1 and lightgbm["top_features"]
    # The domains' models are offered to the blender only when one of them beats the fusion model on valid.
    valid = {r["model"]: r["valid"] for r in board}
    offered = names if max(valid[d] for d in ctx.config.domains) > valid["fusion"] else ["fusion", "lightgbm"]
    choice = report["blender"]["choice"]
    assert set(choice["cv"]) == {"blend", *offered} and report["blender"]["domains"] == offered
    assert (choice["kind"], choice["inputs"]) == ("blend", offered) or (
        choice["kind"] == "single" and len(choice["inputs"]) == 1)
    calibration = report["blend"]["test"]["calibration"]
    assert 0 <= calibration["ece"] < 0.2 and sum(b["rows"] for b in calibration["bins"]) == counts["test"]

    assert set(report["blend"]["test"]["metrics"]) == {"roc_auc", "pr_auc", "log_loss", "accuracy", "f1"}
    assert (
        0 < len(report["blend"]["test"]["roc"]["fpr"]) <= 200 and len(report["blend"]["test"]["lift"]) == 10
    )
    assert sum(p["rows"] for p in report["split"]["parts"].values()) == len(split)
    for domain in ctx.config.domains:
        assert report["domains"][domain]["test"]["rows"] == counts["test"]
    assert any(f.get("metric_name") == "roc_auc" for step, f in events if step.startswith("train."))
    # Each progress report says what its epoch counts: LightGBM's boosting rounds, the encoders' epochs.
    units = {(step.split(".")[0], f.get("unit")) for step, f in events if f.get("epoch")}
    assert ("train", "epoch") in units
    assert all(unit == ("round" if step == "train_lightgbm" else "epoch") for step, unit in units), units
    # A step's figures end as those of the model it keeps, not of the last trial or the last 50 rounds.
    last = {step: f for step, f in events if f.get("epoch")}
    for domain in ctx.config.domains:
        [chosen] = [t for t in report["domains"][domain]["trials"] if t["chosen"]]
        assert last[f"train.{domain}"]["epoch"] == chosen["epochs"]
        assert last[f"train.{domain}"]["metric"] == pytest.approx(chosen["best_valid_metric"])
    assert last["train_lightgbm"]["epoch"] == report["lightgbm"]["epochs"]
    # The same as plots for people who would rather look: PNG files, logged to MLflow beside the report.
    assert report["plots"] == ["leaderboard.png", "learning_curves.png", "roc_pr.png", "lift.png",
                               "calibration.png"]
    for name in report["plots"]:
        image = (ctx.run_dir / "plots" / name).read_bytes()
        assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 10_000, name

    # The registered model, loaded the MLflow way, scores test rows exactly as the evaluate step did.
    registered = json.loads((ctx.run_dir / "registered.json").read_text())
    assert uri == registered["model_uri"] == "models:/default-12m/1"
    logged = mlflow.MlflowClient(ctx.config.tracking_uri).list_artifacts(registered["mlflow_run_id"], "plots")
    assert sorted(a.path for a in logged) == sorted(f"plots/{name}" for name in report["plots"])
    test_rows = split[split.part == "test"]
    blended = pd.read_parquet(ctx.run_dir / "blend" / "predictions.parquet")
    expected = blended.loc[blended.part == "test", "score_0"].to_numpy()
    moved = tmp_path / "moved-marts"  # marts may live elsewhere at serving time: ANNA_MARTS_ROOT wins
    shutil.copytree(demo / "marts", moved)
    monkeypatch.setenv("ANNA_MARTS_ROOT", str(moved))
    scored = mlflow.pyfunc.load_model(uri).predict(test_rows[["client_id", "report_date"]])
    assert list(scored.columns) == ["client_id", "report_date", "score"]
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, atol=1e-6)

    # Resume: finished steps are skipped, removed markers re-run, outputs stay the same.
    model_file = ctx.run_dir / "models" / ctx.config.domains[0] / "model.pt"
    stamp = model_file.stat().st_mtime_ns
    for name in ("blend", "evaluate"):
        pipeline.marker_path(ctx.run_dir, name).unlink()
    events.clear()
    assert pipeline.run_all(ctx) == uri
    assert len(trainer.calls) == len(ctx.config.domains) + 1 and len(blend_fit.calls) == 2
    assert model_file.stat().st_mtime_ns == stamp
    assert ("register", {"state": "done", "message": "already done"}) in events
    again = json.loads((ctx.run_dir / "report.json").read_text())
    assert again["blend"]["test"]["metrics"] == report["blend"]["test"]["metrics"]
    assert sorted(p.name for p in (ctx.run_dir / "steps").iterdir()) == sorted(
        f"{name}.done.json" for name in pipeline.step_names(ctx.config.domains)
    )

    # A crash after MLflow registered the model but before the marker was written: the re-run finds the
    # version that attempt registered instead of registering a second one.
    pipeline.marker_path(ctx.run_dir, "register").unlink()
    assert pipeline.register(ctx) == uri
    versions = mlflow.MlflowClient(ctx.config.tracking_uri).search_model_versions("name='default-12m'")
    assert [str(v.version) for v in versions] == ["1"]

    # Every ensemble a serving process loads shares one opened copy of each mart.
    from anna_models.pyfunc import load_ensemble

    first, second = load_ensemble(ctx.run_dir / "package"), load_ensemble(ctx.run_dir / "package")
    domain = ctx.config.domains[0]
    assert first._mart(moved, domain) is second._mart(moved, domain)


def test_split_rules() -> None:
    rng = np.random.default_rng(0)
    months = pd.to_datetime("2025-01-01") + pd.to_timedelta(rng.integers(0, 3, 1000) * 31, unit="D")
    clients = np.arange(1000) % 700  # some clients have two report dates
    sample = pd.DataFrame({"client_id": clients, "report_date": months, "target": rng.random(1000) < 0.2})
    parts, info = pipeline.split_sample(sample, "binary", seed=0)
    assert info["kind"] == "stratified_random"
    shares = pd.Series(parts).value_counts(normalize=True)
    assert abs(shares["train"] - 0.70) < 0.02 and abs(shares["valid"] - 0.15) < 0.02
    for part in ("train", "valid", "test"):
        assert abs(sample["target"][parts == part].mean() - sample["target"].mean()) < 0.02
    again, _ = pipeline.split_sample(sample, "binary", seed=0)
    assert np.array_equal(parts, again)
    same_stratum = sample.assign(part=parts).groupby(["client_id", "target"])["part"].nunique()
    assert (same_stratum == 1).all()  # a client's rows never straddle train and test

    days = pd.to_timedelta(rng.integers(0, 365, 1000), unit="D")
    yearly = pd.DataFrame({"client_id": np.arange(1000), "report_date": pd.to_datetime("2024-01-01") + days})
    yearly["target"] = rng.normal(size=1000)
    parts, info = pipeline.split_sample(yearly, "regression", seed=0)
    assert info["kind"] == "out_of_time"
    month = yearly["report_date"].dt.month
    assert set(month[parts == "test"]) == {11, 12} and set(month[parts == "valid"]) == {9, 10}


@pytest.mark.parametrize(
    ("sample", "task_type", "metric"),
    [("product_next", "multiclass", "log_loss"), ("spend_3m", "regression", "rmse")],
)
def test_multiclass_and_regression_runs_score_through_the_packaged_ensemble(
    demo: Path, tmp_path: Path, sample: str, task_type: str, metric: str
) -> None:
    from dataclasses import replace

    from anna_models.pyfunc import load_ensemble, package_ensemble

    frame = pd.read_csv(demo / "demo" / "samples" / f"{sample}.csv", parse_dates=["report_date"])
    frame.to_parquet(tmp_path / "sample.parquet", index=False)
    ctx = make_context(demo, tmp_path / "run", [])
    ctx.config = replace(
        ctx.config,
        task_type=task_type,
        metric=metric,
        sample_path=str(tmp_path / "sample.parquet"),
        params={"default": {"hidden": 8, "max_epochs": 1, "max_len": 32}},
    )
    for step in pipeline.PRE:
        step(ctx)
    for domain in ctx.config.domains:
        for step in pipeline.PER_DOMAIN:
            step(ctx, domain)
    for step in pipeline.POST[:-1]:  # all but register
        step(ctx)
    report = json.loads((ctx.run_dir / "report.json").read_text())
    assert report["metric"] == metric and metric in report["blend"]["test"]["metrics"]
    # No ROC or lift without a positive class; calibration where there are probabilities.
    drawn = {"multiclass": ["calibration.png", "confusion.png"], "regression": ["deciles.png"]}[task_type]
    assert report["plots"] == ["leaderboard.png", "learning_curves.png", *drawn]
    assert all((ctx.run_dir / "plots" / name).stat().st_size > 10_000 for name in report["plots"])
    spec = {
        "task_type": task_type,
        "classes": report["classes"],
        "domains": ctx.config.domains,
        "models": pipeline.model_names(ctx.config.domains),
        "max_len": {d: 32 for d in ctx.config.domains},
        "marts_root": str(demo / "marts"),
    }
    ensemble = load_ensemble(package_ensemble(ctx.run_dir, tmp_path / "package", ensemble=spec))
    split = pd.read_parquet(ctx.run_dir / "split.parquet")
    test = split[split.part == "test"]
    scored = ensemble.score_frame(test[["client_id", "report_date"]])
    # Scoring runs only the models the blender reads (the others are packaged for the report).
    outputs, _ = ensemble.domain_outputs(test["client_id"].to_numpy(), test["report_date"].to_numpy())
    assert sorted(outputs) == sorted(ensemble.blender.inputs)
    blended = pd.read_parquet(ctx.run_dir / "blend" / "predictions.parquet")
    expected = blended.loc[
        blended.part == "test", [c for c in blended.columns if c.startswith("score_")]
    ].to_numpy()
    if task_type == "multiclass":
        probs = scored[[f"prob_{c}" for c in report["classes"]]].to_numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        assert set(scored["score"]) <= set(report["classes"])
        assert report["blend"]["test"]["confusion"] and len(report["blend"]["test"]["confusion"]) == len(
            probs[0]
        )
    else:
        np.testing.assert_allclose(scored["score"].to_numpy(), expected[:, 0], rtol=1e-6)
