"""The `anna` CLI: argument parsing and messages, and the commands against the real FastAPI app."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from backend_fakes import ADMIN_PASSWORD, Api, FakeRunner, csv_bytes, sample_frame, states, wait_for
from click.testing import CliRunner, Result

from anna_backend.bootstrap import Wiring
from anna_backend.entrypoints.cli import cli
from anna_backend.entrypoints.cli_client import CliEnv, describe_problems, follow_run, save_token
from anna_backend.entrypoints.cli_format import parse_params, step_line, table
from anna_backend.service_layer import runs
from anna_backend.settings import Settings
from anna_models.plots import render


def invoke(*args: str, env: CliEnv | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), obj=env or CliEnv(), catch_exceptions=False)
    return result.exit_code, result.output


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_params_split_into_default_and_per_domain() -> None:
    params = parse_params(
        ["hidden=8", "architecture=lstm", "lr=0.01", "layers = 2"],
        ["card_transactions.max_epochs=3", "credit_bureau.dropout=0.2"],
    )
    assert params == {
        "default": {"hidden": 8, "architecture": "lstm", "lr": 0.01, "layers": 2},
        "card_transactions": {"max_epochs": 3},
        "credit_bureau": {"dropout": 0.2},
    }


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [("--param", "hidden", "KEY=VALUE"), ("--domain-param", "hidden=8", "DOMAIN.KEY=VALUE")],
)
def test_malformed_params_are_refused_before_anything_is_sent(option: str, value: str, expected: str) -> None:
    code, output = invoke("--url", f"http://127.0.0.1:{closed_port()}", "train", "--task", "t", option, value)
    assert code == 2
    assert expected in output and "cannot reach" not in output


def test_unreachable_server_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNA_TOKEN", "whatever")
    url = f"http://127.0.0.1:{closed_port()}"
    code, output = invoke("--url", url, "task", "list")
    assert code == 1
    assert output.strip() == (
        f"Error: cannot reach ANNA at {url} — is `make run` / `anna serve` running? "
        "(--url or ANNA_URL if it runs elsewhere)"
    )


def test_sample_problems_name_row_and_column() -> None:
    body = {
        "detail": [
            {"row": 3, "column": "report_date", "msg": "'2024-13-45' is not a date (YYYY-MM-DD)"},
            {"row": None, "column": "target", "msg": "missing column"},
            {"row": None, "column": None, "msg": "... and 7 more problem(s)"},
        ]
    }
    assert describe_problems(body) == [
        "row 3, column 'report_date': '2024-13-45' is not a date (YYYY-MM-DD)",
        "column 'target': missing column",
        "... and 7 more problem(s)",
    ]
    fastapi_style = {
        "detail": [{"loc": ["body", "task_type"], "msg": "Input should be 'binary'", "type": "x"}]
    }
    assert describe_problems(fastapi_style) == ["task_type: Input should be 'binary'"]
    assert describe_problems({"detail": "task 'x' not found"}) == ["task 'x' not found"]


def test_token_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNA_CONFIG_DIR", str(tmp_path / "cfg"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "token").write_text("old")
    (tmp_path / "cfg" / "token").chmod(0o644)
    path = save_token("abc")
    assert path.read_text().strip() == "abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_table_aligns_columns() -> None:
    text = table(["id", "state"], [(1, "running"), (12, None)])
    assert text.splitlines() == ["id  state", "--  -------", "1   running", "12  -"]


# ------------------------------------------------------------------ against the real app (fake runner/marts)


@pytest.fixture
def anna(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run `anna ...` against the test app; the token lives in a fresh config dir."""
    monkeypatch.setenv("ANNA_CONFIG_DIR", str(tmp_path / "anna-config"))

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(
            cli, list(args), obj=CliEnv(http=api.client, poll_interval=0.01), input=input
        )

    return run


@pytest.fixture
def logged_in(anna: Callable[..., Result], tmp_path: Path) -> Callable[..., Result]:
    password_file = tmp_path / "admin-password.txt"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    result = anna("login", "--user", "admin", "--password-file", str(password_file))
    assert result.exit_code == 0, result.output
    return anna


@pytest.fixture
def sample_csv(tmp_path: Path) -> Path:
    path = tmp_path / "sample.csv"
    path.write_bytes(csv_bytes(sample_frame(n=40, positives=10)))
    return path


