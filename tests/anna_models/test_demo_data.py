"""The demo generator: deterministic, well-formed raw data, marts and samples, hidden truth kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anna_models import demo_data
from anna_models.demo_data import DOMAINS, PRODUCTS, SAMPLES, generate_demo
from anna_models.extract import extract_sequences
from anna_models.mart_writer import build_mart
from anna_models.marts import Mart

CLIENTS = 2_000


@pytest.fixture(scope="module")
def small_chunks():
    """Three chunks for 2,000 clients, so chunk boundaries are exercised."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_data, "CLIENTS_PER_CHUNK", 700)
        yield


@pytest.fixture(scope="module")
def demo(tmp_path_factory, small_chunks) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    calls = []
    summary = generate_demo(out, CLIENTS, seed=7, progress=lambda fraction, message: calls.append(fraction))
    assert calls == pytest.approx([1 / 3, 2 / 3, 1.0])
    return out, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(demo, tmp_path, small_chunks):
    out, summary = demo
    generate_demo(tmp_path / "again", CLIENTS, seed=7)
    first, second = _files(out), _files(tmp_path / "again")
    assert first.keys() == second.keys()
    for name in first:
        if name.endswith("manifest.json"):  # the version starts with the time of writing
            a, b = json.loads(first[name]), json.loads(second[name])
            assert a.pop("version")[-6:] == b.pop("version")[-6:] and a == b
        else:
            assert first[name] == second[name], name
    other = generate_demo(tmp_path / "other", CLIENTS, seed=8)
    assert other["events"] != summary["events"]


def test_summary_counts_events_and_names_the_paths(demo):
    out, summary = demo
    assert summary["clients"] == CLIENTS and summary["seed"] == 7
    assert set(summary["events"]) == {spec.name for spec in DOMAINS}
    assert summary["events_total"] == sum(summary["events"].values())
    for spec in DOMAINS:
        assert Mart.open(out / "marts" / spec.name).manifest["n_events"] == summary["events"][spec.name]
    assert Path(summary["paths"]["samples"]) == out / "demo" / "samples"
    json.dumps(summary)  # callers store it as JSON


def test_samples_have_the_documented_columns_dates_and_targets(demo):
    out, _ = demo
    frames = {name: pd.read_csv(out / "demo" / "samples" / f"{name}.csv") for name in SAMPLES}
    first_days = {f"2025-{m:02d}-01" for m in range(1, 13)}
    for name, frame in frames.items():
        assert list(frame.columns) == ["client_id", "report_date", "target"], name
        assert frame["client_id"].dtype == np.int64 and frame["client_id"].is_unique
        assert (
            frame["client_id"].between(demo_data.FIRST_CLIENT_ID, demo_data.FIRST_CLIENT_ID + CLIENTS).all()
        )
        assert set(frame["report_date"]) <= first_days and frame["report_date"].nunique() >= 6
    assert set(frames["default_12m"]["client_id"]).isdisjoint(frames["default_12m_score"]["client_id"])
    for name in ("default_12m", "default_12m_score"):
        assert set(frames[name]["target"]) == {0, 1} and 0.08 < frames[name]["target"].mean() < 0.25
    assert set(frames["product_next"]["target"]) == set(PRODUCTS)
    assert frames["spend_3m"]["target"].dtype == np.float64 and frames["spend_3m"]["target"].std() > 0.5


def test_oracle_scores_each_sample_with_its_hidden_truth(demo):
    out, summary = demo
    oracle = json.loads((out / "demo" / "samples" / "oracle.json").read_text())
    assert oracle == summary["oracle"] and set(oracle) == set(SAMPLES)
    for name in ("default_12m", "default_12m_score"):
        assert oracle[name]["task_type"] == "binary" and 0.75 < oracle[name]["roc_auc"] < 0.92
        assert oracle[name]["pr_auc"] > oracle[name]["positive_rate"]
    assert oracle["product_next"]["accuracy"] > max(oracle["product_next"]["class_share"].values())
    assert 0.6 < oracle["spend_3m"]["r2"] < 0.97
    truth = pd.read_parquet(out / "demo" / "truth" / "default_12m.parquet")
    sample = pd.read_csv(out / "demo" / "samples" / "default_12m.csv")
    pd.testing.assert_frame_equal(truth[list(sample.columns)], sample)


