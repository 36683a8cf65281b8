"""``anna report`` shows each domain's AutoML trials, with the chosen one marked."""

from __future__ import annotations

from anna_backend.entrypoints.cli_format import budget_note, trials_tables


def trial(number: int, architecture: str, state: str, best: float, chosen: bool, layers: int = 1) -> dict:
    return {"number": number, "params": {"architecture": architecture, "hidden": 64, "layers": layers},
            "init": "scratch", "state": state, "epochs": 2 if state == "pruned" else 8, "seconds": 41.6,
            "best_valid_metric": best, "chosen": chosen}


def test_trials_table_per_domain_marks_the_chosen_trial() -> None:
    report = {"metric": "roc_auc", "domains": {
        "cards": {"trials": [trial(0, "gru", "completed", 0.77, False),
                             trial(1, "lstm", "pruned", 0.70, False),
                             trial(2, "transformer", "budget", 0.78, True, layers=2)],
                  "stopping": {"on": "train", "rows": 2103, "share": 0.15}},
        "credit": {"trials": [trial(0, "gru", "completed", 0.7, True)]},  # budget 0: no search to show
    }}
    tables = trials_tables(report)
    assert len(tables) == 1
    # The trials are compared on the encoder's stopping rows, not on the valid rows of the leaderboard.
    title = "AutoML trials, cards (compared on 2,103 stopping rows, 15% of the train clients)"
    assert tables[0].splitlines()[0] == title
    lines = tables[0].splitlines()
    assert lines[1].split() == ["trial", "encoder", "start", "state", "epochs", "seconds", "stopping", "rows",
                                "roc_auc"]
    assert lines[4].split() == ["1", "lstm", "64", "scratch", "pruned", "2", "42", "0.7000"]
    chosen = ["2", "transformer", "64x2", "scratch", "budget", "8", "42", "0.7800", "chosen"]
    assert lines[5].split() == chosen
    assert not any(line.endswith("chosen") for line in lines[3:5])


def test_the_fusion_models_trials_follow_the_domains() -> None:
    frozen = {**trial(1, "gru", "completed", 0.83, True), "init": "pretrained-cards v1 (frozen)"}
    report = {"metric": "roc_auc",
              "domains": {"cards": {"trials": [trial(0, "gru", "completed", 0.7, True)]}},
              "fusion": {"trials": [trial(0, "gru", "completed", 0.82, False), frozen]}}
    tables = trials_tables(report)
    assert len(tables) == 1 and tables[0].startswith("AutoML trials, fusion (compared on valid rows)")
    assert tables[0].splitlines()[-1].split()[3:6] == ["pretrained-cards", "v1", "(frozen)"]
    assert tables[0].splitlines()[-1].endswith("chosen")


def test_the_report_says_which_candidates_the_budget_left_untried_and_what_to_raise() -> None:
    skipped = [{"candidate": "transformer 64", "needs_s": 72.0, "left_s": 16.0},
               {"candidate": "gru 128", "needs_s": 21.0, "left_s": 7.0}]
    report = {"metric": "roc_auc", "domains": {
        "cards": {"trials": [trial(0, "gru", "completed", 0.77, True),
                             trial(1, "lstm", "pruned", 0.70, False)],
                  "search": {"budget_s": 150.0, "seconds": 143.4, "skipped": skipped}},
        # Large data: the run's params alone took the whole budget, so no other candidate started.
        "accounts": {"trials": [trial(0, "gru", "completed", 0.7, True)],
                     "search": {"budget_s": 150.0, "seconds": 221.0,
                                "skipped": [{"candidate": "lstm 128", "needs_s": 90.0, "left_s": 0.0}]}},
        "credit": {"trials": [trial(0, "gru", "completed", 0.7, True)],
                   "search": {"budget_s": 0.0, "seconds": 12.0, "skipped": []}},  # budget 0: nothing to say
    }}
    cards, accounts = trials_tables(report)
    assert cards.splitlines()[-1] == ("2 candidate(s) not tried within the 150 s budget (transformer 64, "
                                      "gru 128); raise search_budget_s to try them")
    assert accounts == ("AutoML search, accounts: only the run's params trained; 1 candidate(s) not tried "
                        "within the 150 s budget (lstm 128); raise search_budget_s to try them")


def test_a_report_from_before_the_skipped_candidates_were_records_still_prints() -> None:
    old = {"budget_s": 150.0, "seconds": 160.0, "skipped": ["lstm 128: needs ~90 s, 0 s left"]}
    assert budget_note(old) == ("1 candidate(s) not tried within the 150 s budget (lstm 128); "
                                "raise search_budget_s to try them")
