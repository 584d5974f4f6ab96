# Every target that needs the virtual environment depends on its stamp, so `make test` (or
# `make demo`) on a fresh machine with only python3 and make sets everything up by itself.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTO_ROOT := protos
PROTOS := $(shell cd $(PROTO_ROOT) && find . -name '*.proto' | sed 's|^\./||' | sort)
# The generated modules live under this import name (see README, "Generated stubs").
PB_PKG := agentspace_grpc_pb
OUT    := generated

.PHONY: install generate check-generated lint typecheck test demo bench emulator clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

# protoc from the pinned grpcio-tools. The proto root is mapped to the virtual directory
# $(PB_PKG), so the files register as "$(PB_PKG)/google/..." and the modules import as
# $(PB_PKG).google...: unique in any interpreter. googleapis-common-protos gives google/api.
define protoc
	$(BIN)/python scripts/generate.py --proto-root $(PROTO_ROOT) --package $(PB_PKG) --out $(1) $(PROTOS)
endef

generate: $(STAMP)
	rm -rf $(OUT)/$(PB_PKG)
	$(call protoc,$(OUT))
	@# the editable install maps the packages that existed when it ran
	$(BIN)/python -m pip install --quiet --no-deps -e .

check-generated: $(STAMP)
	@tmp=$$(mktemp -d) && $(call protoc,$$tmp) >/dev/null && \
	  if diff -r $$tmp/$(PB_PKG) $(OUT)/$(PB_PKG); then echo "generated/ is up to date"; rm -rf $$tmp; \
	  else echo "generated/ differs from the protos: run 'make generate' and commit"; rm -rf $$tmp; exit 1; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/agentspace-grpc demo --agent

bench: $(STAMP)
	$(BIN)/agentspace-grpc bench

emulator: $(STAMP)
	$(BIN)/agentspace-grpc emulator

clean:
	rm -rf $(VENV) build dist *.egg-info
