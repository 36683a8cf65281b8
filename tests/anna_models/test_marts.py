"""Marts: sorted parts, manifests with vocabularies and statistics, raw frames turned into codes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from anna_models.mart_writer import MartWriter, build_mart
from anna_models.marts import Mart, read_manifest, signed_log1p


def _seconds(*stamps: str) -> np.ndarray:
    return np.array(stamps, dtype="datetime64[s]")


def _write_two_parts(path):
    writer = MartWriter(
        path, "cards", categorical={"mcc": ["5411", "5812"]}, numeric={"amount": "signed_log1p"}
    )
    writer.append(
        np.array([1, 1, 2]),
        _seconds("2024-01-01T10:00", "2024-01-02", "2024-03-01"),
        {"mcc": np.array([2, 3, 1]), "amount": np.array([100.0, -5.0, 0.0])},
    )
    writer.append(
        np.array([5, 7]),
        _seconds("2023-12-31T23:59:59", "2025-06-01"),
        {"mcc": np.array([3, 3]), "amount": np.array([1e6, 20.0])},
    )
    return writer.close()


def test_signed_log1p_keeps_sign_and_tames_magnitude():
    np.testing.assert_allclose(
        signed_log1p(np.array([-np.e + 1, 0.0, np.e - 1])), [-1.0, 0.0, 1.0], rtol=1e-6
    )


def test_writer_manifest_carries_counts_range_vocab_and_statistics(tmp_path):
    manifest = _write_two_parts(tmp_path / "cards")
    assert (
        manifest == read_manifest(tmp_path / "cards") == read_manifest(tmp_path / "cards" / "manifest.json")
    )
    assert (manifest["n_events"], manifest["n_clients"], manifest["default_max_len"]) == (5, 4, 256)
    assert (manifest["time_min"], manifest["time_max"]) == ("2023-12-31T23:59:59", "2025-06-01T00:00:00")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ-[0-9a-f]{6}", manifest["version"])
    mcc = manifest["features"]["mcc"]
    assert mcc == {"kind": "categorical", "vocab_size": 4, "values": ["<pad>", "<unk>", "5411", "5812"]}
    transformed = signed_log1p(np.array([100.0, -5.0, 0.0, 1e6, 20.0]))
    amount = manifest["features"]["amount"]
    assert amount["transform"] == "signed_log1p"
    assert amount["mean"] == pytest.approx(transformed.mean(), rel=1e-6)
    assert amount["std"] == pytest.approx(transformed.std(), rel=1e-6)


def test_opened_mart_is_globally_sorted_and_indexes_clients(tmp_path):
    _write_two_parts(tmp_path / "cards")
    mart = Mart.open(tmp_path / "cards")
    assert sorted(p.name for p in (tmp_path / "cards").iterdir()) == [
        "events-00000.parquet",
        "events-00001.parquet",
        "manifest.json",
    ]
    key = list(zip(mart.client_id, mart.event_time, strict=True))
    assert key == sorted(key)
    np.testing.assert_array_equal(mart.client_ids, [1, 2, 5, 7])
    np.testing.assert_array_equal(mart.client_start, [0, 2, 3, 4, 5])
    assert mart.categorical["mcc"].dtype == np.int32 and mart.numeric["amount"].dtype == np.float32
    assert mart.time_min == np.datetime64("2023-12-31T23:59:59")
    assert set(mart.features) == {"mcc", "amount"}
    normalised = mart.normalised("amount")
    assert normalised.mean() == pytest.approx(0.0, abs=1e-6) and normalised.std() == pytest.approx(
        1.0, rel=1e-5
    )


def test_writer_refuses_unsorted_rows_overlapping_parts_and_bad_codes(tmp_path):
    writer = MartWriter(tmp_path / "m", "m", categorical={"c": ["a"]}, numeric={})
    with pytest.raises(ValueError, match="sorted"):
        writer.append(np.array([1, 1]), _seconds("2024-02-01", "2024-01-01"), {"c": np.array([2, 2])})
    with pytest.raises(ValueError, match="sorted"):
        writer.append(np.array([2, 1]), _seconds("2024-01-01", "2024-01-01"), {"c": np.array([2, 2])})
    with pytest.raises(ValueError, match="codes"):
        writer.append(np.array([1]), _seconds("2024-01-01"), {"c": np.array([3])})
    writer.append(np.array([3]), _seconds("2024-01-01"), {"c": np.array([2])})
    with pytest.raises(ValueError, match="not after"):
        writer.append(np.array([3]), _seconds("2024-05-01"), {"c": np.array([2])})
    with pytest.raises(ValueError, match="transform"):
        MartWriter(tmp_path / "x", "x", categorical={}, numeric={"v": "log"})


def test_rewriting_a_mart_leaves_no_stale_parts(tmp_path):
    _write_two_parts(tmp_path / "cards")
    writer = MartWriter(tmp_path / "cards", "cards", categorical={"mcc": ["5411"]}, numeric={})
    writer.append(np.array([9]), _seconds("2024-01-01"), {"mcc": np.array([2])})
    writer.close()
    assert sorted(p.name for p in (tmp_path / "cards").iterdir()) == ["events-00000.parquet", "manifest.json"]
    assert Mart.open(tmp_path / "cards").manifest["n_events"] == 1
    assert not list(tmp_path.glob(".cards*"))


def test_build_mart_encodes_by_frequency_and_sorts_rows_across_frames(tmp_path):
    first = pd.DataFrame(
        {
            "client_id": [20, 10, 10, 30],
            "event_time": pd.to_datetime(
                ["2024-05-01", "2024-03-01 12:00", "2024-02-01", "2024-01-01"], format="ISO8601"
            ),
            "mcc": ["5411", "5812", "5411", None],
            "channel": [1.0, 2.0, 2.0, np.nan],
            "amount": [10.0, np.nan, 30.0, -4.0],
        }
    )
    second = pd.DataFrame(
        {
            "client_id": [10, 20],
            "event_time": ["2024-01-15", "2024-01-01T00:00:00"],
            "mcc": ["7995", "5411"],
            "channel": [3, 2],
            "amount": [5.0, 6.0],
        }
    )
    manifest = build_mart(
        [first, second],
        "cards",
        categorical=["mcc", "channel"],
        numeric={"amount": "none"},
        out_dir=tmp_path / "cards",
        min_count=2,
        clients_per_part=2,
    )
    assert manifest["features"]["mcc"]["values"] == ["<pad>", "<unk>", "5411"]  # 5812, 7995 seen once
    assert manifest["features"]["channel"]["values"] == ["<pad>", "<unk>", "2"]
    assert manifest["features"]["amount"]["mean"] == pytest.approx(np.mean([10, 30, -4, 5, 6]))
    assert len(list((tmp_path / "cards").glob("events-*.parquet"))) == 2

    mart = Mart.open(tmp_path / "cards")
    np.testing.assert_array_equal(mart.client_id, [10, 10, 10, 20, 20, 30])
    np.testing.assert_array_equal(
        mart.event_time.view("datetime64[s]"),
        _seconds("2024-01-15", "2024-02-01", "2024-03-01T12:00", "2024-01-01", "2024-05-01", "2024-01-01"),
    )
    np.testing.assert_array_equal(mart.categorical["mcc"], [1, 2, 1, 2, 2, 1])  # rare and missing -> <unk>
    np.testing.assert_array_equal(mart.categorical["channel"], [1, 2, 2, 2, 1, 1])
    assert np.isnan(mart.numeric["amount"][2]) and mart.normalised("amount")[2] == 0.0  # missing -> mean


def test_build_mart_accepts_categorical_and_timezone_aware_columns(tmp_path):
    frame = pd.DataFrame(
        {
            "client_id": [1, 1],
            "event_time": pd.to_datetime(["2024-01-01 03:00", "2024-01-01 01:00"]).tz_localize(
                "Europe/Moscow"
            ),
            "op": pd.Categorical(["in", "out"]),
        }
    )
    build_mart(frame, "acc", categorical=["op"], numeric={}, out_dir=tmp_path / "acc")
    mart = Mart.open(tmp_path / "acc")
    np.testing.assert_array_equal(
        mart.event_time.view("datetime64[s]"), _seconds("2023-12-31T22:00", "2024-01-01T00:00")
    )
    values = mart.features["op"]["values"]
    assert [values[c] for c in mart.categorical["op"]] == ["out", "in"]


def test_an_empty_mart_opens_with_no_events(tmp_path):
    manifest = MartWriter(tmp_path / "e", "e", categorical={"c": ["a"]}, numeric={"v": "none"}).close()
    assert manifest["n_events"] == 0 and manifest["time_min"] is None
    mart = Mart.open(tmp_path / "e")
    assert len(mart.client_ids) == 0 and len(mart.categorical["c"]) == 0


def test_a_mart_missing_part_files_refuses_to_open_rather_than_look_empty(tmp_path):
    _write_two_parts(tmp_path / "cards")
    parts = sorted((tmp_path / "cards").glob("events-*.parquet"))
    assert len(parts) == 2
    parts[1].unlink()
    with pytest.raises(ValueError, match="lists 5 events but its 1 part file"):
        Mart.open(tmp_path / "cards")
    parts[0].unlink()
    with pytest.raises(FileNotFoundError, match="lists 5 events but no events-"):
        Mart.open(tmp_path / "cards")
