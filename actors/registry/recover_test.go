package registry

import (
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
)

// fakeLink records what the registry tells a mesh link actor.
type fakeLink struct{ restarted int }

func (f *fakeLink) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*actors.RegistryRestarted); ok {
		f.restarted++
	}
}

// TestPanicRestartsTheRegistryFromEmptyTables: after a panic the
// registry trusts nothing it holds. Every connection it knew is closed,
// every mesh link is told to reconnect, the routes and gauges are
// emptied, and it serves new registrations from a consistent start.
func TestPanicRestartsTheRegistryFromEmptyTables(t *testing.T) {
	h := newHarness(t)
	a, b := h.connect(key(1), false), h.connect(key(2), false)
	h.send(&actors.WatchConns{Conn: b.conn})
	b.take()
	link := &fakeLink{}
	props, _ := h.sys.Props(actors.ActorMeshLink, func() actor.Actor { return link })
	linkPID := h.sys.Root.Spawn(props)
	h.send(&actors.MeshLinkUp{Link: 7, Peer: "peer", PeerKey: key(207), Forward: &fakeForwarder{name: "peer"}, Owner: linkPID})
	h.update(7, true, key(3))
	if h.sys.Routes.Len() != 3 {
		t.Fatalf("%d routes before the panic, want 3", h.sys.Routes.Len())
	}

	h.send(&actors.Register{Conn: nil}) // a message that makes register panic

	if n := h.sys.Kind(actors.ActorRegistry).Panics(); n != 1 {
		t.Fatalf("%d registry panics counted, want 1", n)
	}
	for _, f := range []*fakeClient{a, b} {
		got := f.take()
		if len(got) != 1 {
			t.Fatalf("%v was sent %v, want one CloseConn", f.conn.Key, got)
		}
		if _, ok := got[0].(*actors.CloseConn); !ok {
			t.Fatalf("%v was sent %T, want CloseConn", f.conn.Key, got[0])
		}
	}
	if link.restarted != 1 {
		t.Fatalf("mesh link told of the restart %d times, want 1", link.restarted)
	}
	if n := h.sys.Routes.Len(); n != 0 {
		t.Fatalf("%d routes left after the restart", n)
	}
	st := h.sys.Stats
	if st.ClientsLocal.Load() != 0 || st.ClientsRemote.Load() != 0 || st.Watchers.Load() != 0 {
		t.Fatalf("gauges after the restart: local %d remote %d watchers %d", st.ClientsLocal.Load(), st.ClientsRemote.Load(), st.Watchers.Load())
	}
	// The closed clients' Unregister, and the link's late updates, meet
	// tables that never knew them.
	h.send(&actors.Unregister{Conn: a.conn})
	if res := h.update(7, true, key(4)); !res.Unknown {
		t.Fatalf("an update of a session from before the restart was applied: %+v", res)
	}
	c := h.connect(key(5), false)
	if c.registered != 1 || h.activeSink(key(5)) != c.sink || h.sys.Routes.Len() != 1 {
		t.Fatalf("registration after the restart: confirmed %d, %d routes", c.registered, h.sys.Routes.Len())
	}
	h.mustBeConsistent()
}
