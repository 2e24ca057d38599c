# Two commands do all set-up on a fresh machine with only Python 3.11+:
#   make demo   install everything (incl. the embedded model runtime) and build the demo corpus
#   make test   install everything and run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lock lint bench clean-venv browser

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Headless Chromium for the browser tests (Debian's package; root installs it). Never optional.
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || { echo "error: could not install chromium (Debian's package; run as root or install it yourself): the browser tests need it" >&2; exit 1; }; }

demo: $(STAMP)
	$(VENV)/bin/corpus build --config corpus.toml

# The suite on 2 pytest-xdist workers: most tests wait on subprocesses and loopback servers, so
# two workers halve the wall time on 2 cores. `--dist loadgroup` spreads tests one by one but
# keeps the tests sharing a module fixture (a built project, the Ray cluster) on one worker and
# hands out the slowest files first (tests/support/xdist_groups.py, used by tests/conftest.py,
# since xdist's own loadgroup drops the groups under pytest 9.2). The options
# live here, not in pyproject's addopts, so a plain `pytest tests/test_x.py` stays serial and
# debuggable (--pdb, -s). PYTEST_WORKERS=0 runs the suite serially.
PYTEST_WORKERS ?= 2
PYTEST_XDIST   := -n $(PYTEST_WORKERS) --dist loadgroup

test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_XDIST)

lint: $(STAMP)
	$(VENV)/bin/ruff check builder tests bench
	$(VENV)/bin/ruff format --check builder tests bench

# Regenerate the lock file after changing dependencies in pyproject.toml.
lock:
	$(PY) -m uv pip compile pyproject.toml --extra embedded --extra ray --extra dev --python-version 3.11 -o requirements.lock

clean-venv:
	rm -rf $(VENV)
