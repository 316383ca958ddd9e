# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the pinned pip packages and the Debian packages they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox fortunes wordnet-base sctk g++
RECIPE ?= pipelines/default

.PHONY: demo test quick deps venv apt clean bench-deps bench

demo: deps
	$(VENV)/bin/speechkd run $(RECIPE)
	@echo "report:"; ls -1 exp/$$(basename $(RECIPE))/report/report.* 2>/dev/null || echo "  (no report stage in $(RECIPE))"

quick: deps
	$(VENV)/bin/speechkd run pipelines/quick

test: deps
	$(PY) -m pytest -q tests

deps: apt venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir -r requirements.txt || { \
	  echo "pip install into $(VENV) failed; free disk here: $$(df -Ph . | awk 'NR==2 {print $$4}')." \
	       "The pinned install needs about 6.5 GB free (6.2 GB stays in $(VENV))." >&2; \
	  exit 1; }
	$(PY) -m pip install -q --no-cache-dir --no-deps -e .
	touch $(STAMP)

# Installs only the Debian packages that are missing (needs root or sudo).
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

bench-deps: deps
	$(PY) -m pip install -q --no-cache-dir --no-deps -r requirements-bench.txt

# the full-size benchmarks (each also takes --quick)
bench: bench-deps
	$(PY) benchmarks/featurize.py
	$(PY) benchmarks/ctc_kernels.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/streaming.py
	$(PY) benchmarks/qat_step.py

clean:
	rm -rf exp .pytest_cache
