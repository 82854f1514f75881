package flows

import (
	"fmt"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// harness runs a flows actor on a step dispatcher with a fake clock: the
// test counts into tallies, moves the clock, and reads snapshots.
type harness struct {
	t     *testing.T
	d     *actors.StepDispatcher
	clock *actors.FakeClock
	sys   *actors.System
	pid   *actor.PID
	cfg   Config
}

var epoch = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, cfg Config, opts ...actors.Option) *harness {
	h := &harness{t: t}
	h.sys, h.d, h.clock = actors.NewSteppedSystem(epoch, opts...)
	h.pid = Spawn(h.sys, cfg)
	cfg.setDefaults()
	h.cfg = cfg
	h.d.RunUntilIdle()
	return h
}

func (h *harness) start(conn uint64, max int) *actors.FlowTally {
	t := actors.NewFlowTally(conn, max)
	h.sys.Send(h.pid, &actors.FlowTallyStarted{Tally: t})
	h.d.RunUntilIdle()
	return t
}

func (h *harness) advance(d time.Duration) {
	for d > 0 {
		step := min(d, h.cfg.Interval)
		h.clock.Advance(step)
		h.d.RunUntilIdle()
		d -= step
	}
}

func (h *harness) flows(key wire.NodePublic) *actors.FlowsSnapshot {
	h.t.Helper()
	res, err := h.d.Ask(h.sys, h.pid, &actors.GetFlows{Key: key})
	if err != nil {
		h.t.Fatal(err)
	}
	return res.(*actors.FlowsSnapshot)
}

func key(b byte) wire.NodePublic {
	var k wire.NodePublic
	k[0], k[31] = b, 3
	return k
}

func show(s *actors.FlowsSnapshot) string {
	var out string
	for _, f := range s.Flows {
		out += fmt.Sprintf("[%x>%x via %q %dB %dp %.0fB/s %.1fp/s] ", f.Src[0], f.Dst[0], f.Via, f.Bytes, f.Packets, f.BPS, f.PPS)
	}
	return out
}

func count(t *actors.FlowTally, src, dst wire.NodePublic, via string, packets, size int) {
	for range packets {
		t.Count(src, dst, via, size)
	}
}

// Counts reach the actor at its next collection, totals accumulate, and
// rates cover the last Window collections: a flow that stops goes to a
// rate of zero after the window and keeps its totals.
func TestFlowsCollectTotalsAndRates(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.start(1, 0)
	count(a, key(1), key(2), "", 100, 1000)
	if got := show(h.flows(wire.NodePublic{})); got != "" {
		t.Fatalf("before a collection: %s", got)
	}
	h.advance(time.Second)
	// 100 packets of 1000 bytes in one second, averaged over 5 s.
	if got, want := show(h.flows(wire.NodePublic{})), `[1>2 via "" 100000B 100p 20000B/s 20.0p/s] `; got != want {
		t.Fatalf("after one collection:\n got %s\nwant %s", got, want)
	}
	count(a, key(1), key(2), "", 50, 1000)
	h.advance(time.Second)
	if got, want := show(h.flows(wire.NodePublic{})), `[1>2 via "" 150000B 150p 30000B/s 30.0p/s] `; got != want {
		t.Fatalf("after two:\n got %s\nwant %s", got, want)
	}
	h.advance(4 * time.Second) // the first second leaves the window
	if got, want := show(h.flows(wire.NodePublic{})), `[1>2 via "" 150000B 150p 10000B/s 10.0p/s] `; got != want {
		t.Fatalf("four seconds on:\n got %s\nwant %s", got, want)
	}
	h.advance(time.Second)
	s := h.flows(wire.NodePublic{})
	if got, want := show(s), `[1>2 via "" 150000B 150p 0B/s 0.0p/s] `; got != want {
		t.Fatalf("after the window:\n got %s\nwant %s", got, want)
	}
	if f := s.Flows[0]; !f.First.Equal(epoch.Add(time.Second)) || !f.LastActive.Equal(epoch.Add(2*time.Second)) {
		t.Fatalf("first %v last active %v", f.First, f.LastActive)
	}
	if got := h.sys.Stats.FlowsTracked.Load(); got != 1 {
		t.Fatalf("derpd_flows_tracked = %d", got)
	}
}

// Flows are keyed by source, destination and mesh peer, sorted busiest
// first, and filtered by key.
func TestFlowsByKeyAndBandwidth(t *testing.T) {
	h := newHarness(t, Config{})
	a, m := h.start(1, 0), h.start(2, 0)
	count(a, key(1), key(2), "", 10, 100)
	count(a, key(1), key(3), "derp2.example.com", 10, 1000) // forwarded out
	count(m, key(4), key(1), "nodekey:peer", 5, 100)        // forwarded in
	h.advance(time.Second)
	want := `[1>3 via "derp2.example.com" 10000B 10p 2000B/s 2.0p/s] [1>2 via "" 1000B 10p 200B/s 2.0p/s] [4>1 via "nodekey:peer" 500B 5p 100B/s 1.0p/s] `
	if got := show(h.flows(wire.NodePublic{})); got != want {
		t.Fatalf("flows\n got %s\nwant %s", got, want)
	}
	if got, want := show(h.flows(key(3))), `[1>3 via "derp2.example.com" 10000B 10p 2000B/s 2.0p/s] `; got != want {
		t.Fatalf("flows of key 3\n got %s\nwant %s", got, want)
	}
	if s := h.flows(wire.NodePublic{}); s.Tallies != 2 || s.Tracked != 3 {
		t.Fatalf("tallies %d tracked %d", s.Tallies, s.Tracked)
	}
}

