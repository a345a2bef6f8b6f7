# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench check-platform check-platform-wheels powercut clean

# The systemd extra (systemd-python) compiles against libsystemd, so it is added where
# pkg-config finds libsystemd (.ci/run installs libsystemd-dev first): `make demo` still works
# on a machine without it, and the tests that need it skip there.
EXTRAS := test$(shell pkg-config --exists libsystemd 2>/dev/null && echo ,systemd)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/relay demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@if command -v shellcheck >/dev/null; then shellcheck scripts/install scripts/mosquitto-dropin scripts/check-platform \
		tests/platform/smoke tests/platform/wheels tests/powercut/install-deps .ci/run; \
	else echo "shellcheck not installed: scripts not linted"; fi

# Most tests wait on brokers, sockets and child processes rather than the CPU, so four
# workers fit two cores; --dist loadfile keeps a module's tests (and its shared private
# broker) on one worker.
test: lint
	$(BIN)/pytest -n 4 --dist loadfile

# Every benchmark, one summary table (~50 min; `make bench BENCH=--quick`: ~5 min).
bench: $(BIN)/.installed
	$(BIN)/python tests/bench/run_all $(BENCH)

# P1 across power cuts (tests/powercut/README.md): relay in a VM (qemu, TCG) whose power is
# pulled CUTS times at random moments, 400 events per cut; ends with one line
# "power cuts: N, acknowledged: M, lost: L, duplicates: D". As root it installs qemu,
# debootstrap, e2fsprogs and mosquitto when missing; the guest is built once (~75 s) and
# cached in ~/.cache/relay-powercut. ~20-30 s per cut. More: POWERCUT="--durability normal
# --expect-loss", POWERCUT="--spool commit_interval=200ms", POWERCUT="--seed N".
CUTS ?= 50
POWERCUT ?=
powercut: $(BIN)/.installed
	tests/powercut/install-deps
	$(BIN)/python -m tests.powercut.run --cuts $(CUTS) $(POWERCUT)

# README's Pi install, run in an emulated Debian 12 root per architecture (root; cold ~10 min
# each, warm ~3-4 min): `make check-platform ARCH=arm64` for one.
ARCH ?= arm64 armhf
check-platform:
	@for arch in $(ARCH); do scripts/check-platform $$arch || exit 1; done

# Its short form, in CI: every dependency has a wheel for both (seconds, nothing emulated).
check-platform-wheels: $(BIN)/.installed
	tests/platform/wheels $(ARCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
