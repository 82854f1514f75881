package rejects

import (
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/actortest"
	"github.com/derpd/derpd/wire"
)

func TestRejectsRecoverFromAPanic(t *testing.T) {
	h := newHarness(t, 0, actortest.WithBoom())
	ev := actors.RejectEvent{Dir: actors.RejectConnection, Reason: actors.RejectBadHandshake, Key: key(1), Count: 1}
	h.send(&actors.RejectBatch{Events: []actors.RejectEvent{ev}})
	if got := show(h.snapshot(wire.NodePublic{})); got == "" {
		t.Fatal("nothing recorded before the panic")
	}
	h.send(&actortest.Boom{})
	if got := show(h.snapshot(wire.NodePublic{})); got != "" {
		t.Fatalf("after the recovery: %q, want an empty record", got)
	}
	h.send(&actors.RejectBatch{Events: []actors.RejectEvent{ev}})
	if got := show(h.snapshot(wire.NodePublic{})); got == "" {
		t.Fatal("nothing recorded after the recovery")
	}
	if n := h.sys.Kind(actors.ActorRejects).Panics(); n != 1 {
		t.Fatalf("%d panics", n)
	}
}
