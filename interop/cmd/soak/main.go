// Command soak keeps thousands of DERP clients connecting, relaying and
// leaving for a set time against derpd, upstream derper, or both one after
// the other, and then checks that the server's memory, goroutines, actors
// and connections came back to where they were before the load.
//
//	cd interop && go run ./cmd/soak                          # derpd then derper, 10 minutes each
//	cd interop && go run ./cmd/soak -target derpd -duration 1m
//	make soak SOAK_TARGET=derpd SOAK_DURATION=1m             # the same
//
// The clients are Tailscale's own (tailscale.com/derp/derphttp), each
// life a fresh key that connects, sends to random live peers (and some
// to peers that have left, some disco-shaped), receives and checks what
// it gets, and leaves after a random lifetime. A few misbehave mildly:
// they stop reading for a while, or move, connecting again with the same
// key from another address while the first connection is still open.
// Every 10 s a line says what happened; at the end, a summary per server,
// PASS or FAIL for each leak check, and a Markdown table of the servers
// side by side. The exit status is 1 if any check failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/interop/internal/procstat"
)

func main() {
	o := options{}
	var (
		target  = flag.String("target", "both", "server to soak: derpd, derper, or both (one after the other)")
		asJSON  = flag.Bool("json", false, "write a JSON object a line to stdout for every report line and summary (the text goes to stderr)")
		heapMiB = flag.Float64("heap-slack", 4, "MiB of heap above the baseline still counted as returned to it")
		rssMiB  = flag.Float64("rss-slack", 32, "MiB of resident memory above the baseline still counted as returned to it")
		dArgs   = flag.String("derpd-args", "", "more flags for derpd, space-separated (\"-flows=false\" to soak it without flow counting)")
	)
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the load runs on each server")
	flag.DurationVar(&o.warmup, "warmup", time.Minute, "how long the same load runs before the baseline is taken (0: the baseline is the fresh server)")
	flag.IntVar(&o.clients, "clients", 2000, "clients connected at once (each leaves after its lifetime and another takes its place)")
	flag.Float64Var(&o.rate, "rate", 5000, "packets per second, all clients together: enough to load 2 cores without saturating them")
	flag.Float64Var(&o.connectRate, "connect-rate", 200, "new connections per second at most")
	flag.IntVar(&o.senders, "senders", 8, "goroutines sharing the packet rate")
	flag.DurationVar(&o.minLifetime, "min-lifetime", 5*time.Second, "shortest life of a client")
	flag.DurationVar(&o.maxLifetime, "max-lifetime", 2*time.Minute, "longest life of a client")
	flag.Float64Var(&o.stallFraction, "stall-fraction", 0.01, "share of lives that stop reading once")
	flag.DurationVar(&o.minStall, "min-stall", 2*time.Second, "shortest stop")
	flag.DurationVar(&o.maxStall, "max-stall", 45*time.Second, "longest stop")
	flag.Float64Var(&o.dupFraction, "dup-fraction", 0.02, "share of lives that connect again with the same key from another address")
	flag.DurationVar(&o.maxDupOverlap, "dup-overlap", 5*time.Second, "longest time both connections of a moving client stay open")
	flag.Float64Var(&o.departedShare, "departed-share", 0.05, "share of packets sent to keys that have left")
	flag.Float64Var(&o.stalledShare, "stalled-share", 0.1, "share of packets sent to clients not reading, while there are any")
	flag.Float64Var(&o.discoShare, "disco-share", 0.2, "share of packets shaped like disco messages")
	flag.IntVar(&o.maxSize, "size", 1200, "largest data payload in bytes (sizes are uniform up to it)")
	flag.DurationVar(&o.interval, "interval", 10*time.Second, "time between report lines")
	flag.DurationVar(&o.settle, "settle", 90*time.Second, "longest wait, after the load, for the server to come back to its baseline")
	flag.DurationVar(&o.flowsInactive, "flows-inactive", 10*time.Second, "derpd's -flows-inactive (swept every half of it), so that the flows it counts by design are forgotten in the settle time")
	flag.DurationVar(&o.poll, "poll", time.Second, "how often the server is looked at while it settles, and between collections while its memory is measured")
	flag.Float64Var(&o.goroutineSlack, "goroutine-slack", 5, "goroutines above the baseline still counted as returned to it")
	flag.StringVar(&o.outDir, "out", filepath.Join(harness.ModuleDir(), "soak-out"), "directory for the JSON records, goroutine profiles and the side-by-side table")
	flag.Parse()
	o.heapSlack, o.rssSlack = *heapMiB*(1<<20), *rssMiB*(1<<20)
	o.derpdArgs = strings.Fields(*dArgs)

	var kinds []harness.Kind
	switch *target {
	case "derpd":
		kinds = []harness.Kind{harness.Derpd}
	case "derper":
		kinds = []harness.Kind{harness.Derper}
	case "both":
		kinds = []harness.Kind{harness.Derpd, harness.Derper}
	default:
		log.Fatalf("-target %q: want derpd, derper or both", *target)
	}
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		log.Fatal(err)
	}
	procstat.RaiseFileLimit()
	o.text = os.Stdout
	if *asJSON {
		o.text, o.json = os.Stderr, os.Stdout
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	results, err := run(ctx, kinds, o)
	harness.RemoveBinaries()
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range results {
		if r.Failed() {
			os.Exit(1)
		}
	}
}

// run soaks each server in turn, writes the summaries, the records and
// the side-by-side table, and returns the results.
func run(ctx context.Context, kinds []harness.Kind, o options) ([]*result, error) {
	for _, k := range kinds {
		if _, err := harness.Binary(k); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(o.text, "soak: %v each, %d clients, %.0f packets/s, at most %.0f connects/s, lifetimes %v-%v; servers: %s\n",
		o.duration, o.clients, o.rate, o.connectRate, o.minLifetime, o.maxLifetime, joinKinds(kinds))
	var results []*result
	for _, k := range kinds {
		f, err := os.Create(filepath.Join(o.outDir, string(k)+".jsonl"))
		if err != nil {
			return nil, err
		}
		oo := o
		oo.json = f
		if o.json != nil {
			oo.json = io.MultiWriter(f, o.json)
		}
		r, err := soak(ctx, k, oo)
		if err == nil {
			writeJSON(oo.json, r)
		}
		f.Close()
		if err != nil {
			return results, fmt.Errorf("%s: %w", k, err)
		}
		summary(o.text, r)
		results = append(results, r)
		if ctx.Err() != nil {
			return results, ctx.Err()
		}
	}
	tab := sideBySide(results)
	fmt.Fprintf(o.text, "\n%s", tab)
	if err := os.WriteFile(filepath.Join(o.outDir, "summary.md"), []byte(tab), 0o644); err != nil {
		return results, err
	}
	return results, nil
}

func joinKinds(ks []harness.Kind) string {
	var s []string
	for _, k := range ks {
		s = append(s, string(k))
	}
	return strings.Join(s, " then ")
}
