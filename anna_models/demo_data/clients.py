"""Demo clients: hidden traits, tenure, domain coverage, card habits, and the targets' hidden log-odds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anna_models.demo_data.window import DAY, month_start

FIRST_CLIENT_ID = 100_001


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise: log-odds to probabilities."""
    return 1.0 / (1.0 + np.exp(-x))


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


def draw_clients(rng: np.random.Generator, first_id: int, n: int) -> Clients:
    """Hidden traits, tenure, domain coverage and card habits of ``n`` clients."""
    z = rng.standard_normal((10, n))
    affluence, impulsive, digital, saver = z[0], z[2], z[4], z[5]
    stress = 0.93 * z[1] - 0.35 * affluence  # poorer clients are somewhat likelier to be stretched
    late = rng.random(n) < 0.2  # clients who joined during the window
    start_month = np.where(late, rng.integers(1, 19, n), 0)
    groups = np.stack(
        [
            np.zeros(n),
            sigmoid(-2.0 + 0.9 * affluence + 0.2 * z[7]),
            sigmoid(-3.0 + 2.0 * impulsive + 0.2 * z[8]),
            sigmoid(-2.6 + 0.4 * stress + 0.3 * impulsive - 0.4 * digital + 0.2 * z[9]),
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
        has_card=rng.random(n) < sigmoid(3.3 + 0.6 * digital),
        has_account=rng.random(n) < 0.85,
        has_credit=rng.random(n) < sigmoid(1.2 + 0.4 * affluence + 0.2 * stress),
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
