# Every target creates or refreshes the virtualenv it needs (.venv), so each
# works on a fresh clone. Python 3.11 is the only prerequisite; `make test` also
# installs the few Debian packages some tests need (.ci/system-deps, as root).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: cluster test check pytest system-deps nemesis nemesis-long sim-long soak bench bench-core bench-master bench-namespace bench-data bench-failover lock clean

# The product: a local cluster with embedded defaults.
cluster: system-deps $(STAMP)
	$(BIN)/quorumfs local

# The whole test suite: lint, types, layer contracts, then every test.
test: check pytest

check: system-deps $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: system-deps $(STAMP)
	$(BIN)/pytest -n 2 -m "not soak"

# Debian packages: python3-venv for .venv, a DNS server for the discovery test, and
# Chromium with its driver for the console test.
system-deps:
	@bash .ci/system-deps

# 20,000 simulator seeds (the test suite runs 500); prints faults and operations checked.
sim-long: $(STAMP)
	$(BIN)/python tests/simulation/run_seeds.py --first 100000 --count 20000 --jobs 2

# The nemesis suite over real processes (needs root: masters run in network
# namespaces): the short run that make test includes (3 rounds of 40 s), or 30 rounds,
# half on 3 masters and half on 5 (NEMESIS_ROUNDS, NEMESIS_SEED to change); the report
# is written to artifacts/nemesis/ and printed.
nemesis: $(STAMP)
	$(BIN)/pytest tests/nemesis -k short -s

nemesis-long: $(STAMP)
	NEMESIS_ROUNDS=$${NEMESIS_ROUNDS:-30} $(BIN)/pytest -m soak tests/nemesis -k long -s

# Every long randomized run.
soak: sim-long

bench: bench-core bench-master bench-namespace bench-data bench-failover

bench-core: $(STAMP)
	$(BIN)/python bench/raft_core.py

# Journals go under the work tree's disk (not /tmp, which may be tmpfs) so fsync is real.
bench-master: $(STAMP)
	$(BIN)/python bench/master_creates.py --dir .

bench-namespace: $(STAMP)
	$(BIN)/python bench/namespace_1m.py --dir .

bench-data: $(STAMP)
	$(BIN)/python bench/data_path.py --dir .

bench-failover: $(STAMP)
	$(BIN)/python bench/failover.py --dir .

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Re-resolve the newest compatible versions into constraints.txt.
lock:
	rm -rf /tmp/quorumfs-lock && $(PYTHON) -m venv /tmp/quorumfs-lock
	/tmp/quorumfs-lock/bin/pip install --quiet -e '.[dev]'
	(echo '# Exact versions of every dependency (runtime and development), installed with'; \
	 echo '# `pip install -c constraints.txt`. Refresh deliberately: `make lock`.'; \
	 /tmp/quorumfs-lock/bin/pip freeze --exclude-editable) > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
