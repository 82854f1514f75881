package mesh

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/wire"
)

// linkHarness runs one link actor and a real registry on a step
// dispatcher with a fake clock. The link's dials are the test's: each
// attempt waits until the test finishes it, with an error or with one
// end of an in-memory connection whose other end the test holds.
type linkHarness struct {
	t        *testing.T
	d        *actors.StepDispatcher
	clock    *actors.FakeClock
	sys      *actors.System
	cfg      *Config
	pid      *actor.PID
	attempts []*attempt
	// onDial, if set, runs for each attempt as it starts.
	onDial func(a *attempt)
}

type attempt struct {
	ctx    context.Context
	gen    uint64
	finish func(*peerConn, error)
}

var epoch = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func newLinkHarness(t *testing.T, opts ...actors.Option) *linkHarness {
	h := &linkHarness{t: t}
	h.sys, h.d, h.clock = actors.NewSteppedSystem(epoch, opts...)
	priv := wire.GenerateNodePrivate()
	registry.Spawn(h.sys, priv.Public())
	h.cfg = &Config{PrivateKey: priv, PublicKey: priv.Public(), MeshKey: testMeshKey(1), Seed: 42}
	h.cfg.testDial = func(ctx context.Context, _ Target, gen uint64, finish func(*peerConn, error)) {
		a := &attempt{ctx: ctx, gen: gen, finish: finish}
		h.attempts = append(h.attempts, a)
		if h.onDial != nil {
			h.onDial(a)
		}
	}
	h.d.RunUntilIdle()
	return h
}

func (h *linkHarness) spawn() {
	tg := Target{Name: "peer.test", Host: "peer.test", Port: 443}
	props, _ := h.sys.Props(actors.ActorMeshLink, func() actor.Actor { return newLink(h.sys, h.cfg, tg) })
	h.pid = h.sys.Root.Spawn(props)
	h.d.RunUntilIdle()
}

// last is the attempt under way.
func (h *linkHarness) last() *attempt {
	h.t.Helper()
	if len(h.attempts) == 0 {
		h.t.Fatal("no dial attempt")
	}
	return h.attempts[len(h.attempts)-1]
}

func (h *linkHarness) fail(err error) {
	h.last().finish(nil, err)
	h.d.RunUntilIdle()
}

// succeed completes the attempt under way with a connection to a peer
// whose key is peerKey, and returns the peer's end of it.
func (h *linkHarness) succeed(peerKey wire.NodePublic) net.Conn {
	ours, theirs := net.Pipe()
	h.t.Cleanup(func() { ours.Close(); theirs.Close() })
	sock := &stampedConn{Conn: ours}
	h.last().finish(&peerConn{conn: sock, sock: sock, rd: wire.NewReader(sock, nil, maxLinkFrame), serverKey: peerKey}, nil)
	h.d.RunUntilIdle()
	return theirs
}

func (h *linkHarness) state() *LinkState {
	h.t.Helper()
	res, err := h.d.Ask(h.sys, h.pid, &GetLinkState{})
	if err != nil {
		h.t.Fatal(err)
	}
	return res.(*LinkState)
}

func (h *linkHarness) registry() *actors.RegistryState {
	h.t.Helper()
	res, err := h.d.Ask(h.sys, h.sys.Registry, &actors.GetRegistryState{})
	if err != nil {
		h.t.Fatal(err)
	}
	return res.(*actors.RegistryState)
}

func (h *linkHarness) send(msg any) {
	h.sys.Send(h.pid, msg)
	h.d.RunUntilIdle()
}

// nextRetry is how long until the pending reconnect; it fails the test
// if none is pending.
func (h *linkHarness) nextRetry() time.Duration {
	h.t.Helper()
	d, ok := h.clock.NextIn()
	if !ok {
		h.t.Fatal("no reconnect scheduled")
	}
	return d
}

// advance moves the clock and runs what the timers sent.
func (h *linkHarness) advance(d time.Duration) {
	h.clock.Advance(d)
	h.d.RunUntilIdle()
}

// Failed attempts back off, doubling from 250 ms to upstream's 5 s, each
// delay drawn from the upper half of its step; the next attempt starts
// when the timer fires, not before.
func TestLinkBacksOffUpToFiveSeconds(t *testing.T) {
	h := newLinkHarness(t)
	h.spawn()
	if st := h.state(); st.Status != StatusConnecting || len(h.attempts) != 1 {
		t.Fatalf("after start: %s with %d attempts", st.Status, len(h.attempts))
	}
	step := minBackoff
	for i := range 8 {
		h.fail(errors.New("connection refused"))
		st := h.state()
		if st.Status != StatusDown || st.Failures != i+1 || st.LastError != "connection refused" {
			t.Fatalf("attempt %d: state %+v", i+1, st)
		}
		d := h.nextRetry()
		if d < step/2 || d > step {
			t.Fatalf("attempt %d: retry in %v, want within [%v, %v]", i+1, d, step/2, step)
		}
		if got := st.RetryAt.Sub(h.clock.Now()); got != d {
			t.Fatalf("RetryAt says %v, timer says %v", got, d)
		}
		h.advance(d - time.Nanosecond)
		if len(h.attempts) != i+1 {
			t.Fatalf("attempt %d started before its timer", i+2)
		}
		h.advance(time.Nanosecond)
		if len(h.attempts) != i+2 || h.state().Status != StatusConnecting {
			t.Fatalf("no attempt %d when the timer fired", i+2)
		}
		step = min(2*step, maxBackoff)
	}
}

