# rtlink: the one entry point. A newcomer needs two commands:
#   make demo   installs what is missing, builds, runs the demo at http://127.0.0.1:8080
#   make test   installs what is missing, runs every test suite
SHELL := /bin/bash
.DEFAULT_GOAL := help

DEMO_ADDR ?= 127.0.0.1:8080
# The demo's server API key, for examples/metrics-pusher.py (the demo is not for production).
DEMO_API_KEY ?= rtlink-demo-api-key

.PHONY: help setup build build-server build-wasm package demo demo-screenshot test test-native test-protocol test-browser test-e2e test-faults test-abuse bench bench-quick bench-client fuzz

help:
	@echo "make demo    build and run the demo chat at http://$(DEMO_ADDR)"
	@echo "make test    run every test suite (native, protocol, browser, end-to-end, faults, abuse)"
	@echo "sub-targets: setup build test-native test-protocol test-browser test-e2e test-faults test-abuse bench bench-quick bench-client demo-screenshot fuzz"

setup:
	@scripts/setup

build-server:
	cargo build --profile server -p rtlink-server

build-wasm: package

build: build-server build-wasm

demo: setup build
	rm -rf www/pkg && cp -r pkg www/pkg
	@echo
	@echo "  rtlink demo: open http://$(DEMO_ADDR)  (Ctrl-C to stop)"
	@echo "  live metrics on the dashboard: python3 examples/metrics-pusher.py --url http://$(DEMO_ADDR) --api-key $(DEMO_API_KEY)"
	@echo
	target/server/rtlink-server --listen $(DEMO_ADDR) --static-dir www --demo-auth --api-key $(DEMO_API_KEY)

test: setup
	$(MAKE) test-native
	$(MAKE) test-protocol
	$(MAKE) test-browser
	$(MAKE) test-e2e
	$(MAKE) test-faults
	$(MAKE) test-abuse

# rustfmt (default settings) over the workspace, then the protocol codec, the sans-IO client core
# (virtual clock) and the server's integration tests (the multi-process fault and abuse tests run
# in test-faults and test-abuse).
test-native: setup
	@if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check >/dev/null \
	  || { echo "rustfmt: the workspace is not formatted; run cargo fmt --all"; exit 1; }; \
	else echo "rustfmt is not installed: format check skipped"; fi
	cargo test --workspace -- --skip fault_ --skip abuse_

# The protocol conformance suite (tests/protocol/): a third-party client written only from
# docs/PROTOCOL.md (Python 3 standard library: raw HTTP, a minimal WebSocket client, an SSE
# parser, its own JWTs) against real rtlink-server processes (and a redis-server for the two-node
# scenarios) on 127.0.0.1 it starts and stops.
# It checks what our own codec cannot: field names, statuses, bodies, headers, close codes as the
# document states them. About 20 seconds.
test-protocol: setup
	cargo build -p rtlink-server
	python3 -m unittest discover -s tests/protocol -t tests/protocol

# The npm package (size report), its .d.ts under tsc --strict, then the package in headless
# Chromium against real servers (scripts/with-servers starts and stops them), and the transport
# ladder scenarios through the fault proxy (tests/browser_ladder.rs: their LADDER-FIGURES lines
# are the figures in RELIABILITY.md). The tests drive pkg/rtlink.js through wasm-bindgen-test,
# run by wasm-bindgen-test-runner with the chromedriver and webdriver.json at the crate root (no
# wasm-pack). WASM_BINDGEN_TEST_TIMEOUT bounds each test file's run.
BROWSER_TEST_ENV := CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=300
test-browser: setup package
	cd tests/js && npx tsc -p tsconfig.json
	$(BROWSER_TEST_ENV) scripts/with-servers cargo test --target wasm32-unknown-unknown --features std \
	  --test browser --test browser_ladder --test browser_failover --test browser_scopes -- --nocapture

package: setup
	scripts/package

# Playwright (playwright-core + Debian's Chromium) drives the demo against a real server and Redis,
# a Vite app installs the packed tarball from pkg/, and a scripted WebSocket server sends the
# package frames no real server sends (tests/e2e/bad-frames.test.mjs).
test-e2e: setup package
	cargo build -p rtlink-server
	rm -rf www/pkg && cp -r pkg www/pkg
	node --test --test-concurrency=1 tests/e2e/

# Regenerates docs/demo.png (the README's screenshot) with the e2e conversation test. The only
# target that writes a tracked file; test runs write their screenshot to a temporary directory.
demo-screenshot: setup package
	cargo build -p rtlink-server
	rm -rf www/pkg && cp -r pkg www/pkg
	RTLINK_SCREENSHOT=$(CURDIR)/docs/demo.png node --test --test-concurrency=1 --test-name-pattern=screenshot tests/e2e/demo.test.mjs

# Fault scenarios (RELIABILITY.md): real rtlink-server and redis-server processes behind the
# faultkit proxy, driven by the real client core. One at a time: they measure timings.
FAULT_SUITES := --test faults --test faults_edges --test faults_cluster --test faults_defects --test faults_endpoints
test-faults:
	@command -v redis-server >/dev/null || scripts/setup
	cargo test -p rtlink-server $(FAULT_SUITES) -- fault_ --test-threads 1 --nocapture

# Abuse tests (SECURITY.md): each attacks a real rtlink-server process on 127.0.0.1 and asserts
# that a bystander is unaffected.
# Their figures (history and publish budgets, Redis stats, the 5,000-client storm) are printed.
# A minute or two; needs redis-server (setup installs it).
test-abuse: setup
	cargo test -p rtlink-server --test abuse -- --nocapture

# cargo-fuzz targets (fuzz/): frame decoder, SSE and long-poll envelopes, upstream batches,
# tokens; FUZZ_RUNS executions each (default 10 million). Needs nightly + cargo-fuzz; says so
# and succeeds without them. Not part of make test.
fuzz:
	scripts/fuzz

# Every benchmark (docs/BENCHMARKS.md, rewritten with its plots in docs/bench/): the Chromium client
# benchmark, then fan-out, idle memory, large rooms and the reconnect storm against Socket.IO 4.8
# and a raw WebSocket server. Minutes; the machine and its load are in the report.
bench: setup package
	@bench/setup
	node bench/client/run.mjs
	target/server/rtlink-bench full --report docs/BENCHMARKS.md

# Messages/s delivered to a JS listener in headless Chromium: the rtlink client vs socket.io-client.
bench-client: setup package
	@bench/setup
	node bench/client/run.mjs

# Side by side with Socket.IO 4.8 and a raw WebSocket server, each in its own process on
# 127.0.0.1 (bench/, docs/BENCHMARKS.md). Prints ratios measured in one run; never asserts times.
# Its last line: fanout_vs_socketio=X.XX fanout_vs_raw=Y.YY idle_kb_per_conn=Z.Z
bench-quick:
	@bench/setup
	target/server/rtlink-bench quick
