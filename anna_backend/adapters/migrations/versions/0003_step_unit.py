"""Run steps say what their epoch counts: "epoch" for encoders, "round" for LightGBM's boosting rounds.

Revision ID: 0003_step_unit
Revises: 0002_score_jobs
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_step_unit"
down_revision = "0002_score_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("run_steps", sa.Column("unit", sa.String(16)))


def downgrade() -> None:
    op.drop_column("run_steps", "unit")
