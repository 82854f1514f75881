# The one test command (README, CI): every package of the main module with
# the race detector, then the interop suite that drives derpd with
# Tailscale's own client library, then a region of containers.
.PHONY: test test-main test-interop test-interop-upstream test-cluster fuzz bench screenshots

test: test-main test-interop test-interop-upstream test-cluster

test-main:
	go vet ./...
	go test -race -count=1 ./...
	# Allocation counts are meaningless under the race detector (sync.Pool
	# drops items on purpose there), so those tests run once more without it.
	go test -count=1 -run 'Alloc' ./...

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

# Longer fuzzing than the seed corpora that `make test` runs.
FUZZTIME ?= 30s
fuzz:
	go test -run=XXX -fuzz=FuzzReader -fuzztime=$(FUZZTIME) ./wire/
	go test -run=XXX -fuzz=FuzzParseClientInfo -fuzztime=$(FUZZTIME) ./wire/
	go test -run=XXX -fuzz=FuzzParseBindingRequest -fuzztime=$(FUZZTIME) ./stun/
	go test -run=XXX -fuzz=FuzzLinkFrames -fuzztime=$(FUZZTIME) ./actors/mesh/

bench:
	go test -run=XXX -bench=. -benchmem ./wire/ ./actors/... ./stun/

# The screenshots of the debug pages in docs/debug/, from a live two-node
# region rendered in headless chromium (Debian's package).
screenshots:
	cd interop && go run ./cmd/debugshots
