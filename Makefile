# One entry point for every task: README and CI call these targets, nothing else.
# `make demo` and `make test` do all set-up themselves on a fresh machine.

CARGO ?= cargo
HARNESS := e2e/harness
# Extra arguments for the demo, e.g. `make demo ARGS=--keep-running`.
ARGS ?=

.PHONY: all build crds reference docs fmt fmt-check clippy unit e2e soak-gitops test-chaos fuzz e2e-up e2e-down tools static image chart-check demo plots bench-scale bench-peers bench-registry bench-refresh bench-velocity test clean

all: build

build:
	$(CARGO) build --workspace --all-targets

# Regenerates config/crd/ and the chart's CRD templates from the Rust types (a unit test fails when stale).
crds:
	$(CARGO) run -q -p freshen -- crd --output-dir config/crd
	mkdir -p charts/freshen/templates/crds
	$(CARGO) run -q -p freshen -- crd --helm --output-dir charts/freshen/templates/crds

# Regenerates the guide's reference pages (flags, metrics, Event reasons,
# conditions, annotations, CRD fields) from the code (a unit test fails when stale).
reference:
	$(CARGO) run -q -p freshen -- reference --output-dir docs/src/reference

# The user guide (an mdBook) into target/book. mdbook is installed once
# outside the clone, keyed by its version. A warning fails the build, and
# every link between the guide's pages (and README's into it) is checked.
MDBOOK_VERSION := 0.5.4
MDBOOK_ROOT := $(HOME)/.cache/freshen-e2e/tools/mdbook-$(MDBOOK_VERSION)
MDBOOK := $(MDBOOK_ROOT)/bin/mdbook
$(MDBOOK):
	$(CARGO) install mdbook --version $(MDBOOK_VERSION) --locked --root $(MDBOOK_ROOT)
docs: $(MDBOOK)
	$(CARGO) run -q -p freshen -- reference --check --output-dir docs/src/reference
	docs/check-book.sh $(MDBOOK)

fmt:
	$(CARGO) fmt --all

fmt-check:
	@$(CARGO) fmt --all -- --check || { echo "cargo fmt --check failed: run 'make fmt' and commit" >&2; exit 1; }

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Pure and in-process tests: no cluster, registry or Prometheus needed.
unit:
	$(CARGO) test --workspace --exclude freshen-e2e

# Builds (or takes from the cache) the Go-built control-plane tools.
tools:
	$(HARNESS)/build-tools.sh

# Starts the real control plane, registry and Prometheus (idempotent).
e2e-up:
	$(HARNESS)/up.sh

e2e-down:
	$(HARNESS)/down.sh

# The statically linked release binary the container image carries
# (glibc's static build on the installed target: no musl target needed).
STATIC_TARGET := x86_64-unknown-linux-gnu
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p freshen --target $(STATIC_TARGET)

# freshen's OCI image, assembled without a Docker engine (the Dockerfile
# builds the same for people with one) and pushed to the harness registry.
image: e2e-up static
	$(CARGO) build -p freshen-e2e
	./target/debug/freshen-e2e image

# End-to-end tests on the harness. They share one operator address (the one
# Prometheus scrapes), so they run one at a time.
e2e: e2e-up static
	$(CARGO) build -p freshen
	$(CARGO) test -p freshen-e2e --tests -- --test-threads=1

# GitOps promotion left alone with Flux reconciling every 10s for ten
# minutes (not in `make test`, which runs the same test for one minute).
SOAK ?= 10m
soak-gitops: e2e-up
	$(CARGO) build -p freshen
	FRESHEN_GITOPS_SOAK=$(SOAK) $(CARGO) test -p freshen-e2e --test gitops freshen_and_flux_do_not_fight -- --nocapture

# The chaos test at length: 50 SIGKILLs at seeded random moments (the
# short run of 5 is part of `make e2e`). FRESHEN_CHAOS_SEED=<n> replays one.
CHAOS_KILLS ?= 50
test-chaos: e2e-up
	$(CARGO) build -p freshen
	FRESHEN_CHAOS_KILLS=$(CHAOS_KILLS) $(CARGO) test -p freshen-e2e --test chaos -- --nocapture

