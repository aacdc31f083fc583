# Developer entry points: make install | test | lint | demo | bench | clean | distclean
#
# By default everything is installed into a virtual environment in $(VENV) (.venv), created with
# $(PYTHON). Users who already have detectron2 in an environment (e.g. a CUDA build in a conda env
# on a cluster) install into their current interpreter instead, which keeps that detectron2:
#     make install VENV=          # then PY defaults to `python`; override with PY=... if needed

PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV ?= .venv
# Installed only when `import torch` fails in $(PY).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

ifeq ($(strip $(VENV)),)
PY ?= python
# No venv to hold the stamp: keep one per interpreter prefix, so that switching envs reinstalls.
PREFIX_ID := $(shell $(PY) -c "import hashlib, sys; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:16])" 2>/dev/null)
ifeq ($(PREFIX_ID),)
$(error '$(PY)' does not run; pass PY=/path/to/python)
endif
STAMP := .iuq_d2-stamps/$(PREFIX_ID)
else
PY ?= $(VENV)/bin/python
# Inside the venv, so that deleting the venv also forgets it was set up.
STAMP := $(VENV)/.iuq_d2-installed
endif

.PHONY: install mmdet-stack demo test lint bench clean distclean

install: $(STAMP)

ifneq ($(strip $(VENV)),)
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): | $(VENV)/bin/python
endif

# scripts/install_detectron2.py keeps an importable detectron2 and installs one otherwise.
# The editable install maps the package only once iuq_d2/__init__.py exists: redo it then.
$(STAMP): setup.py scripts/install_detectron2.py Makefile $(wildcard iuq_d2/__init__.py)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) scripts/install_detectron2.py
	$(PY) -m pip install --no-build-isolation -e ".[test]"
	@mkdir -p $(@D)
	@touch $@

# mmdetection for tests/test_mmdet_parity.py only, in a folder of its own that the test alone
# puts on its path (after the environment's packages). --no-deps: pip replaces none of our torch,
# numpy or opencv; the list is what importing mmdet's models needs beyond the environment.
MMDET_STACK := .mmdet-stack
MMDET_STACK_SPEC := mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0 scipy==1.17.1 six==1.17.0 \
	addict==2.4.0 yapf==0.43.0 platformdirs==4.14.9 rich==15.0.0 markdown-it-py==4.3.0 \
	mdurl==0.1.2 pygments==2.21.0 terminaltables==3.1.10
# The stamp names the spec, so that a changed list reinstalls.
MMDET_STAMP := $(MMDET_STACK)/.installed-$(shell echo '$(MMDET_STACK_SPEC)' | cksum | cut -d' ' -f1)

mmdet-stack: $(MMDET_STAMP)

$(MMDET_STAMP): | $(STAMP)
	rm -rf $(MMDET_STACK) $(MMDET_STACK).tmp
	$(PY) -m pip install --no-deps --target $(MMDET_STACK).tmp $(MMDET_STACK_SPEC)
	mv $(MMDET_STACK).tmp $(MMDET_STACK)
	@touch $@

demo: install
	$(PY) -m iuq_d2.demo

test: install mmdet-stack
	$(PY) -m pytest -q -ra $(PYTEST_ARGS) tests
	TRITON_INTERPRET=1 $(PY) -m pytest -q -ra $(PYTEST_ARGS) tests/triton_interp

# The formatter and linter configured in ruff.toml.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install
	$(PY) benchmarks/train_speed.py

clean:
	rm -rf build dist .eggs .pytest_cache .ruff_cache *.egg-info
	find . -path ./.git -prune -o $(if $(strip $(VENV)),-path ./$(VENV) -prune -o) \
		-name __pycache__ -type d -prune -exec rm -rf {} +

# Removes $(VENV) only if it is a venv (has pyvenv.cfg): never a user's conda env.
distclean: clean
	rm -rf .iuq_d2-stamps $(MMDET_STACK)
	if [ -f "$(VENV)/pyvenv.cfg" ]; then rm -rf "$(VENV)"; fi
