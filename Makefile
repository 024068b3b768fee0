# One command each on a fresh machine: `make demo`, `make test`.
# Everything lives in .venv, built with uv from the URL-free requirements.lock.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(PYTHON) -m uv
STAMP  := $(VENV)/.installed

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_CLI_PROMPT := false

.PHONY: setup compile demo test ui-check lock clean bench soak

setup: $(STAMP)

# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set (containers, CI) every
# process would otherwise compile its imports from source (great_expectations alone: ~10 s of CPU).
$(STAMP): requirements.lock pyproject.toml cutover/_row_md5.c cutover/_record_index.c cutover/_record_pairs.c cutover/_copy_binary.c cutover/_csv_fields.c cutover/_arrow_columns.h cutover/_loader_values.h
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) venv --quiet --allow-existing -p 3.11 $(VENV)
	$(UV) pip install --quiet -p $(PY) --compile-bytecode -r requirements.lock
	$(UV) pip install --quiet -p $(PY) --no-deps -e .
	@touch $@

# The project's own modules too, before a measured run (stale bytecode is recompiled by Python itself).
compile: setup
	@$(PY) -m compileall -q cutover flows tasks

# Re-pin after editing pyproject.toml (never commit uv.lock: it records registry URLs).
lock:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) pip compile pyproject.toml --extra test -p 3.11 --quiet -o requirements.lock

demo: setup
	$(PY) -m flows.demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Browser check: Playwright drives Debian's Chromium through the Prefect UI's Resume form of a paused
# promote run (tests/browser). Playwright's own browser builds are never downloaded.
PLAYWRIGHT_VERSION := 1.65.2
CHROMIUM ?= /usr/bin/chromium
ui-check: setup
	@$(PY) -c "import importlib.metadata as m; assert m.version('playwright') == '$(PLAYWRIGHT_VERSION)'" 2>/dev/null \
		|| $(UV) pip install --quiet -p $(PY) playwright==$(PLAYWRIGHT_VERSION)
	@test -x $(CHROMIUM) || { echo "ui-check needs Chromium at $(CHROMIUM): apt-get install -y chromium" >&2; exit 1; }
	CUTOVER_BROWSER=1 CUTOVER_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -p no:cacheprovider tests/browser -q $(PYTEST_ARGS)

# Speed against psql \copy of the same file, same run, same database (figures: bench/results.json).
ROWS ?= 1000000
REPEAT ?= 3
bench: compile
	$(PY) bench/bench.py --rows $(ROWS) --repeat $(REPEAT)

# Fault-injection campaigns (tests/test_faults.py, marker soak): SIGKILL at CUTOVER_SOAK_KILLS random
# moments of a sync (half as many across the transitions, as many of a backup); CUTOVER_SOAK_SEED replays a campaign.
# Huge files (tests/test_huge.py): a CUTOVER_HUGE_ROWS-row leads file (default 10M, ~2.7 GB, ~25 min)
# with 0.1% bad rows, synced by the CLI: exact accounting and rejects, peak RSS <= 300 MB.
CUTOVER_SOAK_KILLS ?= 25
soak: setup
	CUTOVER_SOAK_KILLS=$(CUTOVER_SOAK_KILLS) $(PY) -m pytest -p no:cacheprovider -m soak tests/test_faults.py tests/test_huge.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cutover .pytest_cache
