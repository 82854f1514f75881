package registry

import (
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

func newHarnessWithClock(t *testing.T) (*harness, *actors.FakeClock) {
	d, clock := actors.NewStepDispatcher(), actors.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	sys := actors.NewSystem(zerolog.Nop(), actors.WithDispatcher(d), actors.WithClock(clock))
	h := &harness{t: t, d: d, sys: sys, self: key(0xee)}
	h.r = New(sys, h.self)
	pid, err := sys.Root.SpawnNamed(h.r.Props(), "registry")
	if err != nil {
		t.Fatal(err)
	}
	h.reg, sys.Registry = pid, pid
	d.RunUntilIdle()
	return h, clock
}

// TestMadeUpForwardedSourcesAreForgotten: a mesh peer may forward packets
// from sources the region never hears of. Their entries would be pruned
// only by a departure that never comes, so they are forgotten after a
// probation, and at most so many are on probation at once; a source whose
// announcement was merely late, or a local client, keeps its entry.
func TestMadeUpForwardedSourcesAreForgotten(t *testing.T) {
	h, clock := newHarnessWithClock(t)
	b := h.connect(key(2), false)
	h.linkUp(1)
	late, local := key(50), key(51)
	for i := range 100 {
		h.send(delivered(b.conn, key(byte(100+i)), true))
	}
	h.send(delivered(b.conn, late, true))
	h.update(1, true, late) // its announcement arrives after its packet
	h.connect(local, false)
	h.send(delivered(b.conn, local, false))
	if n := len(h.r.conns[b.conn].heardFrom); n != 102 {
		t.Fatalf("receiver heard from %d sources, want 102", n)
	}

	clock.Advance(unknownSourceProbation)
	h.d.RunUntilIdle()

	hf := h.r.conns[b.conn].heardFrom
	if len(hf) != 2 || len(h.r.recipients) != 2 || len(h.r.unknownSources) != 0 {
		t.Fatalf("after the probation: heard from %d, recipients %d, on probation %d; want 2, 2, 0", len(hf), len(h.r.recipients), len(h.r.unknownSources))
	}
	for _, k := range []wire.NodePublic{late, local} {
		if _, ok := hf[k]; !ok {
			t.Fatalf("a known source %v was forgotten", k)
		}
	}
	b.take()
	h.update(1, false, late) // the late one leaves: PeerGone as usual
	if got := b.take(); len(got) != 1 {
		t.Fatalf("after the late source left, the receiver was sent %v, want one PeerGone", got)
	}
	h.mustBeConsistent()
}

func TestUnknownSourcesOnProbationAreBounded(t *testing.T) {
	h, _ := newHarnessWithClock(t)
	b := h.connect(key(2), false)
	for i := range maxUnknownSources + 10 {
		var k wire.NodePublic
		k[0], k[1], k[2], k[31] = byte(i>>16), byte(i>>8), byte(i), 0x77
		h.sys.Send(h.reg, delivered(b.conn, k, true))
	}
	h.d.RunUntilIdle()
	if n := len(h.r.unknownSources); n != maxUnknownSources {
		t.Fatalf("%d sources on probation, want the bound %d", n, maxUnknownSources)
	}
	if n := h.sys.Stats.UnknownSourcesIgnored.Load(); n != 10 {
		t.Fatalf("%d ignored, want 10", n)
	}
}