def test_marts_are_sorted_within_the_window_and_cover_most_clients(demo):
    out, _ = demo
    coverage = {}
    for spec in DOMAINS:
        mart = Mart.open(out / "marts" / spec.name)
        key = mart.client_id * 10**10 + mart.event_time
        assert np.all(np.diff(key) >= 0), spec.name
        assert mart.time_min >= np.datetime64("2024-01-01") and mart.time_max < np.datetime64("2026-01-01")
        for name, values in spec.categorical.items():
            feature = mart.features[name]
            assert feature["vocab_size"] == len(values) + 2 and feature["values"][2:] == list(values)
            assert mart.categorical[name].min() >= 2  # the demo knows its vocabularies: no unknowns
        for name in spec.numeric:
            assert mart.features[name]["std"] > 0 and np.isfinite(mart.numeric[name]).all()
        coverage[spec.name] = len(mart.client_ids) / CLIENTS
    assert 0.93 < coverage["card_transactions"] < 1.0
    assert 0.78 < coverage["account_transactions"] < 0.92
    assert 0.65 < coverage["credit_history"] < 0.85
    assert len(Mart.open(out / "marts" / "card_transactions").features["mcc"]["values"]) == 302


def test_card_histories_are_heavy_tailed(demo):
    out, _ = demo
    per_client = np.diff(Mart.open(out / "marts" / "card_transactions").client_start)
    assert 110 < per_client.mean() < 200 and np.median(per_client) < per_client.mean()
    assert per_client.max() > 6 * per_client.mean()


def test_raw_parts_are_readable_and_rebuild_the_same_mart(demo, tmp_path):
    out, _ = demo
    raw_dir = out / "demo" / "raw" / "credit_history"
    parts = sorted(raw_dir.glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    raw = pd.read_parquet(parts[0])
    assert set(raw["overdue_bucket"].astype(str)) <= {"0", "1-30", "31-60", "61-90", "90+"}
    assert "credit_id" in raw.columns
    spec = DOMAINS[2]
    build_mart(
        (pd.read_parquet(p) for p in parts),
        spec.name,
        categorical=list(spec.categorical),
        numeric=spec.numeric,
        out_dir=tmp_path / "rebuilt",
    )
    demo_mart, rebuilt = Mart.open(out / "marts" / spec.name), Mart.open(tmp_path / "rebuilt")
    np.testing.assert_array_equal(demo_mart.client_id, rebuilt.client_id)
    np.testing.assert_array_equal(demo_mart.event_time, rebuilt.event_time)
    for name in spec.categorical:  # codes may differ (frequency order), the values may not
        decode = {m.path: np.asarray(m.features[name]["values"]) for m in (demo_mart, rebuilt)}
        np.testing.assert_array_equal(
            decode[demo_mart.path][demo_mart.categorical[name]],
            decode[rebuilt.path][rebuilt.categorical[name]],
        )


def test_a_default_leaves_marks_only_after_it_happens(demo):
    """Defaults fall after the report date; from then on bureau snapshots are overdue and cards go quiet."""
    out, _ = demo
    truth = pd.read_parquet(out / "demo" / "truth" / "default_12m.parquet")
    dates = pd.to_datetime(truth["report_date"]).to_numpy("datetime64[s]")
    when = truth["default_time"].to_numpy("datetime64[s]")
    positive = truth["target"].to_numpy() == 1
    assert np.isnat(when[~positive]).all() and (when[positive] > dates[positive]).all()
    assert (when[positive] <= dates[positive] + np.timedelta64(366, "D")).all()

    ids, when = truth["client_id"].to_numpy()[positive], when[positive]
    credit = Mart.open(out / "marts" / "credit_history")
    row = np.searchsorted(ids, credit.client_id)
    mine = (row < len(ids)) & (ids[np.minimum(row, len(ids) - 1)] == credit.client_id)
    after = mine & (credit.event_time >= when[np.minimum(row, len(ids) - 1)].view(np.int64))
    assert after.sum() > 20 and (credit.categorical["overdue_bucket"][after] >= 3).all()  # "1-30" or worse

    cards = Mart.open(out / "marts" / "card_transactions")
    end = np.datetime64("2026-01-01", "s")
    soon = when < np.datetime64("2025-10-01")
    before = extract_sequences(cards, ids[soon], when[soon], 10**6).lengths.sum()
    total = extract_sequences(cards, ids[soon], np.full(soon.sum(), end), 10**6).lengths.sum()
    days_before = (when[soon] - np.datetime64("2024-01-01", "s")).astype(float).sum()
    days_after = (end - when[soon]).astype(float).sum()
    assert (total - before) / days_after < 0.5 * before / days_before


def test_every_sample_client_has_events_in_some_mart(demo):
    """Sample validation rejects clients unknown to every mart, so the demo's samples must have none."""
    out, _ = demo
    known = np.unique(np.concatenate([Mart.open(out / "marts" / spec.name).client_ids for spec in DOMAINS]))
    for name in SAMPLES:
        frame = pd.read_csv(out / "demo" / "samples" / f"{name}.csv")
        assert np.isin(frame["client_id"].to_numpy(), known).all(), name
