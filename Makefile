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

.PHONY: setup demo test lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) venv --quiet --allow-existing -p 3.11 $(VENV)
	$(UV) pip install --quiet -p $(PY) -r requirements.lock
	$(UV) pip install --quiet -p $(PY) --no-deps -e .
	@touch $@

# Re-pin after editing pyproject.toml (never commit uv.lock: it records registry URLs).
lock:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) pip compile pyproject.toml --extra test -p 3.11 --quiet -o requirements.lock

demo: setup
	$(PY) -m flows.demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cutover .pytest_cache
