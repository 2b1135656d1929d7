# The two commands: `make book` (run every chapter, print key results) and `make test` (the whole test suite).
# Both create .venv on first use; later runs re-use it and start in seconds.
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.accel-installed
# A CPU build of torch, installed only when the venv cannot already import one (the venv sees system packages, so a
# torch you already have is re-used). Override for another build, e.g. TORCH_SPEC="torch==2.14.1".
TORCH_SPEC ?= torch==2.13.0
PROFILE    ?= auto
PIP        := $(PY) -m pip --disable-pip-version-check -q
CHROMIUM   := /usr/bin/chromium

.PHONY: book test lab verify references spread outputs gpu-check site min-versions setup clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(STAMP): pyproject.toml | $(PY) $(CHROMIUM)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC) (CPU)"; $(PIP) install "$(TORCH_SPEC)"; }
	$(PIP) install -e ".[book,dev]"
	@touch $@

# The browser test's one system dependency: Debian's Chromium, installed when running as root with apt-get (as CI
# does); otherwise a note, and the browser test fails saying what to install.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else \
		echo "note: the browser test needs $(CHROMIUM); install it as root: apt-get install --no-install-recommends chromium"; \
	fi

## make book: execute every chapter (profile auto: gpu on CUDA, else cpu; ACCEL_PROFILE=smoke|cpu|gpu|paper overrides) into build/
book: $(STAMP)
	$(PY) -m accel.book.build --profile $(PROFILE)

## make test: the whole test suite (unit tests, smoke notebooks vs references, the browser test)
test: $(STAMP)
	$(PY) -m pytest

## make lab: JupyterLab on notebooks/
lab: $(STAMP)
	$(PY) -m jupyter lab notebooks/

## make verify: slow; the cpu-profile claim tests, then nbval on the committed notebooks in their recorded profile
verify: $(STAMP)
	$(PY) -m pytest -m claims tests/claims
	$(PY) -m accel.book.verify

## make references: re-run every chapter in smoke and rewrite tests/reference/, printing what changed
references: $(STAMP)
	$(PY) -m accel.book.references

## make spread: slow; every chapter in smoke under each CPU kernel, seed and one thread, into
## data/results/smoke_spread.json: the measured spreads that the smoke tolerances are set from
spread: $(STAMP)
	$(PY) -m accel.book.spread

## make outputs: re-execute the committed notebooks in place (profile cpu unless PROFILE=...), for committing
outputs: $(STAMP)
	$(PY) -m accel.book.build --inplace --profile $(if $(filter auto,$(PROFILE)),cpu,$(PROFILE))

## make gpu-check: on a CUDA machine, every chapter in the gpu profile and every benchmark on the GPU, recorded as
## data/results/*.gpu.json (device, versions, commit, seconds); refuses to start without CUDA
gpu-check: $(STAMP)
	$(PY) -m accel.book.gpu_check

## make site: the book as a static website from the committed notebooks (none executed), into build/site/index.html;
## Jupyter Book 1.x: maintained, builds offline (bundled theme, local search index); sources in accel/book/site/
site: $(STAMP)
	$(PY) -m accel.book.site

## make min-versions: slow (8 min with pip's cache warm; the first run also downloads torch's ~3 GB CUDA build from
## PyPI unless MIN_PIP_ARGS names a CPU index); the lowest versions that pyproject.toml allows (core, book, test tools),
## exactly, in a fresh venv (build/min-versions) on the lowest Python allowed (found on PATH or under pyenv;
## MIN_PYTHON=... overrides): the wheel alone imports without matplotlib, then the unit tests and chapter 01 in smoke
min-versions: $(STAMP)
	$(PY) tests/min_versions.py $(if $(MIN_PYTHON),--python "$(MIN_PYTHON)") $(if $(MIN_PIP_ARGS),--pip-args "$(MIN_PIP_ARGS)")

clean:
	rm -rf build $(VENV)
