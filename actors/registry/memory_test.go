package registry

import (
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/actortest"
	"github.com/derpd/derpd/wire"
)

// TestRegistryMemoryComesBackAfterABurst fills each of the registry's
// large maps with 50,000 entries, empties it, and checks that the heap
// comes back to where it was: Go maps keep their buckets, so without
// shrinkMaps (and the heardFrom and session-key shrinks) every phase
// leaves megabytes behind. The figures for each phase are logged (-v).
// A memory assertion with a wide margin, not a timing one; each phase
// sends its messages one at a time, so the registry's mailbox ring (which
// protoactor never shrinks, docs/performance.md) stays small.
func TestRegistryMemoryComesBackAfterABurst(t *testing.T) {
	const n = 50_000
	const margin = 2 << 20
	h, clock := newHarnessWithClock(t)
	// Every connection shares one stand-in client actor: 50,000 actors
	// would measure protoactor's process registry instead.
	shared := h.newClient(key(0xf0), false)
	conn := func(k wire.NodePublic) *actors.Conn {
		h.ids++
		return &actors.Conn{ID: h.ids, Key: k, PID: shared.conn.PID, Sink: shared.sink, Flags: shared.conn.Flags}
	}
	keyN := func(i int) wire.NodePublic {
		var k wire.NodePublic
		k[0], k[1], k[2], k[31] = byte(i), byte(i>>8), byte(i>>16), 0x55
		return k
	}
	receiver := h.connect(key(2), false) // outlives every phase
	phase := func(name string, fill, empty func()) {
		t.Helper()
		baseline := actortest.HeapInuse()
		fill()
		shared.take()
		peak := actortest.HeapInuse()
		empty()
		shared.take()
		receiver.take()
		final := actortest.HeapInuse()
		// Asked after the measurement, so that the registry is reachable
		// when it is taken.
		if st := h.state(); st.Conns != 1 || st.Keys != 1 || st.RemoteKeys != 0 {
			t.Fatalf("%s: the registry holds %+v after the phase", name, st)
		}
		h.mustBeConsistent()
		above := actortest.Above(final, baseline)
		t.Logf("%s: heap in use %.2f MiB, with %d entries %.2f MiB, emptied %.2f MiB (%.2f MiB above)",
			name, actortest.MiB(baseline), n, actortest.MiB(peak), actortest.MiB(final), actortest.MiB(above))
		if above > margin {
			t.Errorf("%s: heap in use %.2f MiB above its baseline once emptied, want under %.0f MiB",
				name, actortest.MiB(above), actortest.MiB(margin))
		}
	}

	conns := make([]*actors.Conn, n)
	phase("keys and conns", func() {
		for i := range conns {
			conns[i] = conn(keyN(i))
			h.send(&actors.Register{Conn: conns[i]})
		}
	}, func() {
		for _, c := range conns {
			h.send(&actors.Unregister{Conn: c})
		}
		clear(conns)
	})

	phase("recipients and heardFrom", func() {
		for i := range conns {
			conns[i] = conn(keyN(i))
			h.send(&actors.Register{Conn: conns[i]})
			h.send(delivered(receiver.conn, conns[i].Key, false))
		}
	}, func() {
		for _, c := range conns {
			h.send(&actors.Unregister{Conn: c}) // PeerGone to the receiver
		}
		clear(conns)
	})

	h.linkUp(1)
	keys := make([]wire.NodePublic, n)
	for i := range keys {
		keys[i] = keyN(n + i)
	}
	phase("forwarders and a session's keys", func() {
		for i := 0; i < n; i += 1000 {
			h.update(1, true, keys[i:i+1000]...)
		}
	}, func() {
		for i := 0; i < n; i += 1000 {
			h.update(1, false, keys[i:i+1000]...)
		}
	})

	phase("unknown forwarded sources", func() {
		for _, k := range keys {
			h.send(delivered(receiver.conn, k, true))
		}
	}, func() {
		clock.Advance(unknownSourceProbation + time.Second)
		h.d.RunUntilIdle()
	})
}
