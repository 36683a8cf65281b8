"""Steps recorded before 0003 get their unit: LightGBM's step counted boosting rounds, every other one epochs.

Without it a run trained before 0003 showed its LightGBM step as "epoch 150/3000".

Revision ID: 0004_backfill_step_unit
Revises: 0003_step_unit
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_backfill_step_unit"
down_revision = "0003_step_unit"
branch_labels = None
depends_on = None

BOOSTING_STEP = "train_lightgbm"  # anna_models.pipeline.train_lightgbm; migrations do not import the models


def upgrade() -> None:
    steps = sa.table("run_steps", sa.column("name", sa.String), sa.column("epoch", sa.Integer),
                     sa.column("unit", sa.String))
    old = steps.c.unit.is_(None) & steps.c.epoch.is_not(None)
    op.execute(steps.update().where(old & (steps.c.name == BOOSTING_STEP)).values(unit="round"))
    op.execute(steps.update().where(old).values(unit="epoch"))


def downgrade() -> None:
    """Nothing to undo: 0003's downgrade drops the column."""
