"""Errors a user can cause, each mapped to one HTTP status by the API."""

from __future__ import annotations

from typing import Any

MAX_ISSUES = 20  # problems listed in one rejection; the rest are summed up in a last entry


class DomainError(Exception):
    """Base class: ``str(error)`` is a message naming what to fix."""


class NotFound(DomainError):
    """An id or name that does not exist (404)."""


class Conflict(DomainError):
    """The request clashes with the current state: a taken name, a finished run (409)."""


class Forbidden(DomainError):
    """The user's role does not allow this (403)."""


class Unauthenticated(DomainError):
    """No valid credentials (401)."""


class InvalidInput(DomainError):
    """Input that breaks a rule (422); ``issues`` are the ready-made ``detail`` entries.

    Two shapes: field problems ``{"loc": [...], "msg", "type"}`` (as FastAPI reports them) and sample-file
    problems ``{"row", "column", "msg"}`` (row = 1-based data row, header excluded).
    """

    def __init__(self, issues: list[dict[str, Any]]):
        self.issues = issues
        super().__init__("; ".join(str(issue.get("msg")) for issue in issues[:3]))

    @classmethod
    def field(cls, loc: tuple[str | int, ...] | list[str | int], msg: str) -> InvalidInput:
        return cls([{"loc": list(loc), "msg": msg, "type": "value_error"}])

    @classmethod
    def rows(cls, problems: list[dict[str, Any]]) -> InvalidInput:
        """Sample-file problems, cut to ``MAX_ISSUES`` plus one summary entry."""
        shown = problems[:MAX_ISSUES]
        if len(problems) > MAX_ISSUES:
            more = len(problems) - MAX_ISSUES
            shown = [*shown, {"row": None, "column": None, "msg": f"... and {more} more problem(s)"}]
        return cls(shown)


class ServiceUnavailable(DomainError):
    """An outside service ANNA needs (RabbitMQ, Airflow, MLflow) is not reachable or not ready (503);
    the message names the service, where ANNA looked for it and what to do."""
