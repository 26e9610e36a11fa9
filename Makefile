# Targets: tools generate mdatagen build distro run test bench lint clean.
# test, run and generate install what they need (apt packages, ocb) and must
# run as root, as CI does.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

OCB_VERSION := v0.165.0
GOBIN := $(shell go env GOPATH)/bin
OCB := $(GOBIN)/builder
DISTRO := _build/otelcol-ebpf

# The distro is built inside this checkout; never stamp VCS info so the build
# does not depend on git being usable here.
ifeq ($(findstring -buildvcs,$(GOFLAGS)),)
export GOFLAGS := $(strip $(GOFLAGS) -buildvcs=false)
endif

APT_GET := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: tools generate mdatagen build distro run mounts testdeps test bench lint clean

# Installs ocb if it is missing or not $(OCB_VERSION).
tools:
	@case "$$("$(OCB)" version 2>&1)" in \
	*"version $(OCB_VERSION)") ;; \
	*) echo "installing ocb $(OCB_VERSION)"; \
	   go install go.opentelemetry.io/collector/cmd/builder@$(OCB_VERSION) ;; \
	esac

# Regenerates the bpf2go output (committed) from the C sources.
generate:
	@if ! command -v clang >/dev/null; then \
		$(APT_GET) update && $(APT_GET) install -y clang llvm libbpf-dev bpftool; \
	fi
	go generate ./bpf/...

# Regenerates internal/metadata* and documentation.md from metadata.yaml.
mdatagen:
	go generate .

build:
	go build ./...

distro: tools
	"$(OCB)" --config builder-config.yaml
	@test -x $(DISTRO)

# Mounts bpffs, tracefs and securityfs where they are missing; failures are
# tolerated (the receiver reports what it cannot do).
mounts:
	-@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || echo "warning: cannot mount bpffs at /sys/fs/bpf"
	-@mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || echo "warning: cannot mount tracefs at /sys/kernel/tracing"
	-@mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security || echo "warning: cannot mount securityfs at /sys/kernel/security"

run: distro mounts
	$(DISTRO) --config testdata/run.yaml

# Tools the end-to-end tests run: tcpdump (TestTLSCarrier captures the
# veth), bpftool (bpf_stats of the programs).
testdeps:
	@if ! command -v tcpdump >/dev/null || ! command -v bpftool >/dev/null; then \
		$(APT_GET) update && $(APT_GET) install -y tcpdump bpftool; \
	fi

# Unit tests and the privileged kernel and end-to-end tests, as root.
test: mounts testdeps
	@if [ "$$(id -u)" -ne 0 ]; then echo "make test needs root (privileged eBPF tests)"; exit 1; fi
	@missing=""; \
	for c in curl:curl wrk:wrk bpftool:bpftool ip:iproute2 tcpdump:tcpdump docker-compose:docker-compose; do \
		command -v "$${c%%:*}" >/dev/null || missing="$$missing $${c#*:}"; \
	done; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	/usr/bin/python3 -c 'import aiohttp' 2>/dev/null || missing="$$missing python3-aiohttp"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(APT_GET) update && $(APT_GET) install -y $$missing; \
	fi
	$(MAKE) distro
	go test -count=1 -tags privileged -timeout 45m ./... 2>&1
	@echo "propagation again with the sys_exit fallback forced (ebpf.io_hook: sys_exit)"
	E2E_IO_HOOK=sys_exit go test -count=1 -tags privileged -timeout 20m -run 'Propagation|ClientSpanIsChild|KeepAliveAndPipelining|Concurrent200|EventLoop' ./test/e2e/ 2>&1

# Cost budget (wrk without the collector, with a floor collector whose
# programs return at once, and with the collector), as root; pass flags with
# BENCH_FLAGS, e.g. BENCH_FLAGS=-quick for a smoke run or
# BENCH_FLAGS="-workload server,neighbour -modes all -rounds 5". See
# test/bench/main.go and the README's Performance section.
bench: mounts
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench needs root (the collector loads eBPF programs)"; exit 1; fi
	@missing=""; command -v wrk >/dev/null || missing="wrk"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		$(APT_GET) update && $(APT_GET) install -y $$missing; \
	fi
	$(MAKE) distro
	go run ./test/bench $(BENCH_FLAGS)

lint:
	go vet ./...
	@unformatted=$$(find . -name '*.go' -not -path './_build/*' -not -path './.git/*' -print0 | xargs -0 gofmt -l); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

clean:
	rm -rf _build
