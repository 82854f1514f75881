package client

import (
	"bytes"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// TestServeServerInfoFirstWhenFramesArePipelined: a client may send frames
// right behind its ClientInfo, before the server has registered it.
// Whatever they provoke (a PeerGone for an unknown key, a refusal of a
// mesh privilege) comes after ServerInfo, as with upstream, which writes
// ServerInfo before it reads a frame. A probe of 300 such connections
// once found PeerGone first in nearly all of them.
func TestServeServerInfoFirstWhenFramesArePipelined(t *testing.T) {
	s := startTestServer(t, Config{})
	unknown := wire.GenerateNodePrivate().Public()
	for i := range 100 {
		tc := s.dial(t)
		body, err := wire.AppendClientInfo(nil, tc.priv, s.cfg.PublicKey, clientInfo)
		if err != nil {
			t.Fatal(err)
		}
		tc.w.WriteFrame(wire.FrameClientInfo, body, nil)
		tc.w.WriteSendPacket(unknown, discoPayload(byte(i)))
		if i%2 == 1 {
			// A mesh privilege the client lacks: the server closes the
			// connection, but only after ServerInfo.
			tc.w.WriteFrame(wire.FrameWatchConns, nil, nil)
		}
		if err := tc.w.Flush(); err != nil {
			t.Fatal(err)
		}
		typ, body, err := tc.tryRead()
		if err != nil {
			t.Fatalf("connection %d: reading the first frame after ServerKey: %v", i, err)
		}
		if typ != wire.FrameServerInfo {
			t.Fatalf("connection %d: first frame after ServerKey is %v %x, want ServerInfo", i, typ, body)
		}
		if i%2 == 1 {
			tc.expectClosed(wire.FrameServerInfo)
		} else if typ, body := tc.readSkipping(); typ != wire.FramePeerGone || wire.NodePublic(body[:32]) != unknown {
			t.Fatalf("connection %d: after ServerInfo got %v %x, want PeerGone(not here)", i, typ, body)
		}
		tc.conn.Close()
	}
}

// TestClientInfoMemoryGrowsWithTheBytes: a ClientInfo header may claim up
// to wire.MaxClientInfoLen; the server commits memory only as the bytes
// arrive, so a connection that claims 256 KiB and sends 100 bytes costs a
// few KiB, not 256.
func TestClientInfoMemoryGrowsWithTheBytes(t *testing.T) {
	const claimed, sent = wire.MaxClientInfoLen, 100
	src := bytes.NewReader(make([]byte, sent))
	rd := wire.NewReader(src, nil, wire.MaxClientInfoLen)
	// The reader's own buffer (pooled, every busy connection has one)
	// is taken once bytes flow, on the read after a first small one
	// comes back full: read past that before measuring.
	if err := rd.ReadFull(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if _, err := readGrowing(rd, claimed-1); err == nil {
		t.Fatal("a short body read without error")
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 4*clientInfoChunk {
		t.Fatalf("reading %d of %d claimed bytes allocated %d bytes", sent, claimed, got)
	}
	// And a whole body still reads whole.
	full := bytes.Repeat([]byte{7}, 3*clientInfoChunk+5)
	got, err := readGrowing(wire.NewReader(bytes.NewReader(full), nil, wire.MaxClientInfoLen), len(full))
	if err != nil || !bytes.Equal(got, full) {
		t.Fatalf("full body: %d bytes, %v", len(got), err)
	}
}

// TestServeClientActorPanicClosesTheConnection: a client actor that
// panics closes its connection (the client reconnects) and cleans up as
// for any disconnect, rather than living on in a state nobody knows.
func TestServeClientActorPanicClosesTheConnection(t *testing.T) {
	const boom = "test: panic here"
	panicOnBoom := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if m, ok := env.Message.(*actors.CloseConn); ok && m.Reason == boom {
				panic(boom)
			}
			next(ctx, env)
		}
	}
	s := startTestServer(t, Config{}, actors.WithReceiverMiddleware(panicOnBoom))
	a := s.connect(t, clientInfo)
	b := s.connect(t, clientInfo)
	s.syncRegistry(t)
	s.sys.Send(s.sys.Registry, &actors.CloseAll{Reason: boom}) // reaches both client actors
	a.expectClosed()
	b.expectClosed()
	// Both connections are gone from the registry and the counters; no
	// client actor is left.
	for {
		st, err := s.sys.Root.RequestFuture(s.sys.Registry, &actors.GetRegistryState{}, 10*time.Second).Result()
		if err != nil {
			t.Fatal(err)
		}
		if st.(*actors.RegistryState).Conns == 0 && s.sys.Kind(actors.ActorClient).Live() == 0 {
			break
		}
		runtime.Gosched() // the client actors' cleanup runs on their own goroutines
	}
	if n := s.sys.Kind(actors.ActorClient).Panics(); n != 2 {
		t.Fatalf("%d client actor panics counted, want 2", n)
	}
	if n := s.sys.Stats.CurrentConns.Load(); n != 0 {
		t.Fatalf("current connections %d after both closed", n)
	}
}

// deliveredCounter stands in for the registry and counts the sources
// Delivered reports.
type deliveredCounter struct{ n int }

func (d *deliveredCounter) Receive(ctx actor.Context) {
	if m, ok := ctx.Message().(*actors.Delivered); ok {
		d.n += len(m.Take())
	}
}

// TestOutboxForgetsSourcesAtItsBound: the sources an outbox remembers
// having reported are bounded; past the bound it starts over and reports
// them again rather than grow with every made-up source a mesh peer
// forwards.
func TestOutboxForgetsSourcesAtItsBound(t *testing.T) {
	sys, d, _ := actors.NewSteppedSystem(time.Unix(0, 0))
	reg := &deliveredCounter{}
	props, _ := sys.Props(actors.ActorRegistry, func() actor.Actor { return reg })
	sys.Registry = sys.Root.Spawn(props)
	ours, theirs := net.Pipe()
	defer ours.Close()
	defer theirs.Close()
	o := NewOutbox(sys, ours, OutboxConfig{})
	o.owner = &actors.Conn{ID: 1, Sink: o}
	src := func(i int) wire.NodePublic {
		var k wire.NodePublic
		k[0], k[1], k[31] = byte(i>>8), byte(i), 1
		return k
	}
	for i := range maxSeenSources + 5 {
		o.noteSource(src(i), true)
		if i%1000 == 0 {
			d.RunUntilIdle() // the registry takes the reports now and then
		}
	}
	o.noteSource(src(0), true) // forgotten at the bound, so reported again
	d.RunUntilIdle()
	if len(o.seen) > maxSeenSources {
		t.Fatalf("outbox remembers %d sources, bound %d", len(o.seen), maxSeenSources)
	}
	if reg.n != maxSeenSources+6 {
		t.Fatalf("%d Delivered reports, want %d", reg.n, maxSeenSources+6)
	}
}

// TestServeDuplicateKeyFightIsBounded: two connections with one key that
// take turns sending would each turn every frame into a blocking
// registry round trip. A connection claims the receiving role at once its
// first dupFreeClaims times in a window, then at most once per
// dupClaimInterval, and without waiting.
func TestServeDuplicateKeyFightIsBounded(t *testing.T) {
	var activity atomic.Int64
	countActivity := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if _, ok := env.Message.(*actors.Activity); ok {
				activity.Add(1)
			}
			next(ctx, env)
		}
	}
	clock := actors.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	s := startTestServer(t, Config{}, actors.WithReceiverMiddleware(countActivity), actors.WithClock(clock))
	a1 := s.connect(t, clientInfo)
	a2 := s.dial(t)
	a2.priv, a2.pub = a1.priv, a1.pub
	a2.sendClientInfo(s.cfg.PublicKey, clientInfo)
	if typ, _ := a2.read(); typ != wire.FrameServerInfo {
		t.Fatalf("a2 got %v", typ)
	}
	s.syncRegistry(t)
	ping := func(c *testClient) {
		t.Helper()
		c.frame(wire.FramePing, []byte("fight!!!"))
		if typ, _ := c.readSkipping(); typ != wire.FramePong {
			t.Fatal("no pong")
		}
	}
	for range 50 {
		ping(a1)
		ping(a2)
	}
	s.syncRegistry(t)
	if n := activity.Load(); n != 2*dupFreeClaims {
		t.Fatalf("%d claims in 100 alternating frames at one instant, want %d (the free ones of each)", n, 2*dupFreeClaims)
	}
	// A quarter second on, each may claim once more, without waiting.
	clock.Advance(dupClaimInterval)
	ping(a1)
	// a1's claim is not waited for: a2 can claim back only once the
	// registry has applied it.
	s.syncRegistry(t)
	ping(a2)
	for range 10 {
		ping(a1)
		ping(a2)
	}
	s.syncRegistry(t)
	if n, f := activity.Load(), s.sys.Stats.DupFightClaims.Load(); n != 2*dupFreeClaims+2 || f != 2 {
		t.Fatalf("after the interval: %d claims, %d in a fight; want %d and 2", n, f, 2*dupFreeClaims+2)
	}
}

