# Quick start: `make demo` and `make test`. Each target installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 30

.PHONY: demo test test-python test-micropython bench bench-outage lint format system-deps \
	browser-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Mosquitto is the real broker the tests and the demo talk to; openssl makes the
# self-signed certificate of the TLS listener test.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || ( (command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients)) || \
		echo "install mosquitto to publish to MQTT" )
	@command -v openssl >/dev/null 2>&1 || ( command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq openssl )
	@# systemd-analyze verifies the unit `gateway install-service` writes (tests/test_systemd.py).
	@command -v systemd-analyze >/dev/null 2>&1 || ( command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq systemd )

# Debian's chromium (driven by playwright, which downloads no browser of its own) runs the
# dashboard and EventSource tests.
browser-deps:
	@(test -x /usr/bin/chromium && test -x /usr/bin/chromedriver) || ( command -v apt-get \
		>/dev/null && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver )

demo: $(STAMP) system-deps
	$(BIN)/gateway demo --seconds $(DEMO_SECONDS)

test: $(STAMP) system-deps browser-deps lint test-python test-micropython test-wheel

# Installed the way users install it: the wheel in a fresh venv outside the checkout runs
# host-tools simulate --micropython, provision --dry-run and the device conformance suite.
test-wheel: $(STAMP)
	$(BIN)/python tests/wheel_check.py

# Two workers, one test module each at a time (pytest-xdist --dist loadfile): most tests wait
# on brokers, devices and timeouts rather than the CPU, and a module keeps its own fixtures.
test-python: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# gateway/core is portable: its tests run again under the real MicroPython unix port.
test-micropython: $(STAMP)
	$(BIN)/python tests/run_micropython.py

# Benchmarks print JSON (not timed tests): latency at 1,000 readings/s, the highest
# zero-loss rate with one message per reading (basic) and with batches (high_throughput),
# and wire-protocol (COBS) devices as fast as acknowledgements allow.
# bench/overload.py: devices written as fast as the ptys accept (a writer process each) to
# MQTT one reading per message and batched, 4 devices to all sinks, 1,000/s latency, and
# one device behind a 1 MB/s broker link. bench/fleet.py: 20 gateway processes with 4
# simulated devices each into a 3-node NATS cluster, every reading counted (docs/scaling.md).
# The board builds' heap soaks, free heap per minute: the gateway node in 192k, the sensor
# node in 96k (their figures are in firmware/*/README.md).
bench: $(STAMP) system-deps
	$(BIN)/python bench/e2e.py --preset realtime --rate 1000 --seconds 10
	$(BIN)/python bench/e2e.py --preset basic --find-max --seconds 5
	$(BIN)/python bench/e2e.py --preset high_throughput --find-max --seconds 5
	$(BIN)/python bench/cobs.py --readings 100000
	$(BIN)/python bench/overload.py --all
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/gateway_node_soak.py --minutes 10
	$(BIN)/python bench/sensor_node_soak.py --minutes 10

# The 60 s broker outage at 5,000 readings/s (about three minutes).
bench-outage: $(STAMP) system-deps
	$(BIN)/python bench/e2e.py --outage 60 --rate 5000

lint: $(STAMP)
	$(BIN)/ruff check gateway host_tools tests bench
	$(BIN)/ruff format --check gateway host_tools tests bench

format: $(STAMP)
	$(BIN)/ruff format gateway host_tools tests bench
	$(BIN)/ruff check --fix gateway host_tools tests bench

clean:
	rm -rf $(VENV) build *.egg-info
