"""Current-account operations: salaries and a mix of other operations, where stress shows."""

from __future__ import annotations

import numpy as np

from anna_models.demo_data.clients import Clients, sigmoid
from anna_models.demo_data.events import DomainSpec, Events
from anna_models.demo_data.window import DAY, HOUR, WINDOW_END, WINDOW_MONTHS, month_of, month_start

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
    employed = c.has_account & (rng.random(n_clients) < sigmoid(2.2 - 0.9 * c.stress))
    first_month = month_of(c.start)
    months = np.where(employed, WINDOW_MONTHS - first_month, 0)
    payer = np.repeat(np.arange(n_clients), months)
    month = first_month[payer] + np.arange(len(payer)) - np.repeat(np.cumsum(months) - months, months)
    jitter = 0.5 + 3.0 * sigmoid(1.5 * c.stress - 1.0)
    day = np.clip(
        rng.integers(0, 5, n_clients)[payer] * 5
        + 4
        + np.round(rng.standard_normal(len(payer)) * jitter[payer]),
        0,
        27,
    ).astype(np.int64)
    salary_time = month_start(month) + day * DAY + rng.integers(9 * HOUR, 18 * HOUR, len(payer))
    paid = rng.random(len(payer)) < sigmoid(3.3 - 1.3 * c.stress)[payer]
    salary_shift = 0.45 * c.affluence + 0.2 * rng.standard_normal(n_clients)
    salary_amount = np.exp(
        _OP_LOG_AMOUNT[0]
        + salary_shift[payer]
        + (0.05 + 0.3 * sigmoid(c.stress[payer])) * rng.standard_normal(len(payer))
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
    amount = np.concatenate([salary_amount[paid], op_amount]).round(2)
    u = rng.random(len(owner))
    counterparty = _OP_COUNTERPARTY[op]
    counterparty = np.where((op == 4) & (u < sigmoid(-1.6 + 1.1 * c.stress[owner])), 4, counterparty)
    counterparty = np.where((op == 1) & (u < 0.15), 7, np.where((op == 2) & (u < 0.1), 5, counterparty))
    # The balance after each operation: stretched clients live near zero and dip into overdraft.
    cushion = np.exp(9.5 + 0.5 * c.affluence - 1.1 * c.stress)[owner]
    balance = cushion * np.exp(0.5 * rng.standard_normal(len(owner)))
    overdrawn = rng.random(len(owner)) < sigmoid(-3.2 + 1.3 * c.stress[owner])
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


ACCOUNT = DomainSpec(
    "account_transactions",
    {"op_type": _OPS, "counterparty_kind": _COUNTERPARTIES, "direction": _DIRECTIONS},
    {"amount": "signed_log1p", "balance": "signed_log1p"},
    _account_events,
)
