"""Synthetic bank data for the demo: three event domains driven by hidden client traits, and labelled samples.

Each client has hidden traits (affluence, stress, discipline, impulsiveness, digital and saving habits).
Targets are drawn from the traits alone; the traits show in the events noisily and mostly in different
domains (impulsiveness in card spending, stress in account flows, discipline in bureau overdues), so a model
must read all three domains to approach the oracle. Clients are generated in fixed-size chunks, each from
its own ``PCG64((seed, chunk))`` stream, and each chunk goes straight to the raw Parquet parts and the marts:
memory stays flat however many clients are asked for, and the output depends only on ``(clients, seed)``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anna_models.marts import MartWriter

CLIENTS_PER_CHUNK = 10_000
FIRST_CLIENT_ID = 100_001
DAY, HOUR = 86_400, 3_600
WINDOW_START = int(np.datetime64("2024-01-01", "s").view(np.int64))
WINDOW_MONTHS = 24  # history: 2024-01-01 .. 2025-12-31
NEVER = np.iinfo(np.int64).max
SAMPLES = ("default_12m", "default_12m_score", "product_next", "spend_3m")
PRODUCTS = ("none", "card", "deposit", "loan")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def month_start(month: np.ndarray | int) -> np.ndarray:
    """Seconds at the first of ``month`` months after 2024-01 (negative: before the window)."""
    months = np.datetime64("2024-01", "M") + np.asarray(month).astype("timedelta64[M]")
    return months.astype("datetime64[s]").view(np.int64)


WINDOW_END = int(month_start(WINDOW_MONTHS))


def month_of(seconds: np.ndarray) -> np.ndarray:
    """Month index (0 = 2024-01) of each time."""
    months = np.asarray(seconds).view("datetime64[s]").astype("datetime64[M]")
    return (months - np.datetime64("2024-01", "M")).astype(np.int64)


@dataclass
class Clients:
    """One chunk's clients: ids, hidden traits (each ~N(0, 1)), tenure, domain coverage, card habits."""

    client_id: np.ndarray
    affluence: np.ndarray
    stress: np.ndarray
    discipline: np.ndarray
    impulsive: np.ndarray
    digital: np.ndarray
    saver: np.ndarray
    start: np.ndarray  # seconds: when the client joined the bank
    has_card: np.ndarray
    has_account: np.ndarray
    has_credit: np.ndarray
    card_per_day: np.ndarray  # expected card transactions per day
    card_shift: np.ndarray  # client's log-amount offset
    card_groups: np.ndarray  # (n, 4) probabilities of everyday / premium / risky / cash spending

    def __len__(self) -> int:
        return len(self.client_id)


@dataclass
class Events:
    """One chunk of one domain, sorted by (client, time); categories as indices into the domain's values."""

    client_id: np.ndarray
    event_time: np.ndarray  # int64 seconds
    columns: dict[str, np.ndarray]

    def keep(self, mask: np.ndarray) -> Events:
        columns = {k: v[mask] for k, v in self.columns.items()}
        return Events(self.client_id[mask], self.event_time[mask], columns)


