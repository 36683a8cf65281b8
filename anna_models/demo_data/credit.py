"""Credit bureau snapshots: monthly states of each credit, where discipline shows as overdues."""

from __future__ import annotations

import numpy as np

from anna_models.demo_data.clients import Clients, sigmoid
from anna_models.demo_data.events import DomainSpec, Events
from anna_models.demo_data.window import DAY, WINDOW_MONTHS, month_start

_CREDIT_TYPES = ("consumer_loan", "credit_card", "mortgage", "car_loan", "microloan", "overdraft")
_REVOLVING = np.array([False, True, False, False, False, True])
_TERMS = np.array(
    [[12, 24, 36, 60], [0, 0, 0, 0], [120, 180, 240, 300], [36, 48, 60, 60], [1, 2, 3, 6], [0, 0, 0, 0]]
)
_TYPE_RISK = np.array([0.0, 0.2, -0.8, -0.3, 1.0, 0.3])
_LOG_LIMIT = np.array([12.3, 11.5, 15.0, 13.5, 9.8, 10.8])
_STATUSES = ("active", "closed", "sold", "written_off")
_OVERDUE = ("0", "1-30", "31-60", "61-90", "90+")


def _credit_events(rng: np.random.Generator, c: Clients, default_at: np.ndarray) -> Events:
    """Monthly bureau snapshots of each credit while it is open, dated at midnight."""
    n_credits = c.has_credit * (
        1 + np.minimum(rng.poisson(np.exp(0.5 + 0.25 * c.affluence + 0.3 * c.stress)), 7)
    )
    holder = np.repeat(np.arange(len(c)), n_credits)
    k = len(holder)
    first_of_client = np.r_[True, holder[1:] != holder[:-1]] if k else np.zeros(0, bool)
    a, s = c.affluence[holder], c.stress[holder]
    logits = np.stack(
        [
            0.8 * np.ones(k),
            0.9 + 0.3 * a,
            -1.0 + 0.8 * a,
            -0.6 + 0.5 * a,
            -1.6 + 0.9 * s + 0.5 * c.impulsive[holder] - 0.5 * a,
            -0.6 + 0.2 * s,
        ],
        axis=1,
    )
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    kind = (rng.random(k)[:, None] > np.cumsum(probs, 1)[:, :5]).sum(1)
    term = _TERMS[kind, rng.integers(0, 4, k)]
    length = np.where(_REVOLVING[kind], rng.integers(12, 120, k), term)
    # A borrower's first credit is always seen in 2024 (before any report date), so "has credit" is visible.
    opened = np.where(
        first_of_client, np.maximum(rng.integers(-12, 9, k), 1 - length), rng.integers(-48, 23, k)
    )
    early = (rng.random(k) < 0.3) & ~first_of_client
    closed = opened + np.where(early, 1 + (rng.random(k) * length).astype(np.int64), length)
    first, last = np.maximum(opened, 0), np.minimum(closed, WINDOW_MONTHS - 1)
    n_snap = np.maximum(last - first + 1, 0)

    credit = np.repeat(np.arange(k), n_snap)
    month = first[credit] + np.arange(len(credit)) - np.repeat(np.cumsum(n_snap) - n_snap, n_snap)
    event_time = month_start(month) + rng.integers(0, 28, k)[credit] * DAY  # bureau dates are midnights
    owner = holder[credit]
    p_miss = sigmoid((-2.2 - 2.1 * c.discipline + 0.2 * c.stress)[owner] + _TYPE_RISK[kind[credit]])
    missed = (rng.random(len(credit)) < p_miss) | (event_time >= default_at[owner])
    # Consecutive missed months grow the overdue bucket: 1-30, 31-60, 61-90, then 90+.
    idx = np.arange(len(credit))
    credit_start = np.r_[True, credit[1:] != credit[:-1]] if len(credit) else np.zeros(0, bool)
    last_paid = np.maximum.accumulate(np.where(~missed, idx, np.where(credit_start, idx - 1, -1)))
    run = np.where(missed, idx - last_paid, 0)
    status = np.where(month == closed[credit], 1, 0)
    status = np.where(run >= 6, np.where(rng.random(k)[credit] < 0.5, 2, 3), status)

    # Good payers get higher limits, keep card usage low and repay installments ahead of schedule.
    d = c.discipline[owner]
    limit = np.exp(_LOG_LIMIT[kind] + 0.5 * a + 0.25 * c.discipline[holder] + 0.35 * rng.standard_normal(k))
    limit = np.round(limit, -3)[credit]
    elapsed = (month - opened[credit]) / np.maximum(term[credit], 1)
    usage = sigmoid(-0.6 + 0.5 * c.stress[owner] - 0.9 * d + 0.8 * rng.standard_normal(len(credit)))
    pace = np.exp(0.2 * d + 0.1 * rng.standard_normal(len(credit)))
    share = np.where(_REVOLVING[kind[credit]], usage, np.clip(1 - elapsed * pace, 0, 1)) * (1 + 0.03 * run)
    outstanding = np.where(status == 1, 0.0, np.round(limit * share, 2))
    order = np.lexsort((credit, event_time, owner))
    return Events(
        c.client_id[owner[order]],
        event_time[order],
        {
            "credit_type": kind[credit][order].astype(np.int32),
            "status": status[order].astype(np.int32),
            "overdue_bucket": np.minimum(run, 4)[order].astype(np.int32),
            "credit_limit": limit[order].astype(np.float32),
            "outstanding": outstanding[order].astype(np.float32),
            "term_months": term[credit][order].astype(np.float32),
            "credit_id": (
                c.client_id[owner] * 100
                + credit
                - np.repeat(np.cumsum(n_credits) - n_credits, n_credits)[credit]
            )[order],
        },
    )


CREDIT = DomainSpec(
    "credit_history",
    {"credit_type": _CREDIT_TYPES, "status": _STATUSES, "overdue_bucket": _OVERDUE},
    {"credit_limit": "signed_log1p", "outstanding": "signed_log1p", "term_months": "none"},
    _credit_events,
    raw_only=("credit_id",),
    default_max_len=128,
)
