"""`anna pretrain`: pretrains a mart's encoder and registers it where runs look for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from anna_backend.entrypoints.cli import cli
from anna_backend.settings import get_settings
from anna_models.mart_writer import build_mart
from anna_models.pretrain import find_pretrained


def _mart(marts_root: Path, name: str, n_clients: int = 60) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for client in range(n_clients):
        n = int(rng.integers(8, 30))
        times = np.sort(np.datetime64("2024-01-01T00:00:00", "s")
                        + rng.integers(0, 365 * 86_400, n).astype("timedelta64[s]"))
        rows.append(pd.DataFrame({"client_id": client + 1, "event_time": times,
                                  "mcc": rng.choice([f"m{client % 6}", "m0", "m1"], n),
                                  "amount": rng.lognormal(3, 1, n)}))
    build_mart(pd.concat(rows), name, categorical=["mcc"], numeric={"amount": "none"},
               out_dir=marts_root / name)


@pytest.fixture
def data_dir(tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANNA_DATA_DIR", str(tmp_path / "data"))
    _mart(tmp_path / "data" / "marts", "card_transactions")
    return tmp_path / "data"


def test_pretrain_registers_an_encoder_that_runs_after_the_cutoff_find(data_dir: Path) -> None:
    args = ["pretrain", "--domain", "card", "--before", "2024-07-01", "--epochs", "2", "--hidden", "8"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.output and "registered pretrained-card_transactions v1" in result.output
    uri = get_settings().tracking_uri
    found = find_pretrained(uri, "card_transactions", mart_version=None, earliest_report_date="2024-07-01")
    assert found is not None and found.cutoff == "2024-07-01" and found.hidden == 8
    early = find_pretrained(uri, "card_transactions", mart_version=None, earliest_report_date="2024-06-30")
    assert early is None


def test_pretrain_names_the_marts_when_the_domain_is_unknown(data_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["pretrain", "--domain", "credit"])
    assert result.exit_code == 2
    assert "card_transactions" in result.output and not (data_dir / "mlflow").exists()


def test_the_help_shows_the_epochs_a_pretraining_runs_by_default() -> None:
    from anna_models.coles import ColesParams

    result = CliRunner().invoke(cli, ["pretrain", "--help"])
    assert result.exit_code == 0
    assert f"--epochs INTEGER RANGE [default: {ColesParams().epochs};" in " ".join(result.output.split())