def test_login_keeps_a_private_token_that_later_commands_use(
    anna: Callable[..., Result], tmp_path: Path
) -> None:
    password_file = tmp_path / "pw.txt"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    result = anna("login", "--user", "admin", "--password-file", str(password_file))
    assert result.exit_code == 0, result.output
    assert "logged in" in result.output and "as admin" in result.output
    token = tmp_path / "anna-config" / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600

    created = anna("task", "create", "--name", "churn", "--type", "binary", "--domains", "cards")
    assert created.exit_code == 0, created.output
    assert created.output.strip() == "task churn (id 1): binary, metric roc_auc, domains cards"
    listed = anna("task", "list")
    assert listed.exit_code == 0
    assert listed.output.splitlines()[2].split() == ["1", "churn", "binary", "roc_auc", "cards", "admin"]


def test_login_asks_for_the_password_when_none_is_given(anna: Callable[..., Result]) -> None:
    result = anna("login", "--user", "admin", input=ADMIN_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert anna("task", "list").exit_code == 0


def test_wrong_password_and_missing_login_say_what_to_do(anna: Callable[..., Result]) -> None:
    wrong = anna("login", "--user", "admin", "--password", "not-the-password")
    assert wrong.exit_code == 1
    assert wrong.output.startswith("Error: login refused:")

    no_login = anna("task", "list")
    assert no_login.exit_code == 1
    assert "not logged in — run `anna login --user admin --password-file" in no_login.output


def test_expired_or_foreign_token_asks_to_log_in_again(
    anna: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANNA_TOKEN", "not-a-token")
    result = anna("task", "list")
    assert result.exit_code == 1
    assert "refused or has expired — run `anna login" in result.output


def test_unknown_task_and_taken_name_are_named(logged_in: Callable[..., Result]) -> None:
    unknown = logged_in("train", "--task", "nope")
    assert unknown.exit_code == 1
    assert "no task 'nope'" in unknown.output and "anna task list" in unknown.output

    assert (
        logged_in("task", "create", "--name", "churn", "--type", "binary", "--domains", "cards").exit_code
        == 0
    )
    again = logged_in("task", "create", "--name", "churn", "--type", "binary")
    assert again.exit_code == 1
    assert again.output.startswith("Error: conflict:") and "churn" in again.output


def test_rejected_sample_lists_every_row_and_column(logged_in: Callable[..., Result], tmp_path: Path) -> None:
    logged_in("task", "create", "--name", "churn", "--type", "binary", "--domains", "cards")
    frame = sample_frame(n=40, positives=10).astype({"report_date": str, "target": str})
    frame.loc[1, "report_date"] = "2024-13-45"
    frame.loc[2, "target"] = "2"
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_bytes(frame))

    result = logged_in("sample", "upload", "--task", "churn", str(bad))

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("Error: bad.csv was rejected, nothing was stored (")
    assert any(line.startswith("  - row 2, column 'report_date': ") for line in lines), result.output
    assert any(line.startswith("  - row 3, column 'target': ") for line in lines), result.output


def test_upload_prints_what_was_stored(logged_in: Callable[..., Result], sample_csv: Path) -> None:
    logged_in("task", "create", "--name", "churn", "--type", "binary", "--domains", "cards")
    result = logged_in("sample", "upload", "--task", "churn", str(sample_csv))
    assert result.exit_code == 0, result.output
    assert "sample 1 stored for task churn: 40 rows, 40 clients, report dates 2024-06-01 .. 2024-06-01" in (
        result.output
    )


def test_train_wait_follows_the_steps_and_prints_the_metrics(
    logged_in: Callable[..., Result], sample_csv: Path, wiring: Wiring, api: Api, runner: FakeRunner
) -> None:
    runner.duration_s = 0.6  # long enough for the watcher to see the run running
    wiring.dispatcher.start()
    logged_in("task", "create", "--name", "churn", "--type", "binary", "--domains", "cards")
    logged_in("sample", "upload", "--task", "churn", str(sample_csv))

    result = logged_in(
        "train", "--task", "churn", "--param", "hidden=8", "--domain-param", "cards.max_epochs=1", "--wait"
    )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split(": ")[0] == "run 1 (churn)" and "run 1 (churn): running" in lines
    assert any(line.split()[:2] == ["train.cards", "succeeded"] for line in lines), result.output
    assert "run 1 succeeded in" in result.output
    assert "blended test: roc_auc=0.7000" in result.output
    run = api.client.get("/runs/1", headers=api.headers()).json()
    assert run["params"]["default"]["hidden"] == 8 and run["params"]["cards"]["max_epochs"] == 1

    table_lines = logged_in("runs", "--task", "churn").output.splitlines()
    assert table_lines[0].split() == [
        "id",
        "task",
        "state",
        "attempt",
        "test",
        "metric",
        "created",
        "duration",
    ]
    assert table_lines[2].split()[:5] == ["1", "churn", "succeeded", "1", "roc_auc=0.7000"]


def test_progress_lines_count_epochs_for_encoders_and_rounds_for_lightgbm() -> None:
    encoder = step_line({"name": "train.cards", "state": "running", "epoch": 3, "max_epochs": 10,
                         "metric_name": "roc_auc", "metric": 0.71234, "fraction": 0.5,
                         "message": "trial 0: gru 64"})
    boosting = step_line({"name": "train_lightgbm", "state": "running", "epoch": 150, "max_epochs": 3000,
                          "unit": "round", "metric_name": "auc", "metric": 0.8124, "fraction": 0.05})
    # Within epoch 3 the metric shown is epoch 2's; at an epoch's end it is that epoch's own.
    assert encoder.split()[2:] == ["epoch", "3/10", "roc_auc=0.7123", "after", "epoch", "2", "50%",
                                   "trial", "0:", "gru", "64"]
    ended = step_line({"name": "train.cards", "state": "running", "epoch": 3, "max_epochs": 10,
                       "metric_name": "roc_auc", "metric": 0.7201, "fraction": 1.0})
    assert ended.split()[2:] == ["epoch", "3/10", "roc_auc=0.7201", "100%"]
    assert boosting.split()[2:] == ["round", "150/3000", "auc=0.8124", "5%"]


def test_train_wait_shows_epochs_at_once_and_progress_within_an_epoch_every_ten_seconds() -> None:
    now = [0.0]
    step = {"name": "train.cards", "state": "running", "epoch": 1, "max_epochs": 3, "message": "trial 0"}
    polls = [{**step, "fraction": (i + 1) / 10} for i in range(8)]  # a poll every 2 s, progress each time
    polls.append({**step, "metric": 0.71, "metric_name": "roc_auc", "fraction": 1.0})  # epoch 1 ends
    polls.append({**polls[-1], "state": "succeeded"})

    class Scripted:
        def get(self, path: str, **_: object) -> dict:
            now[0] += 2.0
            step = polls.pop(0)
            return {"id": 1, "task_name": "churn", "state": "running" if polls else "succeeded",
                    "steps": [step]}

    lines: list[str] = []
    follow_run(Scripted(), 1, 0.0, echo=lines.append, clock=lambda: now[0])  # type: ignore[arg-type]

    shown = [line.split()[1:5] for line in lines if line.startswith("  train.cards")]
    # 10% at 2 s, 60% at 12 s (the 20-50% polls in between are skipped), the epoch's end at once, done.
    assert shown == [["running", "epoch", "1/3", "10%"], ["running", "epoch", "1/3", "60%"],
                     ["running", "epoch", "1/3", "roc_auc=0.7100"],
                     ["succeeded", "epoch", "1/3", "roc_auc=0.7100"]]


def test_train_wait_shows_lightgbm_rounds_as_progress_every_ten_seconds() -> None:
    now = [0.0]
    step = {"name": "train_lightgbm", "state": "running", "max_epochs": 3000, "unit": "round",
            "metric_name": "auc"}
    # A poll every 2 s, each with 50 more rounds and a new metric: ten polls in 20 s.
    polls = [{**step, "epoch": 50 * (i + 1), "metric": 0.80 + i / 1000, "fraction": (i + 1) / 60}
             for i in range(10)]
    polls.append({**polls[-1], "state": "succeeded"})

    class Scripted:
        def get(self, path: str, **_: object) -> dict:
            now[0] += 2.0
            return {"id": 1, "task_name": "churn", "state": "running" if len(polls) > 1 else "succeeded",
                    "steps": [polls.pop(0)]}

    lines: list[str] = []
    follow_run(Scripted(), 1, 0.0, echo=lines.append, clock=lambda: now[0])  # type: ignore[arg-type]

    shown = [line.split()[1:4] for line in lines if line.startswith("  train_lightgbm")]
    # Rounds 50 at 2 s, 300 at 12 s, then nothing new until the step's end.
    assert shown == [["running", "round", "50/3000"], ["running", "round", "300/3000"],
                     ["succeeded", "round", "500/3000"]]


def test_train_wait_fails_when_the_run_does_not_succeed(
    logged_in: Callable[..., Result], sample_csv: Path, wiring: Wiring, runner: FakeRunner
) -> None:
    runner.auto_run = False  # the run stays active until cancelled
    wiring.dispatcher.start()
    logged_in("task", "create", "--name", "churn", "--type", "binary", "--domains", "cards")
    logged_in("sample", "upload", "--task", "churn", str(sample_csv))

    def cancel_once_started() -> None:
        wait_for(lambda: states(wiring.backend).get(1) in ("building", "running"))
        with wiring.backend.uow() as uow:
            admin = uow.users.get_by_username("admin")
        assert admin is not None
        runs.cancel_run(wiring.backend, user=admin, run_id=1)

    canceller = threading.Thread(target=cancel_once_started)
    canceller.start()
    result = logged_in("train", "--task", "churn", "--wait")
    canceller.join()

    assert result.exit_code == 1
    assert "run 1 cancelled" in result.output


def test_score_writes_the_scores_and_prints_metrics(
    logged_in: Callable[..., Result], sample_csv: Path, wiring: Wiring, tmp_path: Path
) -> None:
    wiring.dispatcher.start()
    logged_in("task", "create", "--name", "churn", "--type", "binary", "--domains", "cards")
    logged_in("sample", "upload", "--task", "churn", str(sample_csv))
    assert logged_in("train", "--task", "churn", "--wait").exit_code == 0

    out = tmp_path / "scores.csv"
    result = logged_in("score", "--run", "1", str(sample_csv), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "40 scores written to" in result.output
    assert "metrics on sample.csv: roc_auc=0.5000" in result.output
    written = pd.read_csv(out)
    assert list(written.columns[:3]) == ["client_id", "report_date", "score"] and len(written) == 40

    no_target = tmp_path / "no_target.csv"
    no_target.write_bytes(csv_bytes(sample_frame(n=40).drop(columns="target")))
    head = logged_in("score", "--run", "1", str(no_target))
    assert head.exit_code == 0, head.output
    assert head.output.splitlines()[0] == "client_id,report_date,score"
    assert "40 rows in all" in head.output and "metrics" not in head.output


def test_report_shows_metrics_per_domain_and_lift(
    logged_in: Callable[..., Result], sample_csv: Path, wiring: Wiring, settings: Settings, tmp_path: Path
) -> None:
    wiring.dispatcher.start()
    logged_in("task", "create", "--name", "churn", "--type", "binary", "--domains", "cards")
    logged_in("sample", "upload", "--task", "churn", str(sample_csv))
    early = logged_in("report", "1")
    assert early.exit_code == 1 and "no run 1" in early.output
    assert logged_in("train", "--task", "churn", "--wait").exit_code == 0
    write_report(settings.runs_dir / "1" / "report.json")

    result = logged_in("report", "1")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("run 1, task churn (binary, metric roc_auc): succeeded, attempt 1")
    assert any(line.split()[:2] == ["blended", "100"] for line in lines), result.output
    assert any(line.split()[:2] == ["cards", "100"] and line.endswith("90%") for line in lines), result.output
    deciles = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [d[0] for d in deciles] == [str(i) for i in range(1, 11)]
    board = lines.index("leaderboard (best valid first; the blend's valid is cross-validated)")
    assert lines[board + 1].split() == ["model", "kind", "valid", "roc_auc", "test", "roc_auc"]
    assert [line.split() for line in lines[board + 3 : board + 5]] == [
        ["blend", "blend", "0.8100", "0.8000"], ["lightgbm", "lightgbm", "0.7900", "0.7700"]]
    calibration = "calibration (blended, test): expected calibration error 0."
    assert any(line.startswith(calibration) for line in lines), result.output
    assert lines[-1] == ("plots: leaderboard.png, learning_curves.png, roc_pr.png, lift.png, calibration.png "
                         "(`anna report 1 --plots DIR` saves them)")

    saved = logged_in("report", "1", "--plots", str(tmp_path / "plots"))
    assert saved.exit_code == 0, saved.output
    assert saved.output.splitlines()[-1].startswith(f"5 plot(s) saved to {tmp_path / 'plots'}: leaderboard")
    for name in ("leaderboard.png", "learning_curves.png", "roc_pr.png", "lift.png", "calibration.png"):
        drawn = settings.runs_dir / "1" / "plots" / name
        assert (tmp_path / "plots" / name).read_bytes() == drawn.read_bytes()


def write_report(path: Path) -> None:
    """A report.json as the pipeline's evaluate step writes it, from the real metric functions."""
    from anna_models.metrics import evaluation

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    p = np.clip(y * 0.3 + rng.random(100) * 0.7, 0, 1)
    domain = {"test": {**evaluation("binary", y, p), "coverage": 0.9}}
    report: dict = {
        "run_id": 1,
        "task_name": "churn",
        "task_type": "binary",
        "metric": "roc_auc",
        "split": {"kind": "stratified_random", "parts": {"test": {"rows": 100}}},
        "domains": {"cards": domain},
        "blend": {"test": evaluation("binary", y, p, curves=True)},
        "leaderboard": [{"rank": 1, "model": "blend", "kind": "blend", "valid": 0.81, "test": 0.80},
                        {"rank": 2, "model": "lightgbm", "kind": "lightgbm", "valid": 0.79, "test": 0.77}],
    }
    report["plots"] = render(report, path.parent / "plots")
    path.write_text(json.dumps(report))
