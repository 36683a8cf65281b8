"""The cdnow benchmark's sample rules (datasets/cdnow/README.md) on a tiny raw file: who gets a row, the
90-day target window, that no purchase at or after the report date becomes a feature, and the split."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cdnow  # noqa: E402  (importable without the peers: they load only when they run)
import cdnow_data as data  # noqa: E402

# 1997-07-01 + 90 days = 1997-09-29 and 1997-10-01 + 90 days = 1997-12-30: both window ends are exclusive.
RAW = """\
 customer_id  date number_of_cds  dollar_value
 00001 19970301  1   10.00
 00001 19970701  3   30.00
 00001 19970928  2   20.00
 00002 19970701  1   15.00
 00002 19971230  4   40.00
 00003 19980101  1   12.00
 00004 19970105  2   25.00
 00005 19970210  1    9.00
 00005 19970929  1   11.00
 00005 19971229  1   13.00
 00005 19980331  2   22.00
"""


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(RAW)
    return path


def _rows(sample: pd.DataFrame) -> dict[tuple[int, str], int]:
    return {(int(r.client_id), str(r.report_date.date())): int(r.target) for r in sample.itertuples()}


def test_read_raw_skips_a_header_and_reads_ids_dates_and_amounts(raw: Path, tmp_path: Path) -> None:
    events = data.read_raw(raw)
    assert len(events) == 11
    assert events["client_id"].tolist()[:4] == [1, 1, 1, 2]
    assert events["event_time"].iloc[0] == pd.Timestamp("1997-03-01")
    assert events["dollar_value"].iloc[1] == pytest.approx(30.0)
    headless = tmp_path / "headless.txt"
    headless.write_text(RAW.split("\n", 1)[1])
    pd.testing.assert_frame_equal(data.read_raw(headless), events)


def test_sample_keeps_clients_with_a_purchase_strictly_before_and_a_90_day_target_window(raw: Path) -> None:
    sample = data.build_sample(data.read_raw(raw))
    assert _rows(sample) == {
        # a purchase on the report date is target, not history; 09-28 is day 89 of the window
        (1, "1997-07-01"): 1, (1, "1997-10-01"): 0, (1, "1998-01-01"): 0,
        # first purchase on 1997-07-01 itself: no row then; 1997-12-30 is day 90, outside the window
        (2, "1997-10-01"): 0, (2, "1998-01-01"): 0,
        # client 3 bought first on 1998-01-01: no row at all
        (4, "1997-07-01"): 0, (4, "1997-10-01"): 0, (4, "1998-01-01"): 0,
        # 09-29 is day 90 of the first window (out), day 0 before the second; 1998-03-31 is day 89
        (5, "1997-07-01"): 0, (5, "1997-10-01"): 1, (5, "1998-01-01"): 1,
    }


def test_features_use_only_purchases_strictly_before_the_report_date(raw: Path) -> None:
    events = data.read_raw(raw)
    sample = data.build_sample(events)
    features = data.aggregates(events, sample).set_index(
        pd.MultiIndex.from_frame(sample[["client_id", "report_date"]].astype({"report_date": str})))
    client1 = features.loc[(1, "1997-07-01")]
    assert client1["n_purchases"] == 1 and client1["dollars_sum"] == pytest.approx(10.0)
    assert client1["recency_days"] == 122 and client1["tenure_days"] == 122  # 1997-03-01 → 07-01
    assert client1["n_90d"] == 0 and client1["n_180d"] == 1
    client5 = features.loc[(5, "1998-01-01")]
    assert client5["n_purchases"] == 3 and client5["recency_days"] == 3  # 1997-12-29 counts, 1998-03-31 not
    assert client5["n_30d"] == 1 and client5["dollars_90d"] == pytest.approx(13.0)  # 09-29 is 94 days back
    assert client5["dollars_180d"] == pytest.approx(24.0)

    ordered, start, end = data.histories(events, sample)
    for i, row in enumerate(sample.itertuples()):
        kept = ordered.iloc[start[i]:end[i]]
        assert (kept["client_id"] == row.client_id).all() and (kept["event_time"] < row.report_date).all()
        assert len(kept) == features["n_purchases"].iloc[i]

    rfm = data.rfm_summary(events, data.TEST_DATE)
    assert 3 not in rfm.index  # bought first on the report date
    assert rfm.loc[5].tolist() == [2.0, 322.0, 325.0]  # repeat days, first → last, first → report date


def test_annas_mart_extracts_the_same_point_in_time_histories(raw: Path, tmp_path: Path) -> None:
    from anna_models.extract import extract_sequences
    from anna_models.marts import Mart

    events = data.read_raw(raw)
    sample = data.build_sample(events)
    manifest = data.build_purchases_mart(events, tmp_path / "marts" / data.DOMAIN)
    assert set(manifest["features"]) == {"weekday", "number_of_cds", "dollar_value"}
    mart = Mart.open(tmp_path / "marts" / data.DOMAIN)
    seqs = extract_sequences(mart, sample["client_id"].to_numpy(), sample["report_date"].to_numpy(), 256)
    _, start, end = data.histories(events, sample)
    np.testing.assert_array_equal(seqs.lengths, end - start)
    assert (seqs.lengths > 0).all()  # every sample row has history


def test_split_tests_on_1998_and_annas_split_agrees(raw: Path) -> None:
    from anna_models.split import prepare_split

    sample = data.build_sample(data.read_raw(raw))
    part = data.benchmark_part(sample)
    assert (sample.loc[part == "test", "report_date"] == data.TEST_DATE).all()
    train_dates = set(sample.loc[part == "train", "report_date"].dt.strftime("%Y-%m-%d"))
    assert train_dates == {"1997-07-01", "1997-10-01"}

    split, info = prepare_split(sample, "binary", seed=0)
    assert info["kind"] == "out_of_time_test"  # two earlier quarters: valid is random clients of both
    np.testing.assert_array_equal(split["part"].to_numpy() == "test", part == "test")
    both = {pd.Timestamp("1997-07-01"), pd.Timestamp("1997-10-01")}
    assert set(split.loc[split["part"] == "valid", "report_date"]) == both
    assert set(split.loc[split["part"] == "train", "report_date"]) == both


def test_validation_clients_are_train_rows_with_all_of_a_clients_rows() -> None:
    clients = np.arange(100).repeat(3)
    dates = np.tile(np.array(data.REPORT_DATES, dtype="datetime64[s]"), 100)
    sample = pd.DataFrame({"client_id": clients, "report_date": dates, "target": 0})
    held = data.validation_clients(sample, 0.2, seed=1)
    assert not held[data.benchmark_part(sample) == "test"].any()
    assert held.sum() == 40  # 20 clients × their 2 train rows
    by_client = pd.Series(held).groupby(clients).sum()
    assert set(by_client) == {0, 2}
    np.testing.assert_array_equal(held, data.validation_clients(sample, 0.2, seed=1))


def test_benchmark_module_imports_without_the_peers_or_torch() -> None:
    import subprocess

    heavy = "{'lightgbm', 'lifetimes', 'ptls', 'pytorch_lightning', 'torch'}"
    code = f"import sys; sys.path.insert(0, 'bench'); import cdnow; print(sorted({heavy} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert cdnow.PEERS == ("anna", "lightgbm", "lightgbm_anna_parts", "bgnbd", "ptls")


def test_ceiling_history_features_use_only_purchase_days_strictly_before_the_report_date(raw: Path) -> None:
    import cdnow_ceiling

    events = data.read_raw(raw)
    sample = data.build_sample(events)
    features = cdnow_ceiling.history_features(events, sample)
    assert len(features) == len(sample)
    at = features.set_index(pd.MultiIndex.from_frame(sample[["client_id", "report_date"]].astype(
        {"report_date": str})))
    client5 = at.loc[(5, "1998-01-01")]  # purchase days 02-10, 09-29, 12-29 before; 1998-03-31 after
    assert client5[["age_0", "age_1", "age_2"]].tolist() == [3.0, 94.0, 325.0]
    assert np.isnan(client5["age_3"]) and client5["dollars_0"] == pytest.approx(13.0)
    assert client5["first_dollars"] == pytest.approx(9.0) and client5["first_day_of_year"] == 41
    assert client5[["days_60d", "days_120d", "days_270d"]].tolist() == [1.0, 2.0, 2.0]
    client1 = at.loc[(1, "1997-07-01")]  # the purchase on the report date itself is target, not history
    assert client1["age_0"] == 122 and np.isnan(client1["age_1"]) and client1["days_270d"] == 1
    # Changing every purchase at or after a row's report date leaves that row's features as they were.
    for row in sample.itertuples():
        late = events.copy()
        after = (late["client_id"] == row.client_id) & (late["event_time"] >= row.report_date)
        late.loc[after, "dollar_value"] += 1000.0
        late.loc[after, "event_time"] += pd.Timedelta(days=1)
        again = cdnow_ceiling.history_features(late, sample.iloc[[row.Index]].reset_index(drop=True))
        pd.testing.assert_frame_equal(again, features.iloc[[row.Index]].reset_index(drop=True))
