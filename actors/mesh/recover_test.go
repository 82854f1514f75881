package mesh

import (
	"testing"

	"github.com/derpd/derpd/actors"
)

// TestLinkReconnectsWhenTheRegistryRestarts: a registry that recovered
// from a panic has forgotten every session. The link hears of it and
// reconnects, so its peer's keys are announced again; without that the
// region would stay cut in two for as long as the session lasted.
func TestLinkReconnectsWhenTheRegistryRestarts(t *testing.T) {
	h := newLinkHarness(t)
	h.spawn()
	h.succeed(testKey(0xaa))
	st := h.state()
	k := testKey(1)
	h.send(&sessionUpdates{session: st.Session, updates: []actors.MeshPeerUpdate{{Key: k, Present: true}}})
	if h.sys.Routes.Lookup(k) == nil {
		t.Fatal("announced key not routed")
	}

	h.sys.Send(h.sys.Registry, &actors.Register{Conn: nil}) // makes the registry panic
	h.d.RunUntilIdle()

	if got := h.state(); got.Status == StatusUp {
		t.Fatalf("link still up on a session the registry forgot: %+v", got)
	}
	h.advance(h.nextRetry())
	h.succeed(testKey(0xaa))
	st = h.state()
	if st.Status != StatusUp || st.Sessions != 2 {
		t.Fatalf("after the restart: %+v, want a second session up", st)
	}
	if rs := h.registry(); rs.MeshSessions != 1 {
		t.Fatalf("registry knows %d sessions, want the new one", rs.MeshSessions)
	}
	h.send(&sessionUpdates{session: st.Session, updates: []actors.MeshPeerUpdate{{Key: k, Present: true}}})
	if h.sys.Routes.Lookup(k) == nil {
		t.Fatal("key announced on the new session not routed")
	}
}

// A session the registry answers as unknown (its RegistryRestarted lost,
// or overtaken) is ended on the first update.
func TestLinkEndsASessionTheRegistryDoesNotKnow(t *testing.T) {
	h := newLinkHarness(t)
	h.spawn()
	h.succeed(testKey(0xaa))
	st := h.state()
	h.sys.Send(h.sys.Registry, &actors.MeshLinkDown{Link: st.Session}) // the registry forgets it
	h.d.RunUntilIdle()
	h.send(&sessionUpdates{session: st.Session, updates: []actors.MeshPeerUpdate{{Key: testKey(1), Present: true}}})
	if got := h.state(); got.Status == StatusUp {
		t.Fatalf("link still up on a session the registry does not know: %+v", got)
	}
}
