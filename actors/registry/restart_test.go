package registry

import (
	"reflect"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
)

// requester stands in for whoever asks for a graceful shutdown (derpd's
// main): a fake client that is never registered, so the registry's
// answer lands in its got list.
func (h *harness) requester() *fakeClient {
	f := &fakeClient{}
	props, _ := h.sys.Props(actors.ActorClient, func() actor.Actor { return f })
	f.conn = &actors.Conn{PID: h.sys.Root.Spawn(props)}
	return f
}

func (h *harness) restartAll(from *fakeClient, m *actors.RestartAll) {
	h.sys.Root.RequestWithCustomSender(h.reg, m, from.conn.PID)
	h.d.RunUntilIdle()
}

// TestRestartAllSpreadsClosesOverTheWindow: Restarting reaches every
// connection at once; the clients are then closed one by one in
// connection order at i/n of the spread, each with a flushing close; the
// mesh peer's connection stays open; the requester hears when the last
// close has been asked for, and no timer is left behind.
func TestRestartAllSpreadsClosesOverTheWindow(t *testing.T) {
	h, clock := newHarnessWithClock(t)
	var clients []*fakeClient
	for i := range 8 {
		clients = append(clients, h.connect(key(byte(i+1)), false))
	}
	peer := h.connect(key(0x70), true)
	h.send(&actors.WatchConns{Conn: peer.conn})
	peer.take()
	main := h.requester()

	const spread = 8 * time.Second // one close a second for 8 clients
	restarting := &actors.SendRestarting{ReconnectIn: 2 * time.Second, TryFor: 10 * time.Second}
	h.restartAll(main, &actors.RestartAll{ReconnectIn: 2 * time.Second, TryFor: 10 * time.Second, Spread: spread, Reason: "restart"})

	for _, f := range append(clients, peer) {
		if got := f.got; len(got) == 0 || !reflect.DeepEqual(got[0], restarting) {
			t.Fatalf("conn %d got %+v first, want %+v", f.conn.ID, got, restarting)
		}
		f.got = f.got[1:]
	}
	// What the clients did when closed: leave (their actors unregister).
	closedSoFar := func() []uint64 {
		var ids []uint64
		for _, f := range clients {
			for _, m := range f.take() {
				cc, ok := m.(*actors.CloseConn)
				if !ok || !cc.Flush || cc.Reason != "restart" {
					t.Fatalf("conn %d got %+v, want a flushing CloseConn", f.conn.ID, m)
				}
				ids = append(ids, f.conn.ID)
				h.send(&actors.Unregister{Conn: f.conn})
			}
		}
		return ids
	}
	if got := closedSoFar(); !reflect.DeepEqual(got, []uint64{1}) {
		t.Fatalf("closed at the start: %v, want [1]", got)
	}
	// Client 4 leaves on its own before its turn: it is skipped.
	h.send(&actors.Unregister{Conn: clients[3].conn})

	var order []uint64
	for step := 1; step < 8; step++ {
		clock.Advance(time.Second - time.Millisecond)
		h.d.RunUntilIdle()
		if got := closedSoFar(); len(got) != 0 {
			t.Fatalf("closed %v a millisecond before close %d was due", got, step+1)
		}
		clock.Advance(time.Millisecond)
		h.d.RunUntilIdle()
		order = append(order, closedSoFar()...)
		if step < 7 && len(main.got) != 0 {
			t.Fatalf("requester answered after %d of 8 closes: %+v", step+1, main.got)
		}
	}
	if want := []uint64{2, 3, 5, 6, 7, 8}; !reflect.DeepEqual(order, want) {
		t.Fatalf("closed in order %v, want %v", order, want)
	}
	if want := []any{&actors.RestartSpreadDone{Closed: 7, Mesh: 1}}; !reflect.DeepEqual(main.got, want) {
		t.Fatalf("requester got %+v, want %+v", main.got, want)
	}
	// The peer heard each client leave, and was never closed itself.
	for _, m := range peer.take() {
		if _, ok := m.(*actors.SendPeerPresence); !ok {
			t.Fatalf("mesh peer got %+v; want only presence updates", m)
		}
	}
	if n := clock.Pending(); n != 0 {
		t.Fatalf("%d timers left after the spread", n)
	}
	h.mustBeConsistent()

	// A connection whose handshake finishes now is told too; the final
	// CloseAll is what ends it.
	late := h.connect(key(0x50), false)
	if got := late.take(); len(got) != 1 || !reflect.DeepEqual(got[0], restarting) {
		t.Fatalf("late connection got %+v, want %+v", got, restarting)
	}
}

// TestRestartAllWithoutSpread: a zero spread closes every client at once;
// the answer waits until they are all gone, since only then have the
// watchers heard every departure. With no clients there is nothing to
// wait for.
func TestRestartAllWithoutSpread(t *testing.T) {
	h, clock := newHarnessWithClock(t)
	a, b := h.connect(key(1), false), h.connect(key(2), false)
	main := h.requester()
	h.restartAll(main, &actors.RestartAll{Reason: "now"})
	for _, f := range []*fakeClient{a, b} {
		if got := f.take(); len(got) != 2 || !reflect.DeepEqual(got[1], &actors.CloseConn{Reason: "now", Flush: true}) {
			t.Fatalf("conn %d got %+v", f.conn.ID, got)
		}
	}
	h.send(&actors.Unregister{Conn: a.conn})
	if len(main.got) != 0 {
		t.Fatalf("requester answered with a client still there: %+v", main.got)
	}
	h.send(&actors.Unregister{Conn: b.conn})
	if want := []any{&actors.RestartSpreadDone{Closed: 2}}; !reflect.DeepEqual(main.got, want) || clock.Pending() != 0 {
		t.Fatalf("requester got %+v (%d timers pending), want %+v", main.got, clock.Pending(), want)
	}

	h2, _ := newHarnessWithClock(t)
	main2 := h2.requester()
	h2.restartAll(main2, &actors.RestartAll{Spread: time.Minute})
	if want := []any{&actors.RestartSpreadDone{}}; !reflect.DeepEqual(main2.got, want) {
		t.Fatalf("with no connections the requester got %+v, want %+v", main2.got, want)
	}
}

// TestRestartDueTimesStayInTheWindow: the closes' times for an awkward
// count and a spread that does not divide evenly are increasing, start
// at once and end within the spread.
func TestRestartDueTimesStayInTheWindow(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		n      int
		spread time.Duration
	}{{7, 5 * time.Second}, {3, time.Nanosecond}, {10_000, 5 * time.Second}, {1, time.Hour}, {1000, 1<<63 - 1}} {
		p := &restartPlan{start: start, spread: c.spread, clients: make([]*actors.Conn, c.n)}
		prev := p.due(0)
		if !prev.Equal(start) {
			t.Fatalf("n=%d: first close at %v, want the start", c.n, prev.Sub(start))
		}
		for i := 1; i < c.n; i++ {
			d := p.due(i)
			if d.Before(prev) || !d.Before(start.Add(c.spread)) {
				t.Fatalf("n=%d spread=%v: close %d at %v after %v", c.n, c.spread, i, d.Sub(start), prev.Sub(start))
			}
			prev = d
		}
	}
}