// TestWatcherThatStopsReadingIsClosedAtItsBacklog: updates for a watcher
// that has stopped reading pile up in its control queue. None may be
// dropped, so past a bound (at least twice its snapshot) the connection
// is closed, for the peer to reconnect and start from a fresh snapshot.
func TestWatcherThatStopsReadingIsClosedAtItsBacklog(t *testing.T) {
	sys, _, _ := actors.NewSteppedSystem(time.Unix(0, 0))
	ours, theirs := net.Pipe() // nobody reads theirs
	defer theirs.Close()
	o := NewOutbox(sys, ours, OutboxConfig{})
	o.owner = &actors.Conn{ID: 1}
	o.Start()
	snapshot := make([]actors.PeerPresence, 50000)
	for i := range snapshot {
		snapshot[i] = actors.PeerPresence{Present: true}
	}
	o.QueuePresence(snapshot)
	one := []actors.PeerPresence{{Present: false}}
	for range 2 * maxPresenceBacklog {
		if o.closed.Load() {
			break
		}
		o.QueuePresence(one)
	}
	if !o.closed.Load() || sys.Stats.PresenceBacklogCloses.Load() != 1 {
		t.Fatalf("closed %v, backlog closes %d; want the watcher closed once", o.closed.Load(), sys.Stats.PresenceBacklogCloses.Load())
	}
	if err := o.WriteErr(); err == nil || err.Error() != errPresenceBacklog.Error() {
		t.Fatalf("write error %v, want %v", err, errPresenceBacklog)
	}
	o.ctrlMu.Lock()
	n := len(o.ctrl)
	o.ctrlMu.Unlock()
	if n > 2*len(snapshot) {
		t.Fatalf("%d updates queued, bound %d", n, 2*len(snapshot))
	}
	o.QueuePresence(one) // after closing: neither queued nor counted again
	if sys.Stats.PresenceBacklogCloses.Load() != 1 {
		t.Fatal("counted twice")
	}
	<-o.Finished()
}
