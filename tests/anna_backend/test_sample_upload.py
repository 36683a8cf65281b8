"""Sample uploads: a rejection is a 422 naming row and column and stores nothing; valid ones are kept once."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from backend_fakes import Api, MakeTask, csv_bytes, sample_frame, upload

from anna_backend.service_layer.ports import Backend

pytestmark = pytest.mark.all_databases


def with_cell(row: int, column: str, value: Any, frame: pd.DataFrame | None = None) -> bytes:
    """A valid sample with data row ``row`` (1-based) set to ``value`` in ``column``."""
    frame = (sample_frame() if frame is None else frame).astype(str)
    frame.loc[row - 1, column] = str(value)
    return csv_bytes(frame)


def duplicate_of_row_2_at_row_7() -> bytes:
    frame = sample_frame()
    frame.loc[6, "client_id"] = frame.loc[1, "client_id"]
    return csv_bytes(frame)


REJECTIONS: dict[str, tuple[bytes, str, int | None, str | None, str]] = {
    # name: (content, filename, row, column, a piece of the message)
    "empty file": (b"", "s.csv", None, None, "empty"),
    "header only": (b"client_id,report_date,target\n", "s.csv", None, None, "no data rows"),
    "missing column": (
        csv_bytes(sample_frame().rename(columns={"target": "y"})),
        "s.csv",
        None,
        "target",
        "'y'",
    ),
    "client id not an integer": (with_cell(5, "client_id", "abc"), "s.csv", 5, "client_id", "'abc'"),
    "unparsable report date": (
        with_cell(3, "report_date", "31.01.2024"),
        "s.csv",
        3,
        "report_date",
        "'31.01.2024'",
    ),
    "duplicate client and date": (duplicate_of_row_2_at_row_7(), "s.csv", 7, "report_date", "row 2"),
    "binary target not 0/1": (with_cell(4, "target", 2), "s.csv", 4, "target", "0 or 1"),
    "missing target": (with_cell(9, "target", ""), "s.csv", 9, "target", "missing"),
    "too few rows": (csv_bytes(sample_frame(n=10, positives=5)), "s.csv", None, None, "at least 20"),
    "too few positives": (csv_bytes(sample_frame(positives=2)), "s.csv", None, "target", "positive"),
    "date before every mart": (
        with_cell(6, "report_date", "2019-01-01"),
        "s.csv",
        6,
        "report_date",
        "coverage",
    ),
    "date after every mart": (
        with_cell(6, "report_date", "2025-01-03"),
        "s.csv",
        6,
        "report_date",
        "coverage",
    ),
    "client unknown to every mart": (with_cell(8, "client_id", 9999), "s.csv", 8, "client_id", "unknown"),
    "not a sample file type": (csv_bytes(sample_frame()), "s.txt", None, None, ".csv or .parquet"),
    "broken parquet": (b"PAR1 this is not parquet", "s.parquet", None, None, "Parquet"),
    "ragged csv": (
        b"client_id,report_date,target\n1,2024-06-01,1\n2,2024-06-01,0,7\n",
        "s.csv",
        2,
        None,
        "CSV",
    ),
}


def stored_files(backend: Backend) -> list[Path]:
    folder = backend.settings.samples_dir
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejection_names_row_and_column_and_stores_nothing(
    case: str, make_task: MakeTask, api: Api, analyst: dict[str, str], backend: Backend
) -> None:
    content, filename, row, column, words = REJECTIONS[case]
    make_task("churn")
    answer = upload(api, analyst, "churn", content, filename)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    matching = [d for d in detail if d["row"] == row and d["column"] == column]
    assert matching, detail
    assert words in matching[0]["msg"], matching[0]
    assert api.client.get("/tasks/churn/samples", headers=analyst).json() == []
    assert stored_files(backend) == []


def test_every_problem_is_listed_up_to_twenty_plus_a_summary(
    make_task: MakeTask, api: Api, analyst: dict[str, str]
) -> None:
    make_task("churn")
    frame = sample_frame().astype(str)
    frame["client_id"] = "x"
    detail = upload(api, analyst, "churn", csv_bytes(frame)).json()["detail"]
    assert len(detail) == 21
    assert [d["row"] for d in detail[:20]] == list(range(1, 21))
    assert detail[-1]["row"] is None and "20 more" in detail[-1]["msg"]


@pytest.mark.parametrize(
    ("task_type", "target", "words"),
    [
        ("multiclass", ["a"] * 40, "at least 2 classes"),
        ("regression", ["1.5"] * 39 + ["inf"], "finite number"),
        ("regression", ["1.5"] * 39 + ["lots"], "'lots'"),
    ],
)
def test_targets_must_fit_the_task_type(
    task_type: str, target: list[str], words: str, make_task: MakeTask, api: Api, analyst: dict[str, str]
) -> None:
    make_task("typed", task_type=task_type)
    frame = sample_frame().astype(str)
    frame["target"] = target
    detail = upload(api, analyst, "typed", csv_bytes(frame)).json()["detail"]
    assert any(d["column"] == "target" and words in d["msg"] for d in detail), detail


def test_valid_sample_is_stored_normalised_once(
    make_task: MakeTask, api: Api, analyst: dict[str, str], backend: Backend
) -> None:
    make_task("churn")
    frame = sample_frame(n=30, positives=6)
    answer = upload(api, analyst, "churn", csv_bytes(frame), "my sample.csv")
    assert answer.status_code == 201, answer.text
    sample = answer.json()
    assert sample["n_rows"] == 30 and sample["n_clients"] == 30 and sample["filename"] == "my sample.csv"
    assert sample["report_date_min"] == sample["report_date_max"] == "2024-06-01"
    assert sample["target_summary"] == {"positives": 6, "negatives": 24, "positive_rate": 0.2}

    files = stored_files(backend)
    assert [f.name for f in files] == [f"{sample['fingerprint']}.parquet"]
    stored = pd.read_parquet(files[0])
    assert list(stored.columns) == ["client_id", "report_date", "target"]
    assert stored["client_id"].is_monotonic_increasing and str(stored["client_id"].dtype) == "int64"
    assert stored["target"].sum() == 6

    # The same rows in another order, as Parquet: the same content, so the same sample.
    shuffled = frame.sample(frac=1, random_state=0)
    shuffled["report_date"] = pd.to_datetime(shuffled["report_date"])
    buffer = io.BytesIO()
    shuffled.to_parquet(buffer, index=False)
    again = upload(api, analyst, "churn", buffer.getvalue(), "again.parquet")
    assert again.status_code == 201, again.text
    assert again.json()["id"] == sample["id"] and again.json()["fingerprint"] == sample["fingerprint"]
    assert len(api.client.get("/tasks/churn/samples", headers=analyst).json()) == 1
    assert len(stored_files(backend)) == 1


def test_a_client_and_date_covered_by_one_selected_mart_is_enough(
    make_task: MakeTask, api: Api, analyst: dict[str, str]
) -> None:
    make_task("both", domains=["cards", "accounts"])
    frame = sample_frame(n=30, first_client=160)  # 160..189: known to both marts
    frame.loc[0, "client_id"] = 250  # only in accounts
    frame.loc[0, "report_date"] = "2023-08-01"  # only accounts covers it
    frame.loc[1, "report_date"] = "2025-01-01"  # cards' last day + 1
    answer = upload(api, analyst, "both", csv_bytes(frame))
    assert answer.status_code == 201, answer.text


def test_messy_but_readable_values_are_accepted(
    make_task: MakeTask, api: Api, analyst: dict[str, str]
) -> None:
    make_task("churn")
    text = "Client_ID , report_date,target\n" + "".join(
        f" {i}.0 ,2024-06-01T00:00:00,{'1.0' if i <= 5 else '0'}\n" for i in range(1, 31)
    )
    answer = upload(api, analyst, "churn", text.encode())
    assert answer.status_code == 201, answer.text
    assert answer.json()["target_summary"]["positives"] == 5


def test_approver_cannot_upload(make_task: MakeTask, api: Api) -> None:
    make_task("churn")
    approver = api.user("bob", "approver")
    assert upload(api, approver, "churn", csv_bytes(sample_frame())).status_code == 403
