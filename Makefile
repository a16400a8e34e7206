# Hearth: `make run` starts everything on embedded defaults (a local PostgreSQL it creates); `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test chaos venv services lint bench clean migrate

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

run: venv
	@scripts/run.sh

test: venv
	@scripts/services.sh postgres redis docker haproxy tinyproxy xmlsec1 chromium imagetools
	@scripts/images/ensure.sh
	@scripts/test-idp.sh
	$(PY) -m pytest $(PYTEST_ARGS)

# Issue 12's chaos suite alone (`make test` runs it too: tests/chaos, marked `chaos`); prints the table.
chaos: venv
	@scripts/services.sh postgres redis docker haproxy
	$(PY) -m pytest -m chaos tests/chaos -s $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

migrate: venv
	$(PY) manage.py migrate

clean:
	rm -rf var/static var/artifacts

# Workspace images, built offline (debootstrap + npm + docker import); FORCE=1 rebuilds what exists.
.PHONY: images
images:
	@FORCE=$(FORCE) scripts/images/ensure.sh
