package flows

import (
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/actortest"
	"github.com/derpd/derpd/wire"
)

// TestFlowsMemoryComesBackAfterABurst: 50,000 flows counted by 200
// connections that then leave are swept, and the heap comes back to
// where it was before them. Without actors.Shrink the flow map keeps its
// buckets for 50,000 (about 6 MiB; issue 11's soak kept 11 MiB of them
// with no flow left). A memory assertion with a wide margin, not a timing
// one.
func TestFlowsMemoryComesBackAfterABurst(t *testing.T) {
	const conns, perConn = 200, 250 // 50,000 flows, each tally under its 256
	h := newHarness(t, Config{Inactive: 10 * time.Second, Sweep: 5 * time.Second})
	h.advance(time.Second)
	baseline := actortest.HeapInuse()

	tallies := make([]*actors.FlowTally, conns)
	for c := range tallies {
		tallies[c] = h.start(uint64(c+1), 0)
		for i := range perConn {
			var src, dst wire.NodePublic
			src[0], src[1], dst[0], dst[1] = byte(c), byte(c>>8), byte(i), 1
			tallies[c].Count(src, dst, "", 100)
		}
	}
	h.advance(time.Second)
	if n := h.sys.Stats.FlowsTracked.Load(); n != conns*perConn {
		t.Fatalf("%d flows tracked, want %d", n, conns*perConn)
	}
	peak := actortest.HeapInuse()
	for _, tally := range tallies {
		h.sys.Send(h.pid, &actors.FlowTallyEnded{Tally: tally})
	}
	h.d.RunUntilIdle()
	tallies = nil
	h.advance(20 * time.Second) // inactive for 10 s, then a sweep
	final := actortest.HeapInuse()
	// Asked after the measurement, so that the actor (and its map) is
	// still reachable when it is taken.
	if s := h.flows(wire.NodePublic{}); s.Tracked != 0 || s.Tallies != 0 {
		t.Fatalf("%d flows and %d tallies after the sweep, want none", s.Tracked, s.Tallies)
	}
	t.Logf("heap in use: baseline %.2f MiB, with %d flows %.2f MiB, after they were swept %.2f MiB",
		actortest.MiB(baseline), conns*perConn, actortest.MiB(peak), actortest.MiB(final))
	if above := actortest.Above(final, baseline); above > 2<<20 {
		t.Fatalf("heap in use %.2f MiB above its baseline after every flow was swept, want under 2 MiB", actortest.MiB(above))
	}
}
