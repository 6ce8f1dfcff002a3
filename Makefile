# promigrate: the two commands a newcomer needs are `make demo` and `make test`.
.PHONY: demo test test-prereqs unit lint bench build static install clean-fixtures

CARGO ?= cargo

build:
	$(CARGO) build --release --locked

## A static promigrate (glibc and OpenSSL linked in): what a receiver pod runs, in any image
## (docs/receiver.md). Lands in $(STATIC_OUT), without its symbols and debug info (a fifth of
## the size: it is uploaded into every receiver pod); run it, or name it in
## PROMIGRATE_RECEIVER_BINARY.
STATIC_TRIPLE ?= x86_64-unknown-linux-gnu
STATIC_BIN = $(or $(CARGO_TARGET_DIR),target)/$(STATIC_TRIPLE)/release/promigrate
STATIC_OUT = $(STATIC_BIN)-static
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --target $(STATIC_TRIPLE)
	strip --strip-all -o $(STATIC_OUT).part $(STATIC_BIN) && mv $(STATIC_OUT).part $(STATIC_OUT)
	@echo "$(STATIC_OUT)"

## Plan -> apply -> verify on a small real TSDB into a temp dir, showing the reports.
demo:
	bash scripts/deps.sh
	$(MAKE) build
	bash scripts/demo.sh

## All tests: unit, CLI, and real-component integration tests (real promtool/prometheus data,
## real prometheus servers, a real Kubernetes control plane and kubelet built once by
## scripts/test-cluster.sh, a real node with containerd and locally built images by
## scripts/test-node.sh (its Prometheus image holds the Prometheus 3.x that
## scripts/prometheus3.sh builds once from the Go module proxy), and the Prometheus Operator built once the same way by
## scripts/prometheus-operator.sh).
## Needs root: it chowns to other uids, mounts small tmpfs volumes and runs containers.
test: test-prereqs
	PROMIGRATE_RECEIVER_BINARY=$(abspath $(STATIC_OUT)) $(CARGO) test --locked

## What `make test` builds or fetches before the tests (each step cached: by version, or by
## its inputs), on its own so CI can free the Go build cache before the Rust test builds.
test-prereqs:
	bash scripts/deps.sh
	@if [ "$$(id -u)" -ne 0 ]; then echo "make test needs root (chown to runAsUser/fsGroup, tmpfs mounts, containers): sudo make test" >&2; exit 1; fi
	bash scripts/test-cluster.sh build
	bash scripts/prometheus3.sh build
	bash scripts/test-node.sh build
	bash scripts/prometheus-operator.sh build
	bash scripts/gen-tsdb3.sh target/fixtures/tsdb3
	bash scripts/gen-tsdb3.sh --feeder >/dev/null
	$(MAKE) static

## Unit tests only (no root, no prometheus).
unit:
	$(CARGO) test --locked --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	for f in scripts/*.sh scripts/lib/*.sh; do bash -n "$$f" || exit 1; done
	python3 -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' scripts/lib/*.py

## Benchmarks against cp -a and rsync -a on >= 4 GiB of real blocks, over SSH, and through a
## receiver pod on the real test node against tar through kubectl exec (docs/performance.md,
## docs/development.md).
bench:
	bash scripts/deps.sh
	bash scripts/bench.sh
	bash scripts/bench-deep.sh
	bash scripts/bench-deep.sh --gib 1 --large-chunks --out target/bench/results-deep-large.md
	bash scripts/bench-phases.sh
	bash scripts/bench-ssh.sh
	bash scripts/bench-incluster.sh
	bash scripts/bench-downtime.sh

PREFIX ?= /usr/local
# Where cargo puts the release binary ($CARGO_TARGET_DIR when set).
RELEASE_BIN = $(or $(CARGO_TARGET_DIR),target)/release/promigrate
## Installs the binary, the kubectl plugin link (`kubectl promigrate`), completions and the man page.
install: build
	install -Dm755 $(RELEASE_BIN) $(DESTDIR)$(PREFIX)/bin/promigrate
	ln -sf promigrate $(DESTDIR)$(PREFIX)/bin/kubectl-promigrate
	mkdir -p $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d $(DESTDIR)$(PREFIX)/share/man/man1
	$(RELEASE_BIN) completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/promigrate
	$(RELEASE_BIN) completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_promigrate
	$(RELEASE_BIN) completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/promigrate.fish
	$(RELEASE_BIN) man > $(DESTDIR)$(PREFIX)/share/man/man1/promigrate.1
	for c in plan apply verify inspect completions man schema help; do \
		$(RELEASE_BIN) man $$c > $(DESTDIR)$(PREFIX)/share/man/man1/promigrate-$$c.1 || exit 1; done

clean-fixtures:
	rm -rf target/fixtures