# Card spending ---------------------------------------------------------------------------------------------
_COMMON_MCC = (
    "5411 5812 5814 5912 5541 4111 5311 5499 5331 5691 4121 5999 4814 5651 5732 5200 5977 5661 "
    "8099 5462 5441 8011 7230 5945 5942 7832 8021 5422 5451 5995 0742 4900 4899 5815 5816 5817 "
    "5722 5712 5533 7538 5399 5300 8220 8299 5310 5621 5641 5611 5719 5261 5251 5192 5094 5969 "
    "5966 7298 7299 7941 7997 5813 5921 4722 7011 4511 3011 3026 3047 5944 6011 6010 7995 6051 "
    "4829 5933 7994 6540 7922 5131 7512 4784 5532 5983 4131 4789"
).split()
_PREMIUM_MCC = {
    "4722": 5,
    "7011": 4,
    "4511": 4,
    "3011": 1,
    "3026": 1,
    "3047": 1,
    "5944": 2,
    "7997": 2,
    "5812": 6,
    "5732": 3,
    "7922": 1,
    "7512": 1,
    "5651": 2,
    "7298": 1,
}
_RISKY_MCC = {
    "7995": 3,
    "6051": 2,
    "4829": 4,
    "5933": 1,
    "7994": 2,
    "6540": 2,
    "5921": 4,
    "5813": 5,
    "5816": 3,
}
_CASH_MCC = {"6011": 9, "6010": 1}
_GROUP_LOG_AMOUNT = np.array([6.0, 7.7, 7.0, 8.3])  # everyday, premium, risky, cash
_AMOUNT_SIGMA = 0.85
_OWL_LEVELS = 8  # how far a client's hours lean to evenings and nights, in steps
_CURRENCIES = ("RUB", "USD", "EUR", "TRY", "AED", "CNY", "THB", "KZT", "GEL", "AMD")
_FOREIGN_WEIGHTS = np.array([0, 2, 3, 4, 3, 2, 2, 1, 1, 1], float)
_COUNTRIES = (
    "RUS",
    "USA",
    "DEU",
    "FRA",
    "ITA",
    "ESP",
    "TUR",
    "ARE",
    "CHN",
    "THA",
    "KAZ",
    "GEO",
    "ARM",
    "CYP",
    "MLT",
    "CUW",
)
_COUNTRY_OF_CURRENCY = np.array([0, 1, 2, 6, 7, 8, 9, 10, 11, 12])  # EUR spreads over DEU..ESP below
_CHANNELS = ("contactless", "pos", "ecom", "atm", "mobile_wallet")


@functools.cache
def _mcc_tables() -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """(values, typical log-amount shift per mcc, concatenated per-group CDFs, mcc index per CDF entry)."""
    rng = np.random.Generator(np.random.PCG64(20240101))  # fixed: the vocabulary is part of the demo
    rare = sorted(set(f"{x:04d}" for x in rng.integers(1500, 8999, 600)) - set(_COMMON_MCC))
    values = tuple(_COMMON_MCC) + tuple(rare[: 300 - len(_COMMON_MCC)])
    shift = rng.normal(0.0, 0.45, len(values))
    everyday = 1.0 / (np.arange(len(values)) + 3.0) ** 1.15  # Zipf-like long tail
    for special in (_PREMIUM_MCC, _RISKY_MCC, _CASH_MCC):
        everyday[[values.index(m) for m in special]] *= 0.05  # these come mostly through their own group
    groups = [dict(zip(values, everyday, strict=True)), _PREMIUM_MCC, _RISKY_MCC, _CASH_MCC]
    cdfs, owners = [], []
    for g, weights in enumerate(groups):
        w = np.array(list(weights.values()), float)
        cdfs.append(g + np.cumsum(w) / w.sum())
        owners.append([values.index(m) for m in weights])
    return values, shift, np.concatenate(cdfs), np.concatenate(owners)


@functools.cache
def _card_intensity() -> tuple[np.ndarray, np.ndarray]:
    """(8, H+1) cumulative hourly activity over the window for 8 night-owl levels, and the hour grid."""
    day = np.array(
        [
            0.2,
            0.1,
            0.05,
            0.05,
            0.05,
            0.1,
            0.3,
            0.6,
            1,
            1.2,
            1.3,
            1.5,
            1.8,
            1.7,
            1.5,
            1.5,
            1.6,
            1.9,
            2.2,
            2.1,
            1.7,
            1.2,
            0.7,
            0.4,
        ]
    )
    night = np.array(
        [
            1.5,
            1.3,
            1,
            0.7,
            0.5,
            0.3,
            0.2,
            0.2,
            0.3,
            0.4,
            0.5,
            0.6,
            0.7,
            0.7,
            0.7,
            0.8,
            0.9,
            1.1,
            1.4,
            1.7,
            2,
            2.2,
            2.2,
            1.9,
        ]
    )
    hours = np.arange(WINDOW_END - WINDOW_START, step=HOUR) + WINDOW_START
    hour, days = (hours % DAY) // HOUR, hours // DAY
    weekday = (days + 3) % 7  # Monday = 0
    weekend = weekday >= 5
    late_morning = np.where(weekend & (hour >= 6) & (hour <= 9), 0.5, 1.0)  # weekends start later
    season = np.array([0.85, 0.9, 1, 1, 1.05, 1.1, 1.1, 1.1, 1, 1, 1.05, 1.3])[month_of(hours) % 12]
    rhythm = np.array([1, 1, 1, 1, 1.15, 1.3, 1.0])[weekday] * season * late_morning
    tables = []
    for w in (np.arange(_OWL_LEVELS) + 0.5) / _OWL_LEVELS * 0.9:
        weight = ((1 - w) * day[hour] / day.sum() + w * night[hour] / night.sum()) * rhythm
        tables.append(np.r_[0.0, np.cumsum(weight)])
    return np.array(tables), np.r_[hours, WINDOW_END].astype(np.float64)


