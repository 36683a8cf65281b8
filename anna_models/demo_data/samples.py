"""Labelled samples drawn from the hidden traits, their hidden truth, and what the truth alone scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anna_models.demo_data.card import expected_log_spend_3m
from anna_models.demo_data.clients import Clients, default_logit, product_logits, sigmoid
from anna_models.demo_data.window import DAY, NEVER, month_of, month_start

SAMPLES = ("default_12m", "default_12m_score", "product_next", "spend_3m")
PRODUCTS = ("none", "card", "deposit", "loan")


def _report_months(rng: np.random.Generator, c: Clients) -> np.ndarray:
    """A report month 0..11 (2025-01 .. 2025-12) per client, at least three months after the client joined."""
    earliest = np.clip(month_of(c.start) - 12 + 3, 0, 11)
    return earliest + (rng.random(len(c)) * (12 - earliest)).astype(np.int64)


def draw_samples(rng: np.random.Generator, c: Clients) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """The chunk's sample rows (with hidden truth), and per client when a drawn default happens (or NEVER)."""
    n = len(c)
    rows: dict[str, pd.DataFrame] = {}
    logit = default_logit(c)
    defaulted = rng.random(n) < sigmoid(logit)
    month = _report_months(rng, c)
    in_train = rng.random(n) < 0.75
    default_at = np.where(defaulted, month_start(12 + month) + rng.integers(1, 365, n) * DAY, NEVER)
    default_time = np.where(defaulted, default_at, np.iinfo(np.int64).min).view("datetime64[s]")  # NaT: none
    for name, member in (("default_12m", in_train), ("default_12m_score", ~in_train)):
        rows[name] = pd.DataFrame(
            {
                "client_id": c.client_id[member],
                "report_month": month[member],
                "target": defaulted[member].astype(np.int64),
                "truth": logit[member],
                "default_time": default_time[member],
            }
        )

    logits = product_logits(c)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    product = (rng.random(n)[:, None] > np.cumsum(probs, 1)[:, :3]).sum(1)
    member, month = rng.random(n) < 0.6, _report_months(rng, c)
    rows["product_next"] = pd.DataFrame(
        {
            "client_id": c.client_id[member],
            "report_month": month[member],
            "target": np.asarray(PRODUCTS)[product[member]],
        }
    )
    for i, name in enumerate(PRODUCTS):
        rows["product_next"][f"truth_{name}"] = probs[member, i]

    mean = expected_log_spend_3m(c)
    spend = mean + rng.normal(0.0, 0.45, n)
    member, month = (rng.random(n) < 0.6) & c.has_card, _report_months(rng, c)
    rows["spend_3m"] = pd.DataFrame(
        {
            "client_id": c.client_id[member],
            "report_month": month[member],
            "target": spend[member].round(4),
            "truth": mean[member],
        }
    )
    return rows, default_at


def write_samples(demo_dir: Path, samples: dict[str, list[pd.DataFrame]]) -> dict[str, Any]:
    """Write each sample's CSV, its hidden truth and oracle.json; return the oracle scores."""
    (demo_dir / "samples").mkdir(parents=True, exist_ok=True)
    (demo_dir / "truth").mkdir(parents=True, exist_ok=True)
    oracle = {}
    for name, parts in samples.items():
        frame = pd.concat(parts, ignore_index=True)
        dates = month_start(12 + frame.pop("report_month").to_numpy()).view("datetime64[s]")
        frame.insert(1, "report_date", np.datetime_as_string(dates, unit="D"))
        sample = frame[["client_id", "report_date", "target"]]
        sample.to_csv(demo_dir / "samples" / f"{name}.csv", index=False)
        frame.to_parquet(demo_dir / "truth" / f"{name}.parquet", index=False)
        oracle[name] = oracle_scores(frame)
    (demo_dir / "samples" / "oracle.json").write_text(json.dumps(oracle, indent=2) + "\n")
    return oracle


def oracle_scores(frame: pd.DataFrame) -> dict[str, Any]:
    """What the hidden truth alone scores on a sample (``target`` plus ``truth`` or ``truth_<class>``)."""
    from sklearn import metrics

    y = frame["target"].to_numpy()
    if "truth" not in frame:  # multiclass: one probability column per class
        probs = frame[[f"truth_{p}" for p in PRODUCTS]].to_numpy()
        labels = pd.Categorical(y, categories=PRODUCTS).codes
        return {
            "task_type": "multiclass",
            "rows": len(y),
            "classes": list(PRODUCTS),
            "class_share": {p: round(float((labels == i).mean()), 4) for i, p in enumerate(PRODUCTS)},
            "accuracy": float((probs.argmax(1) == labels).mean()),
            "log_loss": float(metrics.log_loss(labels, probs, labels=range(len(PRODUCTS)))),
            "roc_auc_ovr": float(metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")),
        }
    truth = frame["truth"].to_numpy()
    if y.dtype.kind == "f":
        return {
            "task_type": "regression",
            "rows": len(y),
            "target_mean": float(y.mean()),
            "target_std": float(y.std()),
            "rmse": float(np.sqrt(np.mean((y - truth) ** 2))),
            "mae": float(np.mean(np.abs(y - truth))),
            "r2": float(metrics.r2_score(y, truth)),
        }
    return {
        "task_type": "binary",
        "rows": len(y),
        "positive_rate": float(y.mean()),
        "roc_auc": float(metrics.roc_auc_score(y, truth)),
        "pr_auc": float(metrics.average_precision_score(y, truth)),
        "log_loss": float(metrics.log_loss(y, sigmoid(truth))),
    }
