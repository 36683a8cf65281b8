# ANNA: `make run` starts the service with demo data, `make test` runs the whole suite.
# Both install what is missing into .venv first (from requirements.lock, so every machine gets the same versions).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export ANNA_DATA_DIR ?= $(CURDIR)/data
DEMO_CLIENTS ?=  # empty: anna demo-data's default (anna_models.config.DEMO_CLIENTS)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install bench-install run run-full demo-data test lint bench lock clean-data

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ANNA needs Python 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

demo-data: install
	@test -f $(ANNA_DATA_DIR)/marts/credit_history/manifest.json || \
		$(BIN)/anna demo-data $(if $(DEMO_CLIENTS),--clients $(DEMO_CLIENTS)) --seed 0 --data-dir $(ANNA_DATA_DIR)

run: demo-data
	$(BIN)/anna serve --host $(HOST) --port $(PORT)

# Full mode without Docker: needs PostgreSQL and RabbitMQ running here; starts Airflow and MLflow itself.
run-full: demo-data
	$(BIN)/anna run-full --port $(PORT)

lint: install
	$(BIN)/ruff check anna_backend anna_models dags bench tests
	$(BIN)/mypy anna_backend anna_models dags

test: lint
	$(BIN)/python -m pytest -q

# Benchmarks run beside their peers (LightGBM, lifetimes, DuckDB, pytorch-lifestream), installed into a venv
# of their own so that none of them becomes a dependency of ANNA.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
CDNOW ?= ../shared/datasets/cdnow/CDNOW_master.txt

bench-install: $(BENCH_STAMP)

$(BENCH_STAMP): requirements.lock bench/requirements.txt pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock -r bench/requirements.txt
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps pytorch-lifestream==0.7.0
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

bench: bench-install
	$(BENCH_VENV)/bin/python bench/bench_data.py
	$(BENCH_VENV)/bin/python bench/extraction.py
	$(BENCH_VENV)/bin/python bench/train_demo.py
	$(BENCH_VENV)/bin/python bench/train_demo.py --pretrain-epochs 12
	$(BENCH_VENV)/bin/python bench/train_demo.py --clients 100000 --no-throughput
	$(BENCH_VENV)/bin/python bench/throughput.py
	$(BENCH_VENV)/bin/python bench/pretrain.py
	$(BENCH_VENV)/bin/python bench/oracle_gap.py
	$(BENCH_VENV)/bin/python bench/cdnow.py $(CDNOW)
	$(BENCH_VENV)/bin/python bench/cdnow_ceiling.py $(CDNOW)

# Re-pin every dependency after changing pyproject.toml (needs a working .venv).
lock:
	$(BIN)/python -m pip freeze --exclude-editable --exclude anna | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > requirements.lock

clean-data:
	rm -rf $(ANNA_DATA_DIR)