def _sorted_uniforms(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Per client ``counts[i]`` sorted U(0,1) draws, made without sorting: normalised exponential spacings."""
    spacings = rng.standard_exponential(int(counts.sum() + len(counts)))
    total = np.cumsum(spacings)
    last = np.cumsum(counts + 1) - 1  # each client's extra spacing closes its interval
    before = np.r_[0.0, total[last[:-1]]]
    keep = np.ones(len(spacings), bool)
    keep[last] = False
    return (total[keep] - np.repeat(before, counts)) / np.repeat(total[last] - before, counts)


def _card_events(rng: np.random.Generator, c: Clients, default_at: np.ndarray) -> Events:
    """Card transactions; ``amount`` is the billed amount in RUB whatever the transaction currency."""
    _, mcc_shift, group_cdf, group_mcc = _mcc_tables()
    counts = rng.poisson(c.card_per_day * (WINDOW_END - c.start) / DAY) * c.has_card
    owner = np.repeat(np.arange(len(c)), counts)
    n = len(owner)
    # Times come out sorted: sorted uniforms mapped through each client's monotone cumulative activity.
    tables, grid = _card_intensity()
    owl = (_sigmoid(-1.2 + 1.6 * c.impulsive + 0.3 * rng.standard_normal(len(c))) * _OWL_LEVELS).astype(int)
    position = _sorted_uniforms(rng, counts)
    event_time = np.empty(n, np.int64)
    for level, table in enumerate(tables):
        rows = np.flatnonzero(owl[owner] == level)
        lo = np.interp(c.start.astype(np.float64), grid, table)[owner[rows]]
        u = lo + position[rows] * (table[-1] - lo)
        event_time[rows] = np.interp(u, table, grid).astype(np.int64)
    np.minimum(event_time, WINDOW_END - 1, out=event_time)

    group = (rng.random(n)[:, None] > np.cumsum(c.card_groups, 1)[owner, :3]).sum(1)
    mcc = group_mcc[np.searchsorted(group_cdf, group + rng.random(n), side="right")]
    amount = np.exp(
        _GROUP_LOG_AMOUNT[group]
        + c.card_shift[owner]
        + mcc_shift[mcc]
        + _AMOUNT_SIGMA * rng.standard_normal(n)
    )
    amount = np.where(group == 3, np.maximum(np.round(amount, -2), 100), np.round(amount, 2))
    u = rng.random((4, n))
    digital = c.digital[owner]
    ecom = _sigmoid(-1.6 + 0.8 * digital + 0.5 * c.impulsive[owner] + 1.3 * (group == 2))
    channel = np.where(
        u[0] < ecom,
        2,
        np.where(
            u[1] < _sigmoid(-1.8 + 1.0 * digital), 4, np.where(u[1] < _sigmoid(0.6 + 0.8 * digital), 0, 1)
        ),
    )
    channel[group == 3] = 3
    foreign = u[2] < np.where(group == 1, 0.35 * _sigmoid(c.affluence[owner]), 0.01)
    currency = np.where(
        foreign, np.searchsorted(np.cumsum(_FOREIGN_WEIGHTS) / _FOREIGN_WEIGHTS.sum(), u[3], side="right"), 0
    )
    country = _COUNTRY_OF_CURRENCY[currency] + np.where(currency == 2, (u[3] * 40).astype(np.int64) % 4, 0)
    offshore = (group == 2) & (channel == 2) & (u[2] < 0.3)
    country[offshore] = 13 + (u[3][offshore] * 30).astype(np.int64) % 3
    currency[offshore] = 2
    events = Events(
        c.client_id[owner],
        event_time,
        {
            "mcc": mcc.astype(np.int32),
            "currency": currency.astype(np.int32),
            "channel": channel.astype(np.int32),
            "country": country.astype(np.int32),
            "amount": amount.astype(np.float32),
        },
    )
    cut = (event_time >= default_at[owner]) & (rng.random(n) < 0.75)  # most cards are blocked after a default
    return events.keep(~cut)


def expected_log_spend_3m(c: Clients) -> np.ndarray:
    """The hidden mean of ``spend_3m``: log1p of the expected card spend over the next 91 days."""
    _, mcc_shift, group_cdf, group_mcc = _mcc_tables()
    mean_shift = []
    for g in range(4):
        in_group = (group_cdf > g) & (group_cdf <= g + 1)
        weights = np.diff(np.r_[g, group_cdf[in_group]])
        mean_shift.append((weights * np.exp(mcc_shift[group_mcc[in_group]])).sum())
    per_event = (c.card_groups * np.exp(_GROUP_LOG_AMOUNT) * np.array(mean_shift)).sum(1)
    per_event *= np.exp(c.card_shift + _AMOUNT_SIGMA**2 / 2)
    return np.log1p(91 * c.card_per_day * per_event)


# Current-account operations --------------------------------------------------------------------------------
_OPS = (
    "salary",
    "transfer_out",
    "transfer_in",
    "cash_withdrawal",
    "loan_repayment",
    "utility_payment",
    "deposit_topup",
    "deposit_withdrawal",
    "card_topup",
    "fee",
)
_OP_DIRECTION = np.array([0, 1, 0, 1, 1, 1, 1, 0, 1, 1])  # index into _DIRECTIONS
_OP_LOG_AMOUNT = np.array([10.8, 8.3, 8.3, 8.6, 9.2, 8.0, 9.6, 9.6, 8.5, 5.5])
_DIRECTIONS = ("in", "out")
_COUNTERPARTIES = (
    "employer",
    "individual",
    "own_account",
    "bank",
    "microfinance",
    "government",
    "utility_company",
    "merchant",
)
_OP_COUNTERPARTY = np.array([0, 1, 1, 3, 3, 6, 2, 2, 2, 3])  # usual counterparty per operation


def _op_logits(c: Clients, noise: np.ndarray) -> np.ndarray:
    """(n, 9) client's log-odds of each non-salary operation; stress shows as cash, loans, fees, borrowing."""
    s, a, v, m, d = c.stress, c.affluence, c.saver, c.impulsive, c.discipline
    one = np.ones(len(c))
    return (
        np.stack(
            [
                1.5 + 0.2 * m,
                0.6 + 0.7 * s,
                0.2 + 1.4 * s,
                -0.6 + 1.4 * s,
                0.8 * one,
                -0.9 + 1.0 * v + 0.3 * a - 0.5 * s,
                -1.5 + 0.5 * v + 0.7 * s,
                0.5 * one,
                -1.8 + 1.2 * s - 0.4 * d,
            ],
            axis=1,
        )
        + noise
    )


def _account_events(rng: np.random.Generator, c: Clients, default_at: np.ndarray) -> Events:
    """Current-account operations: monthly salaries plus a client-specific mix of other operations."""
    n_clients = len(c)
    # Salaries: monthly on a payday; stressed clients miss months and get paid irregularly.
    employed = c.has_account & (rng.random(n_clients) < _sigmoid(2.2 - 0.9 * c.stress))
    first_month = month_of(c.start)
    months = np.where(employed, WINDOW_MONTHS - first_month, 0)
    payer = np.repeat(np.arange(n_clients), months)
    month = first_month[payer] + np.arange(len(payer)) - np.repeat(np.cumsum(months) - months, months)
    jitter = 0.5 + 3.0 * _sigmoid(1.5 * c.stress - 1.0)
    day = np.clip(
        rng.integers(0, 5, n_clients)[payer] * 5
        + 4
        + np.round(rng.standard_normal(len(payer)) * jitter[payer]),
        0,
        27,
    ).astype(np.int64)
    salary_time = month_start(month) + day * DAY + rng.integers(9 * HOUR, 18 * HOUR, len(payer))
    paid = rng.random(len(payer)) < _sigmoid(3.3 - 1.3 * c.stress)[payer]
    salary_shift = 0.45 * c.affluence + 0.2 * rng.standard_normal(n_clients)
    salary_amount = np.exp(
        _OP_LOG_AMOUNT[0]
        + salary_shift[payer]
        + (0.05 + 0.3 * _sigmoid(c.stress[payer])) * rng.standard_normal(len(payer))
    )

    # Other operations: a client-specific mix, at daytime hours on random days.
    active_days = (WINDOW_END - c.start) // DAY
    rate = rng.lognormal(np.log(45 / 730) - 0.24 + 0.2 * c.affluence, 0.7) * c.has_account
    counts = rng.poisson(rate * active_days)
    owner = np.repeat(np.arange(n_clients), counts)
    n = len(owner)
    probs = np.exp(_op_logits(c, 0.2 * rng.standard_normal((n_clients, 9))))
    probs /= probs.sum(1, keepdims=True)
    op = 1 + (rng.random(n)[:, None] > np.cumsum(probs, 1)[owner, :8]).sum(1)
    op_time = (
        c.start[owner] // DAY + (rng.random(n) * active_days[owner]).astype(np.int64)
    ) * DAY + rng.integers(8 * HOUR, 22 * HOUR, n)
    op_amount = np.exp(_OP_LOG_AMOUNT[op] + 0.4 * c.affluence[owner] + 0.8 * rng.standard_normal(n))

    owner = np.r_[payer[paid], owner]
    event_time = np.r_[salary_time[paid], op_time]
    op = np.r_[np.zeros(paid.sum(), np.int64), op]
    amount = np.round(np.r_[salary_amount[paid], op_amount], 2)
    u = rng.random(len(owner))
    counterparty = _OP_COUNTERPARTY[op]
    counterparty = np.where((op == 4) & (u < _sigmoid(-1.6 + 1.1 * c.stress[owner])), 4, counterparty)
    counterparty = np.where((op == 1) & (u < 0.15), 7, np.where((op == 2) & (u < 0.1), 5, counterparty))
    # The balance after each operation: stretched clients live near zero and dip into overdraft.
    cushion = np.exp(9.5 + 0.5 * c.affluence - 1.1 * c.stress)[owner]
    balance = cushion * np.exp(0.5 * rng.standard_normal(len(owner)))
    overdrawn = rng.random(len(owner)) < _sigmoid(-3.2 + 1.3 * c.stress[owner])
    balance = np.round(np.where(overdrawn, -0.2 * balance, balance), 2)
    order = np.lexsort((event_time, owner))
    events = Events(
        c.client_id[owner[order]],
        event_time[order],
        {
            "op_type": op[order].astype(np.int32),
            "counterparty_kind": counterparty[order].astype(np.int32),
            "direction": _OP_DIRECTION[op[order]].astype(np.int32),
            "amount": amount[order].astype(np.float32),
            "balance": balance[order].astype(np.float32),
        },
    )
    late = (events.event_time >= default_at[owner[order]]) & (events.columns["op_type"] == 0)
    return events.keep(~(late & (rng.random(len(late)) < 0.6)))  # salaries often stop after a default


# Credit bureau snapshots -----------------------------------------------------------------------------------
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
    p_miss = _sigmoid((-2.2 - 2.1 * c.discipline + 0.2 * c.stress)[owner] + _TYPE_RISK[kind[credit]])
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
    usage = _sigmoid(-0.6 + 0.5 * c.stress[owner] - 0.9 * d + 0.8 * rng.standard_normal(len(credit)))
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


@dataclass(frozen=True)
class DomainSpec:
    """A demo domain: its categorical values, numeric transforms, raw-only columns and generator."""

    name: str
    categorical: dict[str, tuple[str, ...]]
    numeric: dict[str, str]
    generate: Callable[[np.random.Generator, Clients, np.ndarray], Events]
    raw_only: tuple[str, ...] = ()
    default_max_len: int = 256


DOMAINS = (
    DomainSpec(
        "card_transactions",
        {"mcc": _mcc_tables()[0], "currency": _CURRENCIES, "channel": _CHANNELS, "country": _COUNTRIES},
        {"amount": "signed_log1p"},
        _card_events,
    ),
    DomainSpec(
        "account_transactions",
        {"op_type": _OPS, "counterparty_kind": _COUNTERPARTIES, "direction": _DIRECTIONS},
        {"amount": "signed_log1p", "balance": "signed_log1p"},
        _account_events,
    ),
    DomainSpec(
        "credit_history",
        {"credit_type": _CREDIT_TYPES, "status": _STATUSES, "overdue_bucket": _OVERDUE},
        {"credit_limit": "signed_log1p", "outstanding": "signed_log1p", "term_months": "none"},
        _credit_events,
        raw_only=("credit_id",),
        default_max_len=128,
    ),
)


# Clients, samples and the whole demo ---------------------------------------------------------------------
def _draw_clients(rng: np.random.Generator, first_id: int, n: int) -> Clients:
    """Hidden traits, tenure, domain coverage and card habits of ``n`` clients."""
    z = rng.standard_normal((10, n))
    affluence, impulsive, digital, saver = z[0], z[2], z[4], z[5]
    stress = 0.93 * z[1] - 0.35 * affluence  # poorer clients are somewhat likelier to be stretched
    late = rng.random(n) < 0.2  # clients who joined during the window
    start_month = np.where(late, rng.integers(1, 19, n), 0)
    groups = np.stack(
        [
            np.zeros(n),
            _sigmoid(-2.0 + 0.9 * affluence + 0.2 * z[7]),
            _sigmoid(-3.0 + 2.0 * impulsive + 0.2 * z[8]),
            _sigmoid(-2.6 + 0.4 * stress + 0.3 * impulsive - 0.4 * digital + 0.2 * z[9]),
        ],
        axis=1,
    )
    groups[:, 0] = np.maximum(1.0 - groups[:, 1:].sum(1), 0.1)
    return Clients(
        client_id=np.arange(first_id, first_id + n, dtype=np.int64),
        affluence=affluence,
        stress=stress,
        discipline=z[3],
        impulsive=impulsive,
        digital=digital,
        saver=saver,
        start=month_start(start_month) + np.where(late, rng.integers(0, 28, n), 0) * DAY,
        has_card=rng.random(n) < _sigmoid(3.3 + 0.6 * digital),
        has_account=rng.random(n) < 0.85,
        has_credit=rng.random(n) < _sigmoid(1.2 + 0.4 * affluence + 0.2 * stress),
        card_per_day=np.exp(np.log(170 / 731) - 0.25 + 0.25 * affluence + 0.15 * digital + 0.7 * z[6]),
        card_shift=0.35 * affluence + 0.25 * impulsive + 0.25 * rng.standard_normal(n),
        card_groups=groups / groups.sum(1, keepdims=True),
    )


def default_logit(c: Clients) -> np.ndarray:
    """The hidden truth of ``default_12m``: log-odds of a default within 12 months of any report date.

    Credit discipline only counts for clients who have borrowed; a thin bureau file is a small risk itself.
    """
    credit = np.where(c.has_credit, -0.85 * c.discipline, 0.3)
    return -2.45 + 1.1 * c.stress + credit + 0.9 * c.impulsive - 0.35 * c.affluence


def product_logits(c: Clients) -> np.ndarray:
    """(n, 4) hidden log-odds of the next product bought: none, card, deposit, loan."""
    return np.stack(
        [
            np.zeros(len(c)),
            -0.9 + 1.1 * c.digital - 1.2 * c.has_card,
            -0.9 + 1.1 * c.saver + 0.5 * c.affluence,
            -1.0 + 0.9 * c.stress + 0.5 * c.impulsive - 0.4 * c.discipline,
        ],
        axis=1,
    )


def _report_months(rng: np.random.Generator, c: Clients) -> np.ndarray:
    """A report month 0..11 (2025-01 .. 2025-12) per client, at least three months after the client joined."""
    earliest = np.clip(month_of(c.start) - 12 + 3, 0, 11)
    return earliest + (rng.random(len(c)) * (12 - earliest)).astype(np.int64)


def _draw_samples(rng: np.random.Generator, c: Clients) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """The chunk's sample rows (with hidden truth), and per client when a drawn default happens (or NEVER)."""
    n = len(c)
    rows: dict[str, pd.DataFrame] = {}
    logit = default_logit(c)
    defaulted = rng.random(n) < _sigmoid(logit)
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


def _write_raw(path: Path, events: Events, spec: DomainSpec) -> None:
    """One raw part: readable string categories (dictionary-encoded, so cheap to write) and raw numerics."""
    arrays = {
        "client_id": pa.array(events.client_id),
        "event_time": pa.array(events.event_time.view("datetime64[s]")),
    }
    for name, values in spec.categorical.items():
        arrays[name] = pa.DictionaryArray.from_arrays(
            pa.array(events.columns[name], pa.int32()), pa.array(values, pa.string())
        )
    for name in (*spec.numeric, *spec.raw_only):
        arrays[name] = pa.array(events.columns[name])
    pq.write_table(pa.table(arrays), path, use_dictionary=["client_id", *spec.categorical])


def generate_demo(
    out_dir: Path, clients: int, seed: int, progress: Callable[[float, str], None] | None = None
) -> dict[str, Any]:
    """Write the demo's raw data, marts, samples and oracle scores under ``out_dir``; return a summary.

    Layout: ``demo/raw/<domain>/part-XXXXX.parquet``, ``marts/<domain>/``, ``demo/samples/*.csv`` and
    ``oracle.json``, and ``demo/truth/<sample>.parquet`` (each row's hidden truth, for evaluation only).
    """
    if clients < 1:
        raise ValueError(f"clients must be at least 1, got {clients}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    writers = {}
    for spec in DOMAINS:
        raw_dir = out_dir / "demo" / "raw" / spec.name
        raw_dir.mkdir(parents=True, exist_ok=True)
        for old in raw_dir.glob("part-*.parquet"):
            old.unlink()
        writers[spec.name] = MartWriter(
            out_dir / "marts" / spec.name,
            spec.name,
            categorical=spec.categorical,
            numeric=spec.numeric,
            default_max_len=spec.default_max_len,
        )
    counts = dict.fromkeys(writers, 0)
    samples: dict[str, list[pd.DataFrame]] = {name: [] for name in SAMPLES}
    n_chunks = -(-clients // CLIENTS_PER_CHUNK)
    # Parquet writing releases the GIL: one thread writes chunk i while chunk i+1 is drawn, and waiting for
    # it before handing over the next keeps at most two chunks in memory.
    with ThreadPoolExecutor(max_workers=1) as writer_thread:
        writing: Future | None = None
        for chunk in range(n_chunks):
            rng = np.random.Generator(np.random.PCG64([seed, chunk]))
            first = chunk * CLIENTS_PER_CHUNK
            c = _draw_clients(rng, FIRST_CLIENT_ID + first, min(CLIENTS_PER_CHUNK, clients - first))
            rows, default_at = _draw_samples(rng, c)
            events = {spec.name: spec.generate(rng, c, default_at) for spec in DOMAINS}
            # A client with no event in any mart is unknown to ANNA, and sample validation rejects it.
            seen = np.unique(np.concatenate([e.client_id for e in events.values()]))
            for name, frame in rows.items():
                samples[name].append(frame[np.isin(frame["client_id"].to_numpy(), seen)])
            for name, domain_events in events.items():
                counts[name] += len(domain_events.client_id)
            if writing is not None:
                writing.result()
            writing = writer_thread.submit(_write_chunk, out_dir, chunk, events, writers)
            if progress is not None:
                progress((chunk + 1) / n_chunks, f"{first + len(c)} of {clients} clients")
        if writing is not None:
            writing.result()
    versions = {name: writer.close()["version"] for name, writer in writers.items()}
    oracle = _write_samples(out_dir / "demo", samples)
    seconds = time.perf_counter() - started
    total = sum(counts.values())
    return {
        "clients": clients,
        "seed": seed,
        "seconds": round(seconds, 3),
        "events": counts,
        "events_total": total,
        "events_per_second": round(total / seconds),
        "mart_versions": versions,
        "paths": {
            "raw": str(out_dir / "demo" / "raw"),
            "marts": str(out_dir / "marts"),
            "samples": str(out_dir / "demo" / "samples"),
        },
        "oracle": oracle,
    }


def _write_chunk(
    out_dir: Path, chunk: int, events: dict[str, Events], writers: dict[str, MartWriter]
) -> None:
    """Write one chunk of every domain: its raw part and its mart part."""
    for spec in DOMAINS:
        domain_events = events[spec.name]
        _write_raw(out_dir / "demo" / "raw" / spec.name / f"part-{chunk:05d}.parquet", domain_events, spec)
        codes = {k: domain_events.columns[k] + 2 for k in spec.categorical}  # 0 = padding, 1 = unknown
        writers[spec.name].append(
            domain_events.client_id,
            domain_events.event_time.view("datetime64[s]"),
            codes | {k: domain_events.columns[k] for k in spec.numeric},
        )


def _write_samples(demo_dir: Path, samples: dict[str, list[pd.DataFrame]]) -> dict[str, Any]:
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
        "log_loss": float(metrics.log_loss(y, _sigmoid(truth))),
    }
