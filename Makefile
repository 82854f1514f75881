# The one test command (README, CI): every package of the main module with
# the race detector, then the interop suite that drives derpd with
# Tailscale's own client library, then a region of containers.
.PHONY: test test-main test-fuzz test-interop test-interop-upstream test-cluster fuzz bench screenshots

test: test-main test-fuzz test-interop test-interop-upstream test-cluster

test-main:
	go vet ./...
	go test -race -count=1 ./...
	# Allocation counts are meaningless under the race detector (sync.Pool
	# drops items on purpose there), so those tests run once more without it.
	go test -count=1 -run 'Alloc' ./...
	# The deterministic actor tests must give the same answer every time:
	# fifty runs in a row under the race detector (seconds).
	go test -race -count=50 $(DETERMINISTIC_PKGS)

DETERMINISTIC_PKGS = ./actors/actorkit

INTEROP_TAGS = -tags ts_debug_websockets  # compiles in Tailscale's WebSocket client
test-interop:
	cd interop && go vet $(INTEROP_TAGS) ./... && go test $(INTEROP_TAGS) -race -count=1 ./...

# The same suite against upstream derper: proof that the tests encode
# upstream's behaviour, not just ours.
test-interop-upstream:
	cd interop && DERPD_INTEROP_TARGET=derper go test $(INTEROP_TAGS) -count=1 ./...

# A region of three derpd nodes and upstream derper, each in a Docker
# container, meshed by DNS on a private network: cut, kill, join
# (interop/cluster). It needs a Docker engine and fails, not skips, when
# there is none; without DERPD_CLUSTER=1 the package skips, so the
# targets above do not run it.
test-cluster:
	cd interop && DERPD_CLUSTER=1 go test -race -count=1 -timeout 10m ./cluster/

# Packages for operators (docs/operators-guide.md): `make deb` builds
# $(DIST)/derpd_<version>_<arch>.deb with nfpm (run as a tool: the module
# gains no dependency) from cmd/derpd/packaging; `make image` builds the
# FROM-scratch image of ./Containerfile with the machine's Docker engine,
# from a context holding only the binary and the machine's CA
# certificates. Both carry the same static binary (no cgo), stamped with
# VERSION, which `derpd -version` prints. On the command line: VERSION,
# DIST (where the output goes), PKG_GOARCH (a Go architecture: arm64, …),
# DEB_MAINTAINER ("Name <address>"; git's user by default), IMAGE
# (name:tag) and IMAGE_BUILD_FLAGS (more `docker build` flags).
.PHONY: static-binary deb image
# Computed once, when first used: two runs of version.sh while someone
# edits the tree could disagree about +dirty.
VERSION ?= $(eval VERSION := $$(shell cmd/derpd/packaging/version.sh))$(VERSION)
DIST ?= dist
PKG_GOARCH ?= $(shell go env GOARCH)
DEB_MAINTAINER ?= $(shell git config user.name) <$(shell git config user.email)>
NFPM = go run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
# Docker tags allow neither ~ nor +.
IMAGE ?= derpd:$(subst +,-,$(subst ~,-,$(VERSION)))
IMAGE_BUILD_FLAGS ?=
STATIC_BINARY = $(DIST)/derpd-linux-$(PKG_GOARCH)
# Files in the package and the image carry the commit's time, not the
# build's: the same commit makes the same .deb.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)

static-binary:
	mkdir -p $(DIST)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(PKG_GOARCH) go build -trimpath \
		-ldflags '-s -w -X main.buildVersion=$(VERSION)' -o $(STATIC_BINARY) ./cmd/derpd

deb: static-binary
	@case '$(DEB_MAINTAINER)' in *?' <'?*@?*'>') ;; *) echo "DEB_MAINTAINER='$(DEB_MAINTAINER)' is not \"Name <address>\"; set it, or git's user.name and user.email" >&2; exit 1;; esac
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) cmd/derpd/packaging/stage.sh $(DIST)/deb-stage '$(VERSION)' '$(DEB_MAINTAINER)'
	DERPD_VERSION='$(VERSION)' DERPD_ARCH=$(PKG_GOARCH) DERPD_MAINTAINER='$(DEB_MAINTAINER)' \
	DERPD_BINARY=$(STATIC_BINARY) DERPD_STAGE=$(DIST)/deb-stage SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) \
		$(NFPM) package --config cmd/derpd/packaging/nfpm.yaml --packager deb --target $(DIST)/