// A session registers with the registry, its announcements become
// forwarders, its end withdraws them all at once; a session that stayed
// up long enough starts the backoff over.
func TestLinkSessionLifecycle(t *testing.T) {
	h := newLinkHarness(t)
	h.spawn()
	h.fail(errors.New("refused"))
	h.advance(h.nextRetry())
	h.fail(errors.New("refused"))
	h.advance(h.nextRetry())
	peerKey := testKey(0xaa)
	theirs := h.succeed(peerKey)
	st := h.state()
	if st.Status != StatusUp || st.Sessions != 1 || st.PeerKey != peerKey || st.Session == 0 {
		t.Fatalf("state %+v", st)
	}
	if rs := h.registry(); rs.MeshSessions != 1 {
		t.Fatalf("registry has %d sessions, want 1", rs.MeshSessions)
	}

	// What the session's reader would hand over: the registry takes it.
	k1, k2 := testKey(1), testKey(2)
	h.send(&sessionUpdates{session: st.Session, updates: []actors.MeshPeerUpdate{{Key: k1, Present: true}, {Key: k2, Present: true}}})
	if got := h.state().Keys; got != 2 {
		t.Fatalf("link counts %d keys, want 2", got)
	}
	r := h.sys.Routes.Lookup(k1)
	if r == nil || r.Forward == nil || r.Local != nil {
		t.Fatalf("route for an announced key %+v, want a forwarder", r)
	}
	// Updates from a session that is not the current one change nothing.
	h.send(&sessionUpdates{session: st.Session + 100, updates: []actors.MeshPeerUpdate{{Key: testKey(3), Present: true}}})
	if h.sys.Routes.Lookup(testKey(3)) != nil {
		t.Fatal("a stale session's update was applied")
	}

	// Pings go out on the clock, stamped with its time.
	h.advance(pingInterval)
	rd := wire.NewReader(theirs, nil, 1<<20)
	typ, n, err := rd.ReadHeader()
	if err != nil || typ != wire.FramePing || n != wire.PingDataLen {
		t.Fatalf("peer read %v of %d bytes (%v), want a Ping", typ, n, err)
	}
	b, _ := rd.Next(wire.PingDataLen)
	if sent := time.Unix(0, int64(binary.BigEndian.Uint64(b))); !sent.Equal(h.clock.Now()) {
		t.Fatalf("ping stamped %v, want the clock's %v", sent, h.clock.Now())
	}

	// The session ends early: keys leave at once, backoff goes on.
	h.send(&sessionEnded{session: st.Session, err: io.EOF})
	if h.sys.Routes.Lookup(k1) != nil || h.sys.Routes.Lookup(k2) != nil {
		t.Fatal("keys of a broken session still forward")
	}
	if rs := h.registry(); rs.MeshSessions != 0 || rs.RemoteKeys != 0 {
		t.Fatalf("registry after the session ended: %+v", rs)
	}
	if d := h.nextRetry(); d < 500*time.Millisecond {
		t.Fatalf("retry in %v after a short session, want the backoff to go on (≥ 500 ms)", d)
	}

	// A session that lasts resets it.
	h.advance(h.nextRetry())
	h.succeed(peerKey)
	st = h.state()
	h.advance(stableAfter)
	h.send(&sessionEnded{session: st.Session, err: io.EOF})
	if d := h.nextRetry(); d > minBackoff {
		t.Fatalf("retry in %v after a stable session, want at most %v", d, minBackoff)
	}
	if got := h.state().Sessions; got != 2 {
		t.Fatalf("sessions = %d", got)
	}
}

// An entry that is this server stops there: no retry, nothing to watch.
func TestLinkToItselfStops(t *testing.T) {
	h := newLinkHarness(t)
	h.spawn()
	h.fail(errSelf)
	if st := h.state(); st.Status != StatusSelf {
		t.Fatalf("status %s", st.Status)
	}
	if n := h.clock.Pending(); n != 0 {
		t.Fatalf("%d timers pending for a self entry", n)
	}
}

// Stopping a link leaves nothing behind: a dial under way is cancelled
// and waited for, a session is closed and its keys withdrawn, no timer
// stays armed.
func TestLinkStopLeavesNothing(t *testing.T) {
	t.Run("while dialing", func(t *testing.T) {
		h := newLinkHarness(t)
		h.onDial = func(a *attempt) {
			go func() {
				<-a.ctx.Done()
				a.finish(nil, a.ctx.Err())
			}()
		}
		h.spawn()
		h.sys.Root.Stop(h.pid)
		h.d.RunUntilIdle()
		if err := h.last().ctx.Err(); err == nil {
			t.Fatal("the dial was not cancelled")
		}
		if n := h.clock.Pending(); n != 0 {
			t.Fatalf("%d timers pending", n)
		}
	})
	t.Run("while up", func(t *testing.T) {
		h := newLinkHarness(t)
		h.spawn()
		theirs := h.succeed(testKey(0xaa))
		st := h.state()
		h.send(&sessionUpdates{session: st.Session, updates: []actors.MeshPeerUpdate{{Key: testKey(1), Present: true}}})
		h.sys.Root.Stop(h.pid)
		h.d.RunUntilIdle()
		if rs := h.registry(); rs.MeshSessions != 0 || rs.RemoteKeys != 0 {
			t.Fatalf("registry after the link stopped: %+v", rs)
		}
		if _, err := theirs.Read(make([]byte, 1)); err == nil {
			t.Fatal("the session's connection is still open")
		}
		if n := h.clock.Pending(); n != 0 {
			t.Fatalf("%d timers pending", n)
		}
	})
}
