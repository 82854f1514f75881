package mesh

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/actortest"
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

// TestLinkRecoversFromAPanic: a link that panics ends its session (the
// peer's keys leave the forwarder table) and reconnects.
func TestLinkRecoversFromAPanic(t *testing.T) {
	h := newLinkHarness(t, actortest.WithBoom())
	h.spawn()
	h.succeed(testKey(0xaa))
	st := h.state()
	h.send(&sessionUpdates{session: st.Session, updates: []actors.MeshPeerUpdate{{Key: testKey(1), Present: true}}})
	h.send(&actortest.Boom{})
	if got := h.state(); got.Status != StatusDown || got.LastError == "" {
		t.Fatalf("after a panic: %+v, want down with the reason", got)
	}
	if h.sys.Routes.Lookup(testKey(1)) != nil {
		t.Fatal("the panicked session's keys still forward")
	}
	h.advance(h.nextRetry())
	h.succeed(testKey(0xaa))
	if got := h.state(); got.Status != StatusUp || got.Sessions != 2 {
		t.Fatalf("after reconnecting: %+v", got)
	}
	// Panicking while down, it stays on course to reconnect.
	h.send(&sessionEnded{session: h.state().Session, err: io.EOF})
	h.send(&actortest.Boom{})
	h.advance(h.nextRetry())
	h.succeed(testKey(0xaa))
	if got := h.state(); got.Status != StatusUp || got.Sessions != 3 {
		t.Fatalf("after a panic while down: %+v", got)
	}
}

// TestManagerRebuildsItsLinksAfterAPanic: the manager's set of links is
// rebuilt from the configuration: every link is a new actor, and the DNS
// name is asked again at once.
func TestManagerRebuildsItsLinksAfterAPanic(t *testing.T) {
	h := newLinkHarness(t, actortest.WithBoom())
	h.cfg.testDial = func(ctx context.Context, _ Target, _ uint64, finish func(*peerConn, error)) {
		go func() {
			<-ctx.Done()
			finish(nil, ctx.Err())
		}()
	}
	res := &fakeResolver{addrs: addrs("10.0.0.1")}
	static, err := ParseMeshWith("derp9.example.com")
	if err != nil {
		t.Fatal(err)
	}
	h.pid = SpawnManager(h.sys, h.cfg, static, &DNS{Name: "derp.svc", Port: 443, Interval: 30 * time.Second, Resolver: res, syncLookup: true})
	h.d.RunUntilIdle()
	pids := func() map[string]string {
		res, err := h.d.Ask(h.sys, h.pid, &GetLinks{})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, l := range res.(*Links).Links {
			m[l.Name] = l.PID.Id
		}
		return m
	}
	before := pids()
	h.sys.Send(h.pid, &actortest.Boom{})
	h.d.RunUntilIdle()
	after := pids()
	if fmt.Sprint(slices.Sorted(maps.Keys(after))) != "[derp.svc/10.0.0.1 derp9.example.com]" {
		t.Fatalf("links after the recovery: %v", after)
	}
	for name, id := range after {
		if before[name] == id {
			t.Fatalf("link %s is the actor from before the panic", name)
		}
	}
	if res.asked != 2 {
		t.Fatalf("DNS asked %d times, want again at the recovery", res.asked)
	}
	if n := h.sys.Kind(actors.ActorMesh).Panics(); n != 1 {
		t.Fatalf("%d panics", n)
	}
}
