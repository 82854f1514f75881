package flows

import (
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/actortest"
	"github.com/derpd/derpd/wire"
)

// TestFlowsRecoverFromAPanic: the flows start over, the connections'
// tallies stay known, and collection goes on on its timer.
func TestFlowsRecoverFromAPanic(t *testing.T) {
	h := newHarness(t, Config{}, actortest.WithBoom())
	a := h.start(1, 0)
	count(a, key(1), key(2), "", 10, 100)
	h.advance(time.Second)
	if got := len(h.flows(wire.NodePublic{}).Flows); got != 1 {
		t.Fatalf("%d flows before the panic", got)
	}
	h.sys.Send(h.pid, &actortest.Boom{})
	h.d.RunUntilIdle()
	if n := h.sys.Kind(actors.ActorFlows).Panics(); n != 1 {
		t.Fatalf("%d panics", n)
	}
	if got := len(h.flows(wire.NodePublic{}).Flows); got != 0 {
		t.Fatalf("%d flows right after the recovery, want none", got)
	}
	count(a, key(1), key(3), "", 5, 100)
	h.advance(time.Second)
	got := show(h.flows(key(3)))
	if want := `[1>3 via "" 500B 5p 100B/s 1.0p/s] `; got != want {
		t.Fatalf("after the recovery, a tally counted before it is still read:\n got %s\nwant %s", got, want)
	}
}