# Fuzzing (not in `make test`): every target for FUZZ_SECONDS (600 s) with
# cargo-fuzz, installed once outside the clone, keyed by its version.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ_ROOT := $(HOME)/.cache/freshen-tools/cargo-fuzz-$(CARGO_FUZZ_VERSION)
fuzz:
	[ -x $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz ] || $(CARGO) install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root $(CARGO_FUZZ_ROOT)
	CARGO_FUZZ=$(CARGO_FUZZ_ROOT)/bin/cargo-fuzz fuzz/run.sh

demo: e2e-up
	$(CARGO) build -p freshen -p freshen-e2e
	./target/debug/freshen-e2e demo $(ARGS)

# PNG plots of the dashboard's figures from the harness' Prometheus (after
# `make demo`), with matplotlib from PyPI in a virtualenv under target/.
PLOTS_VENV := target/plots-venv
plots:
	[ -x $(PLOTS_VENV)/bin/python ] || python3 -m venv $(PLOTS_VENV)
	$(PLOTS_VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(PLOTS_VENV)/bin/pip install -q matplotlib==3.11.2
	$(PLOTS_VENV)/bin/python charts/freshen/hack/plots.py --out docs/src/plots

# Registry cost at scale (not a test: it prints figures). BENCH_ARGS, e.g.
# `--workloads 500 --images 5 --intervals 3 --poll-interval 10s`.
BENCH_ARGS ?=
bench-registry: e2e-up
	$(CARGO) build --release -p freshen -p freshen-e2e
	FRESHEN_BIN=target/release/freshen ./target/release/freshen-e2e bench-registry $(BENCH_ARGS)

# Refresh latencies (not a test: it prints figures): digest pushed ->
# Refresh created, crash-looping canary -> rollback started, median and max.
# BENCH_ARGS, e.g. `--runs 10 --poll-interval 5s`.
bench-refresh: e2e-up
	$(CARGO) build --release -p freshen -p freshen-e2e
	FRESHEN_BIN=target/release/freshen ./target/release/freshen-e2e bench-refresh $(BENCH_ARGS)

# Patch velocity (not a test: it prints figures): base pushed -> pipeline
# triggered -> rebuilt digest seen -> every dependant Succeeded, with
# notifications on and an hour-long poll. BENCH_ARGS, e.g.
# `--runs 10 --dependants 1,10,50`.
bench-velocity: e2e-up
	$(CARGO) build --release -p freshen -p freshen-e2e
	FRESHEN_BIN=target/release/freshen ./target/release/freshen-e2e bench-velocity $(BENCH_ARGS)

# Scale (not a test: it writes bench/results/scale-<date>.md and a plot):
# first complete assessment, RSS and idle CPU of a cluster-wide operator at
# growing numbers of Deployments, 2,000 ignored ones beside them. 52 kwok
# nodes hold the pods. BENCH_ARGS, e.g. `--sizes 1000,2500`.
bench-scale:
	FRESHEN_E2E_NODES=52 $(HARNESS)/up.sh
	$(CARGO) build --release -p freshen -p freshen-e2e
	FRESHEN_BIN=target/release/freshen ./target/release/freshen-e2e bench-scale $(BENCH_ARGS)
	[ -x $(PLOTS_VENV)/bin/python ] || python3 -m venv $(PLOTS_VENV)
	$(PLOTS_VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(PLOTS_VENV)/bin/pip install -q matplotlib==3.11.2
	$(PLOTS_VENV)/bin/python bench/plot_scale.py

# freshen beside crane (image age), descheduler PodLifeTime (container age),
# Argo Rollouts and Flagger (rollback), built from their Go modules into the
# harness' tool cache. Writes bench/results/peers-<date>.{md,png}.
bench-peers:
	FRESHEN_E2E_NODES=52 $(HARNESS)/up.sh
	$(HARNESS)/build-tools.sh crane descheduler flagger argo_rollouts
	$(CARGO) build --release -p freshen -p freshen-e2e
	FRESHEN_BIN=target/release/freshen ./target/release/freshen-e2e bench-peers $(BENCH_ARGS)
	[ -x $(PLOTS_VENV)/bin/python ] || python3 -m venv $(PLOTS_VENV)
	$(PLOTS_VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(PLOTS_VENV)/bin/pip install -q matplotlib==3.11.2
	$(PLOTS_VENV)/bin/python bench/plot_peers.py

test: fmt-check clippy unit docs e2e

clean: e2e-down
	$(CARGO) clean
