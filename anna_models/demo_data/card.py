"""Card spending: merchant categories, hourly rhythms and amounts driven by affluence and impulsiveness."""

from __future__ import annotations

import functools

import numpy as np

from anna_models.demo_data.clients import Clients, sigmoid
from anna_models.demo_data.events import DomainSpec, Events
from anna_models.demo_data.window import DAY, HOUR, WINDOW_END, WINDOW_START, month_of

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
    owl = (sigmoid(-1.2 + 1.6 * c.impulsive + 0.3 * rng.standard_normal(len(c))) * _OWL_LEVELS).astype(int)
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
    ecom = sigmoid(-1.6 + 0.8 * digital + 0.5 * c.impulsive[owner] + 1.3 * (group == 2))
    channel = np.where(
        u[0] < ecom,
        2,
        np.where(
            u[1] < sigmoid(-1.8 + 1.0 * digital), 4, np.where(u[1] < sigmoid(0.6 + 0.8 * digital), 0, 1)
        ),
    )
    channel[group == 3] = 3
    foreign = u[2] < np.where(group == 1, 0.35 * sigmoid(c.affluence[owner]), 0.01)
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


CARD = DomainSpec(
    "card_transactions",
    {"mcc": _mcc_tables()[0], "currency": _CURRENCIES, "channel": _CHANNELS, "country": _COUNTRIES},
    {"amount": "signed_log1p"},
    _card_events,
)