# The legacy builder (DOCKER_BUILDKIT=0): BuildKit would fetch its
# frontend from a registry, and FROM scratch needs none.
image: static-binary
	rm -rf $(DIST)/image-context && mkdir -p $(DIST)/image-context/state
	cp Containerfile $(DIST)/image-context/
	cp $(STATIC_BINARY) $(DIST)/image-context/derpd
	cp /etc/ssl/certs/ca-certificates.crt $(DIST)/image-context/
	DOCKER_BUILDKIT=0 docker build -f $(DIST)/image-context/Containerfile -t $(IMAGE) \
		--build-arg VERSION='$(VERSION)' $(IMAGE_BUILD_FLAGS) $(DIST)/image-context

# Every fuzz target, as package:target (docs/testing.md). test-main
# already runs their seed corpora (testdata/fuzz) as unit tests;
# test-fuzz, part of `make test`, then fuzzes each for FUZZTIME_CI, and
# `make fuzz` for FUZZTIME, one after another (.ci/fuzz). A failure
# leaves the input in the package's testdata/fuzz/<target>/: commit it
# with the fix, and it is a regression test.
FUZZ_TARGETS = \
	./wire/:FuzzReader ./wire/:FuzzWriterRoundTrip ./wire/:FuzzParseClientInfo \
	./wire/:FuzzClientInfoJSON ./wire/:FuzzParseServerKey ./wire/:FuzzParseServerInfo \
	./wire/:FuzzParseKeys \
	./stun/:FuzzParseBindingRequest ./stun/:FuzzServeDatagram \
	./actors/mesh/:FuzzLinkFrames ./actors/mesh/:FuzzPeerHandshake ./actors/mesh/:FuzzMetaCertKey \
	./actors/client/:FuzzHandshake ./actors/client/:FuzzClientFrames \
	./actors/journal/:FuzzJournalReader \
	./cmd/derpd/:FuzzHTTPRequest ./cmd/derpd/:FuzzWebSocketFrames ./cmd/derpd/:FuzzAdmissionResponse \
	./cmd/derpd/:FuzzKeyFile ./cmd/derpd/:FuzzMeshKeyFile
FUZZTIME_CI ?= 10s
FUZZTIME ?= 30s
test-fuzz:
	@.ci/fuzz $(FUZZTIME_CI) $(FUZZ_TARGETS)
fuzz:
	@.ci/fuzz $(FUZZTIME) $(FUZZ_TARGETS)

# The whole-relay simulation (actors/sim, docs/testing.md "Whole-relay
# simulation"): test-main runs its default few hundred seeds; this runs
# SEEDS of them from SEED_FIRST, without the race detector, on every core.
.PHONY: sim
SEEDS ?= 5000
SEED_FIRST ?= 1
sim:
	go test -count=1 -timeout 60m ./actors/sim -run '^TestSim$$' -seeds=$(SEEDS) -first=$(SEED_FIRST) -v

bench:
	go test -run=XXX -bench=. -benchmem ./wire/ ./actors/... ./stun/

# The screenshots of the debug pages in docs/debug/, from a live two-node
# region rendered in headless chromium (Debian's package).
screenshots:
	cd interop && go run ./cmd/debugshots

# A soak (interop/cmd/soak, docs/performance.md "Soak"): 2,000 clients of
# Tailscale's own library connecting, relaying (to live peers, departed
# ones, disco-shaped), misbehaving mildly (not reading for a while,
# moving with their key) and leaving, for SOAK_DURATION after a minute's
# warm-up, against SOAK_TARGET: derpd, derper or both (one after the
# other). Then PASS or FAIL for each leak check (memory, goroutines,
# actors, connections back to the baseline) and the figures side by side
# in interop/soak-out/summary.md; it exits 1 on a leak. Not part of
# `test`: about 12 minutes per server. SOAK_FLAGS passes more flags
# (`go run ./cmd/soak -help` lists them).
.PHONY: soak
SOAK_DURATION ?= 10m
SOAK_TARGET ?= both
SOAK_FLAGS ?=
soak:
	cd interop && go run ./cmd/soak -duration $(SOAK_DURATION) -target $(SOAK_TARGET) $(SOAK_FLAGS)
