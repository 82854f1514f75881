package rejects

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

type harness struct {
	t     *testing.T
	d     *actors.StepDispatcher
	clock *actors.FakeClock
	sys   *actors.System
	pid   *actor.PID
}

var epoch = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, max int, opts ...actors.Option) *harness {
	h := &harness{t: t}
	h.sys, h.d, h.clock = actors.NewSteppedSystem(epoch, opts...)
	h.pid = Spawn(h.sys, max)
	h.d.RunUntilIdle()
	return h
}

func (h *harness) send(msg any) {
	h.sys.Send(h.pid, msg)
	h.d.RunUntilIdle()
}

func (h *harness) snapshot(k wire.NodePublic) *actors.RejectsSnapshot {
	h.t.Helper()
	res, err := h.d.Ask(h.sys, h.pid, &actors.GetRejects{Key: k})
	if err != nil {
		h.t.Fatal(err)
	}
	return res.(*actors.RejectsSnapshot)
}

func key(b byte) wire.NodePublic {
	var k wire.NodePublic
	k[0], k[31] = b, 5
	return k
}

func show(s *actors.RejectsSnapshot) string {
	var out string
	for _, r := range s.Rejects {
		out += fmt.Sprintf("[%s %s %s ×%d %q] ", r.Dir, r.Peer[:min(len(r.Peer), 12)], r.Reason, r.Count, r.Detail)
	}
	return out
}

// Events aggregate by direction, peer and reason, with counts and the
// latest detail, most recently seen first; a peer is its key, or its
// address before it has one.
func TestRejectsAggregate(t *testing.T) {
	h := newHarness(t, 0)
	var tally actors.RejectTally
	tally.Note(actors.RejectPacket, actors.RejectUnknownDest, key(1), key(9), "")
	tally.Note(actors.RejectPacket, actors.RejectUnknownDest, key(1), key(9), "")
	tally.Note(actors.RejectDelivery, actors.RejectQueueFull, key(2), wire.NodePublic{}, "")
	h.send(&actors.RejectBatch{Events: tally.Take()})
	if tally.Take() != nil {
		t.Fatal("Take did not empty the tally")
	}
	h.clock.Advance(time.Second)
	h.send(&actors.RejectBatch{Events: []actors.RejectEvent{{Dir: actors.RejectConnection, Reason: actors.RejectBadHandshake,
		Addr: netip.MustParseAddrPort("192.0.2.7:4242"), Detail: "EOF", Count: 1}}})
	tally.Note(actors.RejectPacket, actors.RejectUnknownDest, key(1), key(8), "")
	h.send(&actors.RejectBatch{Events: tally.Take()})

	want := `[inbound-connection 192.0.2.7:42 bad_handshake ×1 "EOF"] ` +
		`[inbound-packet nodekey:0100 unknown_destination ×3 "to ` + key(8).String() + `"] ` +
		`[outbound-delivery nodekey:0200 queue_full ×1 ""] `
	s := h.snapshot(wire.NodePublic{})
	if got := show(s); got != want {
		t.Fatalf("rejects\n got %s\nwant %s", got, want)
	}
	for _, r := range s.Rejects {
		if r.Reason == actors.RejectUnknownDest && (!r.First.Equal(epoch) || !r.Last.Equal(epoch.Add(time.Second))) {
			t.Fatalf("first %v last %v", r.First, r.Last)
		}
	}
	if got := show(h.snapshot(key(2))); got != `[outbound-delivery nodekey:0200 queue_full ×1 ""] ` {
		t.Fatalf("rejects naming key 2: %s", got)
	}
	if got := h.sys.Stats.RejectsTracked.Load(); got != 3 {
		t.Fatalf("derpd_rejects_tracked = %d", got)
	}
}

// However many distinct peers are refused, each direction keeps at most
// its bound, forgetting the least recently seen.
func TestRejectsStayWithinTheirBound(t *testing.T) {
	h := newHarness(t, 4)
	for i := range 10 {
		h.send(&actors.RejectBatch{Events: []actors.RejectEvent{
			{Dir: actors.RejectConnection, Reason: actors.RejectBadHandshake, Addr: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+i)), Count: 1},
		}})
		if i == 1 {
			// A peer seen again stays.
			h.send(&actors.RejectBatch{Events: []actors.RejectEvent{{Dir: actors.RejectPacket, Reason: actors.RejectUnknownDest, Key: key(1), Count: 1}}})
		}
	}
	s := h.snapshot(wire.NodePublic{})
	var conn, pkt int
	for _, r := range s.Rejects {
		switch r.Dir {
		case actors.RejectConnection:
			conn++
			if r.Peer == "192.0.2.1:1000" {
				t.Fatal("the oldest peer was kept")
			}
		case actors.RejectPacket:
			pkt++
		}
	}
	if conn != 4 || pkt != 1 || s.Evicted[actors.RejectConnection] != 6 || h.sys.Stats.RejectsEvicted.Load() != 6 {
		t.Fatalf("%d connection entries, %d packet, %d evicted: %s", conn, pkt, s.Evicted[actors.RejectConnection], show(s))
	}
}

// The ring keeps the most recent disconnects, newest first.
func TestRecentDisconnects(t *testing.T) {
	h := newHarness(t, 0)
	for i := range DefaultDisconnects + 5 {
		h.send(&actors.Disconnected{Conn: uint64(i + 1), Key: key(byte(i % 3)), Reason: "client hung up"})
		h.clock.Advance(time.Millisecond)
	}
	s := h.snapshot(wire.NodePublic{})
	if len(s.Disconnects) != DefaultDisconnects || s.Disconnects[0].Conn != DefaultDisconnects+5 || s.Disconnects[len(s.Disconnects)-1].Conn != 6 {
		t.Fatalf("%d disconnects, newest %d, oldest %d", len(s.Disconnects), s.Disconnects[0].Conn, s.Disconnects[len(s.Disconnects)-1].Conn)
	}
	for i := 1; i < len(s.Disconnects); i++ {
		if s.Disconnects[i].Ended.After(s.Disconnects[i-1].Ended) {
			t.Fatal("not newest first")
		}
	}
	for _, d := range h.snapshot(key(1)).Disconnects {
		if d.Key != key(1) {
			t.Fatalf("disconnect of %v in key 1's list", d.Key)
		}
	}
}
