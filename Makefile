# The verbs a newcomer needs. `make run` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VAR ?= var
DEMO_PATIENTS ?= 100000
DEMO_SEED ?= 20251231
SPEC := sandbox/data/specs/emr-visits.toml
RAW := $(VAR)/demo/raw
DATASET := $(VAR)/datasets/emr-visits
KEY := $(VAR)/keys/pseudonym.key

.PHONY: install run demo test test-fast lint bench clean-demo translations

$(STAMP): pyproject.toml
	PYTHON=$(PYTHON) infra/scripts/ensure-python.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,spark]'
	touch $@

install: $(STAMP)

$(KEY): | $(STAMP)
	mkdir -p $(dir $(KEY))
	$(BIN)/sandboxctl data keygen $(KEY)

$(RAW)/manifest.json: | $(STAMP)
	$(BIN)/sandboxctl data generate --patients $(DEMO_PATIENTS) --seed $(DEMO_SEED) \
		--out $(RAW) --force

$(DATASET)/metadata.json: $(RAW)/manifest.json $(KEY) $(SPEC)
	$(BIN)/sandboxctl data onboard --raw $(RAW) --spec $(SPEC) --key-file $(KEY) \
		--out $(DATASET) --force

# Demo data: a raw extract, a key, and the restricted dataset onboarded from them.
demo: $(DATASET)/metadata.json

# Start the embedded stack: print the catalog and risk report, then serve the gateway
# (http://127.0.0.1:8700) and the portal (http://127.0.0.1:8600) until Ctrl-C — in demo
# mode: demo accounts for every role and an approved project (sandboxctl demo seed).
run: demo
	$(BIN)/sandboxctl data catalog $(DATASET)
	$(BIN)/sandboxctl data report $(DATASET)
	SANDBOX_DEMO=1 VAR=$(VAR) BIN=$(BIN) infra/scripts/run-stack.sh

# Refresh the translation catalogue after changing user-visible strings.
translations: install
	$(BIN)/pybabel extract -F portal/babel.cfg -k _l -k lazy_gettext -o /tmp/portal.pot .
	$(BIN)/pybabel update -i /tmp/portal.pot -d portal/translations -D messages

# Every test has one tier (tests/tiers.py): unit, service, browser, docker. `make test`
# runs them all; `make test TIERS="unit service"` only those named.
TIERS ?=
TIER_NAMES := unit service browser docker
ifneq ($(filter-out $(TIER_NAMES),$(TIERS)),)
$(error TIERS names tiers among: $(TIER_NAMES))
endif
empty :=
space := $(empty) $(empty)
SELECT := $(if $(strip $(TIERS)),-m "$(subst $(space), or ,$(strip $(TIERS)))")

test: install
	infra/scripts/test-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(SELECT)

# For a quick loop: the tiers that need neither Docker nor a browser (unit and service).
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not docker and not browser"

lint: install
	$(BIN)/ruff check .

bench: demo
	$(BIN)/python bench/onboarding.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/portal.py
	$(BIN)/python bench/sandboxes.py
	$(BIN)/python bench/federated.py
	$(BIN)/python bench/utility.py

clean-demo:
	rm -rf $(VAR)/demo $(VAR)/datasets
