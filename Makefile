# Wan LoRA Studio: `make run` installs and starts the studio, `make test` installs and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build where one lies on disk (CI, dev machines); a CUDA machine keeps the torch it has.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The exact versions the suite last passed with (torch excepted: the machine picks its build).
CONSTRAINTS := constraints.txt

.PHONY: install install-dev browser run test lint format bench constraints clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/.installed: requirements.txt $(CONSTRAINTS) | $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev browser

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

run: install
	$(PY) app.py $(ARGS)

test: install-dev
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (not part of the tests): ratios measured in one run, see bench/README.md.
bench: install-dev
	$(PY) -m bench

# After the suite passed on new versions: record them (every installed package but torch's own stack).
constraints: install-dev
	{ sed -n '/^#/p' $(CONSTRAINTS); $(PIP) freeze --exclude-editable \
	  | grep -viE '^(torch|triton|nvidia-.*-cu[0-9]+|wan-lora-studio)==' \
	  | sed 's/$$/ ; python_version >= "3.11"/'; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