// A full tally counts new flows together until the actor has read it,
// then starts over; nothing is lost, nor when its connection ends between
// two collections.
func TestFlowsLoseNothingToATallyStartingOverOrEnding(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.start(1, 2)
	count(a, key(1), key(2), "", 3, 10)
	count(a, key(1), key(3), "", 3, 10)
	count(a, key(1), key(4), "", 3, 10) // full: counted with the other flows
	count(a, key(1), key(2), "", 1, 10) // an old flow: its own counter still
	h.advance(time.Second)
	// (Equal rates and totals: in key order, the other flows' zero key first.)
	want := `[1>2 via "" 40B 4p 8B/s 0.8p/s] [0>0 via "(other flows)" 30B 3p 6B/s 0.6p/s] [1>3 via "" 30B 3p 6B/s 0.6p/s] `
	if got := show(h.flows(wire.NodePublic{})); got != want {
		t.Fatalf("flows\n got %s\nwant %s", got, want)
	}
	// Read since it filled: the next new flow starts the tally over, and
	// the old counters' last packets still count.
	count(a, key(1), key(3), "", 1, 10)
	count(a, key(1), key(4), "", 2, 10)
	count(a, key(1), key(3), "", 1, 10) // a fresh counter for key 3
	h.advance(time.Second)
	got := map[wire.NodePublic]int64{}
	for _, f := range h.flows(wire.NodePublic{}).Flows {
		got[f.Dst] = f.Packets
	}
	if got[key(2)] != 4 || got[key(3)] != 5 || got[key(4)] != 2 || got[wire.NodePublic{}] != 3 {
		t.Fatalf("packets per destination %v, want 4, 5, 2 and 3 other", got)
	}
	// The connection ends with counts the actor has not collected yet.
	count(a, key(1), key(4), "", 2, 10)
	h.sys.Send(h.pid, &actors.FlowTallyEnded{Tally: a})
	h.d.RunUntilIdle()
	s := h.flows(wire.NodePublic{})
	for _, f := range s.Flows {
		if f.Dst == key(4) && f.Packets != 4 {
			t.Fatalf("flow to key 4 has %d packets, want 4 (two counted after the last collection)", f.Packets)
		}
	}
	if s.Tallies != 0 {
		t.Fatalf("%d tallies after the connection ended", s.Tallies)
	}
}

// Inactive flows go at the sweep after they have been idle long enough;
// the number tracked stays within Max, the least recently active evicted.
func TestFlowsSweepAndBound(t *testing.T) {
	h := newHarness(t, Config{Inactive: 5 * time.Minute, Sweep: 10 * time.Minute, Max: 2})
	a := h.start(1, 0)
	count(a, key(1), key(2), "", 1, 10)
	h.advance(time.Second)
	count(a, key(1), key(3), "", 1, 10)
	h.advance(time.Second)
	count(a, key(1), key(4), "", 1, 10) // a third flow: the oldest goes
	h.advance(time.Second)
	s := h.flows(wire.NodePublic{})
	if s.Tracked != 2 || s.Evicted != 1 || h.sys.Stats.FlowsEvicted.Load() != 1 {
		t.Fatalf("tracked %d evicted %d (%d), want 2 and 1: %s", s.Tracked, s.Evicted, h.sys.Stats.FlowsEvicted.Load(), show(s))
	}
	for _, f := range s.Flows {
		if f.Dst == key(2) {
			t.Fatalf("the least recently active flow was kept: %s", show(s))
		}
	}
	// Key 4 stays active; key 3 goes idle. At the first sweep (10 min)
	// key 3 has been idle more than 5 min and goes.
	for range 9 {
		count(a, key(1), key(4), "", 1, 10)
		h.advance(time.Minute)
	}
	h.advance(time.Minute - 3*time.Second)
	s = h.flows(wire.NodePublic{})
	if s.Tracked != 1 || s.Swept != 1 || s.Flows[0].Dst != key(4) {
		t.Fatalf("after the sweep: tracked %d swept %d: %s", s.Tracked, s.Swept, show(s))
	}
}

// The hot path's cost: counting a packet of the flow counted last.
func BenchmarkFlowTallyCount(b *testing.B) {
	tally := actors.NewFlowTally(1, 0)
	src, dst := key(1), key(2)
	b.ReportAllocs()
	for b.Loop() {
		tally.Count(src, dst, "", 1280)
	}
}
