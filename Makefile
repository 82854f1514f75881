# The one test command (README, CI): every package of the main module with
# the race detector, then the interop suite that drives derpd with
# Tailscale's own client library.
.PHONY: test test-main test-interop fuzz bench

test: test-main test-interop

test-main:
	go vet ./...
	go test -race -count=1 ./...

test-interop:
	cd interop && go vet -tags ts_debug_websockets ./... && go test -tags ts_debug_websockets -race -count=1 ./...

# Longer fuzzing than the seed corpora that `make test` runs.
FUZZTIME ?= 30s
fuzz:
	go test -run=XXX -fuzz=FuzzReader -fuzztime=$(FUZZTIME) ./wire/
	go test -run=XXX -fuzz=FuzzParseClientInfo -fuzztime=$(FUZZTIME) ./wire/
	go test -run=XXX -fuzz=FuzzParseBindingRequest -fuzztime=$(FUZZTIME) ./stun/

bench:
	go test -run=XXX -bench=. -benchmem ./wire/ ./actors/... ./stun/
