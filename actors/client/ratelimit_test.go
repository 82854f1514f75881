package client

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// TestReceiveRateLimitWaitsAndNeverDrops: with a receive rate limit, a
// client that has spent its bucket is not read from until the bucket has
// refilled (on the system clock, here a fake one), and its packets are
// delayed, never dropped; mesh peers are exempt; a new limit applies to
// existing connections at their next frame.
func TestReceiveRateLimitWaitsAndNeverDrops(t *testing.T) {
	clock := actors.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	var mk wire.MeshKey
	mk[0] = 7
	s := startTestServer(t, Config{MeshKey: mk}, actors.WithClock(clock))
	const rate = 1000 // bytes per second
	s.sys.RecvRate.Store(actors.NormalizedRecvRate(rate, 0))
	a, b := s.connect(t, clientInfo), s.connect(t, clientInfo)
	s.syncRegistry(t)

	big := bytes.Repeat([]byte{1}, wire.MaxPacketSize) // its frame costs the whole bucket
	a.send(b.pub, big)
	if typ, body := b.readSkipping(); typ != wire.FrameRecvPacket || len(body) != wire.KeyLen+len(big) {
		t.Fatalf("b got %v of %d bytes, want the big packet", typ, len(body))
	}
	a.send(b.pub, []byte("second"))
	// The connections' keepalive timers (a minute away) are pending on
	// the same clock: wait for the reader's timer, the one due soon.
	waitFor(t, func() bool {
		d, ok := clock.NextIn()
		return s.sys.Stats.RateLimitWaits.Load() == 1 && ok && d < time.Second
	})
	// a's reader now waits, before handling the frame: the packet cannot
	// have been routed. The bucket refills at 1000 bytes per second.
	d, _ := clock.NextIn()
	if want := time.Duration(wire.KeyLen+len("second")) * time.Second / rate; d != want {
		t.Fatalf("waiting %v for a %d-byte frame at %d B/s, want %v", d, wire.KeyLen+6, rate, want)
	}
	clock.Advance(d)
	if typ, body := b.readSkipping(); typ != wire.FrameRecvPacket || string(body[wire.KeyLen:]) != "second" {
		t.Fatalf("b got %v %q, want the delayed packet", typ, body)
	}

	// Mesh peers are exempt.
	m := s.connect(t, wire.ClientInfo{Version: 2, MeshKey: mk})
	for range 3 {
		m.w.WriteForwardPacket(a.pub, b.pub, big)
	}
	if err := m.w.Flush(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if typ, _ := b.readSkipping(); typ != wire.FrameRecvPacket {
			t.Fatalf("b got %v, want a forwarded packet", typ)
		}
	}
	if n := s.sys.Stats.RateLimitWaits.Load(); n != 1 {
		t.Fatalf("%d waits, want still 1: mesh peers are not limited", n)
	}

	// Lifting the limit applies to a's connection at its next frame.
	s.sys.RecvRate.Store(nil)
	a.send(b.pub, big)
	a.send(b.pub, big)
	for range 2 {
		if typ, _ := b.readSkipping(); typ != wire.FrameRecvPacket {
			t.Fatalf("b got %v", typ)
		}
	}
	if n := s.sys.Stats.Dropped(actors.DropQueueTail, actors.KindOther) + s.sys.Stats.Dropped(actors.DropQueueHead, actors.KindOther); n != 0 {
		t.Fatalf("%d packets dropped", n)
	}
}

func TestNormalizedRecvRate(t *testing.T) {
	if r := actors.NormalizedRecvRate(0, 1<<20); r != nil {
		t.Fatalf("no rate gave %+v, want no limit", r)
	}
	if r := actors.NormalizedRecvRate(5000, 100); r.Burst != 65568 || r.BytesPerSec != 5000 {
		t.Fatalf("%+v, want the burst raised to 65568 as upstream", r)
	}
	if r := actors.NormalizedRecvRate(5000, 1<<20); r.Burst != 1<<20 {
		t.Fatalf("%+v, want the burst kept", r)
	}
}

// waitFor polls cond, yielding, until it holds: for state that a
// goroutine other than an actor's (here a reader) reaches.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		runtime.Gosched()
	}
}
