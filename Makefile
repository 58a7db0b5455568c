# Every target installs what it needs first (tools/bootstrap is quick when nothing is missing).
VENV := .venv
BIN := $(VENV)/bin
SLS_FILES = $(shell find hcloud_lb -name '*.sls' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: test lint bootstrap demo bench bench-cost bench-hcloud-ip lab-up lab-down

bootstrap:
	@tools/bootstrap

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@if [ -n "$(SLS_FILES)" ]; then echo "$(BIN)/salt-lint <formula .sls files>"; $(BIN)/salt-lint $(SLS_FILES); fi

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

demo: bootstrap
	$(BIN)/python test/demo.py

bench: bench-cost
	$(BIN)/python test/bench/failover_lab.py
	$(BIN)/python test/bench/project_lab.py

bench-cost: bootstrap
	$(BIN)/python test/bench/failover_cost.py

bench-hcloud-ip: bootstrap
	$(BIN)/python test/bench/hcloud_ip_failover.py

lab-up: bootstrap
	$(BIN)/python test/lab up

lab-down: bootstrap
	$(BIN)/python test/lab down
