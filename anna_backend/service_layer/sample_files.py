"""Reading and validating sample files (CSV or Parquet of client_id, report_date, target).

Every problem names the 1-based data row (header excluded) and the column, so an analyst can fix the file.
Validation happens entirely in memory; nothing is stored unless the whole file passes.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from anna_backend.domain.errors import InvalidInput

COLUMNS = ("client_id", "report_date", "target")
_INT_TEXT = re.compile(r"[+-]?\d{1,18}(\.0*)?")
_LINE_IN_ERROR = re.compile(r"line (\d+)")

Problem = dict[str, Any]


def _problem(row: int | None, column: str | None, msg: str) -> Problem:
    return {"row": row, "column": column, "msg": msg}


@dataclass(frozen=True)
class MartCoverage:
    """What one selected mart can serve: its time range and its clients."""

    name: str
    time_min: np.datetime64  # datetime64[s] or NaT for an empty mart
    time_max: np.datetime64
    client_ids: np.ndarray  # sorted unique int64


@dataclass(frozen=True)
class SampleRules:
    task_type: str
    min_rows: int
    min_positives: int
    marts: Sequence[MartCoverage]


@dataclass
class ValidSample:
    """A sample that passed: normalised, sorted by (client_id, report_date), with its fingerprint."""

    frame: pd.DataFrame
    fingerprint: str
    n_rows: int
    n_clients: int
    report_date_min: pd.Timestamp
    report_date_max: pd.Timestamp
    target_summary: dict[str, Any]


# ------------------------------------------------------------------------------------------------ reading


def read_table(content: bytes, filename: str) -> pd.DataFrame:
    """The file as a frame with stripped lower-case column names; CSV cells stay text."""
    suffix = filename.lower().rsplit(".", 1)[-1] if "." in filename else ""
    if not content.strip():
        raise InvalidInput.rows([_problem(None, None, "the file is empty")])
    if suffix == "csv":
        frame = _read_csv(content)
    elif suffix in ("parquet", "pq"):
        try:
            frame = pd.read_parquet(io.BytesIO(content))
        except Exception as error:  # pyarrow raises several unrelated types for a broken file
            raise InvalidInput.rows([_problem(None, None, f"not a readable Parquet file: {error}")]) from None
    else:
        raise InvalidInput.rows([_problem(None, None, f"unsupported file type {filename!r}: upload a .csv or "
                                                      ".parquet file")])
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if frame.empty:
        raise InvalidInput.rows([_problem(None, None, "the file has a header but no data rows")])
    return frame.reset_index(drop=True)


def _read_csv(content: bytes) -> pd.DataFrame:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInput.rows([_problem(None, None, f"the file is not UTF-8 text: {error}")]) from None
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InvalidInput.rows([_problem(None, None, "the file is empty")]) from None
    except pd.errors.ParserError as error:
        found = _LINE_IN_ERROR.search(str(error))
        row = int(found.group(1)) - 1 if found else None  # the header is line 1
        raise InvalidInput.rows([_problem(row, None, f"not a well-formed CSV file: {error}")]) from None


def check_columns(frame: pd.DataFrame, required: Sequence[str]) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = ", ".join(repr(c) for c in frame.columns)
        names = ", ".join(repr(c) for c in missing)
        raise InvalidInput.rows([_problem(None, missing[0], f"missing column(s) {names}; found: {found}")])


# ------------------------------------------------------------------------------------------------ parsing


def _is_blank(values: pd.Series) -> np.ndarray:
    blank = values.isna().to_numpy(dtype=bool, copy=True)
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        blank |= values.astype(str).str.strip().eq("").to_numpy()
    return blank


def parse_client_id(values: pd.Series, problems: list[Problem]) -> np.ndarray:
    """int64 ids; bad rows get 0 and a problem."""
    out = np.zeros(len(values), np.int64)
    blank = _is_blank(values)
    if pd.api.types.is_integer_dtype(values.dtype) and not blank.any():
        return values.to_numpy(np.int64)
    if pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(np.float64)
        ok = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (np.abs(numbers) < 2**62)
    else:
        text = values.astype(str).str.strip()
        ok = text.str.fullmatch(_INT_TEXT.pattern).to_numpy(bool) & ~blank
        numbers = np.where(ok, pd.to_numeric(text.where(ok, "0"), errors="coerce").fillna(0), 0)
    out[ok] = numbers[ok].astype(np.int64)
    for i in np.flatnonzero(~ok):
        msg = "client_id is missing" if blank[i] else f"client_id must be an integer, got {values.iloc[i]!r}"
        problems.append(_problem(int(i) + 1, "client_id", msg))
    return out


def parse_report_date(values: pd.Series, problems: list[Problem]) -> np.ndarray:
    """datetime64[s] (naive UTC); bad rows get NaT and a problem."""
    blank = _is_blank(values)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        stamps = pd.to_datetime(values, utc=True)
    else:
        text = values.astype(str).str.strip()
        stamps = pd.to_datetime(text.where(~blank, None), errors="coerce", format="ISO8601", utc=True)
    stamps = stamps.dt.tz_convert(None)
    ok = stamps.notna().to_numpy()
    out = np.full(len(values), np.datetime64("NaT"), "datetime64[s]")
    out[ok] = stamps[ok].to_numpy().astype("datetime64[s]")
    for i in np.flatnonzero(~ok):
        msg = ("report_date is missing" if blank[i]
               else f"report_date must be an ISO date (YYYY-MM-DD), got {values.iloc[i]!r}")
        problems.append(_problem(int(i) + 1, "report_date", msg))
    return out


def parse_target(values: pd.Series, task_type: str, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray]:
    """Typed targets and the mask of rows that parsed: 0/1 int64, labels (int64 or str), or float64."""
    blank = _is_blank(values)
    if task_type == "multiclass":
        text = values.astype(str).str.strip()
        ok = ~blank
        integral = text[ok].str.fullmatch(_INT_TEXT.pattern).all()
        labels = (pd.to_numeric(text.where(ok, "0")).astype(np.int64).to_numpy() if integral
                  else text.to_numpy(dtype=object))
        bad_msg = ""
    else:
        numbers = pd.to_numeric(values.where(~blank, None), errors="coerce").to_numpy(
            np.float64, na_value=np.nan)
        if task_type == "binary":
            ok = (numbers == 0) | (numbers == 1)
            labels = np.where(ok, numbers, 0).astype(np.int64)
            bad_msg = "target must be 0 or 1 for a binary task, got {!r}"
        else:
            ok = np.isfinite(numbers)
            labels = numbers
            bad_msg = "target must be a finite number for a regression task, got {!r}"
    for i in np.flatnonzero(~ok):
        msg = "target is missing" if blank[i] else bad_msg.format(values.iloc[i])
        problems.append(_problem(int(i) + 1, "target", msg))
    return labels, ok


def duplicate_problems(client_id: np.ndarray, report_date: np.ndarray, usable: np.ndarray) -> list[Problem]:
    """Every repeat of a (client_id, report_date) pair, naming the row it repeats."""
    keys = pd.DataFrame({"client_id": client_id, "report_date": report_date,
                         "row": np.arange(1, len(client_id) + 1)})
    keys = keys[usable]
    first_row = keys.groupby(["client_id", "report_date"], sort=False)["row"].transform("min")
    repeats = keys[keys["row"] != first_row]
    return [
        _problem(int(r.row), "report_date",
                 f"duplicate (client_id, report_date) = ({r.client_id}, {_day(r.report_date)}): "
                 f"same as row {int(first)}")
        for r, first in zip(repeats.itertuples(), first_row[repeats.index], strict=True)
    ]


def _day(value: Any) -> str:
    stamp = pd.Timestamp(value)
    return stamp.strftime("%Y-%m-%d") if stamp == stamp.normalize() else stamp.isoformat()


# ---------------------------------------------------------------------------------------------- validating


def validate_sample(content: bytes, filename: str, rules: SampleRules) -> ValidSample:
    """The normalised sample, or ``InvalidInput`` listing every problem (row and column named)."""
    raw = read_table(content, filename)
    check_columns(raw, COLUMNS)
    row_problems: list[Problem] = []
    client_id = parse_client_id(raw["client_id"], row_problems)
    report_date = parse_report_date(raw["report_date"], row_problems)
    target, target_ok = parse_target(raw["target"], rules.task_type, row_problems)
    usable = ~np.isin(np.arange(1, len(raw) + 1), [p["row"] for p in row_problems if p["column"] != "target"])
    row_problems += duplicate_problems(client_id, report_date, usable)

    general: list[Problem] = []
    if len(raw) < rules.min_rows:
        general.append(_problem(None, None, f"the sample has {len(raw)} rows; at least {rules.min_rows} are "
                                            "needed to train and evaluate a model"))
    general += _target_problems(rules, target[target_ok])
    row_problems += _coverage_problems(rules.marts, client_id, report_date, usable)

    problems = general + sorted(row_problems, key=lambda p: (p["row"], COLUMNS.index(p["column"])))
    if problems:
        raise InvalidInput.rows(problems)
    frame = pd.DataFrame({"client_id": client_id, "report_date": report_date, "target": target})
    return _normalised(frame, rules.task_type)


def _target_problems(rules: SampleRules, target: np.ndarray) -> list[Problem]:
    if rules.task_type == "binary":
        positives, negatives = int((target == 1).sum()), int((target == 0).sum())
        problems = []
        if positives < rules.min_positives:
            problems.append(_problem(None, "target", f"the sample has {positives} positive targets (1); at "
                                                     f"least {rules.min_positives} are needed"))
        if negatives == 0 and len(target):
            problems.append(_problem(None, "target", "the sample has no negative targets (0); a binary task "
                                                     "needs both classes"))
        return problems
    if rules.task_type == "multiclass":
        classes = pd.unique(target)
        if len(classes) < 2:
            return [_problem(None, "target", f"a multiclass task needs at least 2 classes; found "
                                             f"{len(classes)}: {[str(c) for c in classes]}")]
    return []


def _coverage_problems(marts: Sequence[MartCoverage], client_id: np.ndarray, report_date: np.ndarray,
                       usable: np.ndarray) -> list[Problem]:
    if not marts:
        return []
    one_day = np.timedelta64(1, "D")
    covered = np.zeros(len(client_id), bool)
    known = np.zeros(len(client_id), bool)
    for mart in marts:
        if not np.isnat(mart.time_min):
            covered |= (report_date >= mart.time_min) & (report_date <= mart.time_max + one_day)
        known |= np.isin(client_id, mart.client_ids)
    ranges = "; ".join(f"{m.name}: {_day(m.time_min) if not np.isnat(m.time_min) else 'empty'}"
                       f" – {_day(m.time_max) if not np.isnat(m.time_max) else 'empty'}" for m in marts)
    names = ", ".join(m.name for m in marts)
    problems = [
        _problem(int(i) + 1, "report_date", f"report date {_day(report_date[i])} is outside every selected "
                                            f"mart's coverage ({ranges})")
        for i in np.flatnonzero(usable & ~covered)
    ]
    problems += [
        _problem(int(i) + 1, "client_id",
                 f"client {client_id[i]} is unknown to every selected mart ({names})")
        for i in np.flatnonzero(usable & ~known)
    ]
    return problems


def _normalised(frame: pd.DataFrame, task_type: str) -> ValidSample:
    frame = frame.sort_values(["client_id", "report_date"], kind="stable").reset_index(drop=True)
    if task_type == "regression":
        frame["target"] = frame["target"].astype(np.float64)
    dates = pd.Series(frame["report_date"])
    canonical = ("client_id,report_date,target\n" + (
        frame["client_id"].astype(str) + "," + dates.dt.strftime("%Y-%m-%dT%H:%M:%S") + ","
        + frame["target"].map(repr if task_type == "regression" else str)
    ).str.cat(sep="\n")).encode()
    return ValidSample(
        frame=frame,
        fingerprint=hashlib.sha256(canonical).hexdigest(),
        n_rows=len(frame),
        n_clients=int(frame["client_id"].nunique()),
        report_date_min=pd.Timestamp(dates.min()),
        report_date_max=pd.Timestamp(dates.max()),
        target_summary=target_summary(frame["target"], task_type),
    )


def target_summary(target: pd.Series, task_type: str) -> dict[str, Any]:
    if task_type == "binary":
        positives = int((target == 1).sum())
        return {"positives": positives, "negatives": int(len(target) - positives),
                "positive_rate": round(positives / max(len(target), 1), 6)}
    if task_type == "multiclass":
        counts = target.astype(str).value_counts().sort_index()
        return {"n_classes": int(len(counts)), "classes": {str(k): int(v) for k, v in counts.items()}}
    values = target.astype(np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=0)), "min": float(values.min()),
            "max": float(values.max())}


def parse_scoring_rows(content: bytes, filename: str, task_type: str) -> pd.DataFrame:
    """Rows to score: client_id, report_date and, when the file has one, target; in file order."""
    raw = read_table(content, filename)
    check_columns(raw, COLUMNS[:2])
    problems: list[Problem] = []
    frame = pd.DataFrame({"client_id": parse_client_id(raw["client_id"], problems),
                          "report_date": parse_report_date(raw["report_date"], problems)})
    if "target" in raw.columns:
        frame["target"], _ = parse_target(raw["target"], task_type, problems)
    if problems:
        raise InvalidInput.rows(sorted(problems, key=lambda p: (p["row"], COLUMNS.index(p["column"]))))
    return frame
