package actorkit

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/actors/flows"
	"github.com/derpd/derpd/wire"
)

// TestRelayBetweenRealConnections: a packet one client sends reaches the
// other as a RecvPacket naming its true source.
func TestRelayBetweenRealConnections(t *testing.T) {
	Run(t, func(k *Kit) {
		a, b := k.Dial(), k.Dial()
		a.SendPacket(b.Key, payloadN(0))
		expectPackets(t, b, a.Key, 0)
		if got := a.Take(); len(got) != 0 {
			t.Fatalf("the sender got %v", got)
		}
	})
}

// TestKeepAliveAtTheInterval: a connection's keepalive is written when its
// period (the interval plus this connection's jitter, at most a twelfth
// more) is up, not a nanosecond before, and again a period later.
func TestKeepAliveAtTheInterval(t *testing.T) {
	const interval = time.Minute
	Run(t, func(k *Kit) {
		c := k.Dial()
		if n := k.Clock.Pending(); n != 1 {
			t.Fatalf("%d timers pending, want the keepalive's alone", n)
		}
		period, _ := k.Clock.NextIn()
		if period < interval || period > interval+interval/12 {
			t.Fatalf("keepalive due in %v, want %v plus at most a twelfth", period, interval)
		}
		for i := range 2 {
			k.Advance(period - time.Nanosecond)
			if got := c.Take(); len(got) != 0 {
				t.Fatalf("keepalive %d: %v written a nanosecond early", i, got)
			}
			k.Advance(time.Nanosecond)
			if got := c.Take(); len(got) != 1 || got[0].Type != wire.FrameKeepAlive {
				t.Fatalf("keepalive %d: at the period got %v, want one KeepAlive", i, got)
			}
		}
	}, WithServer(client.Config{KeepAlive: interval}))
}

// payloadN is the payload of the n-th test packet (not disco).
func payloadN(n int) []byte { return []byte(fmt.Sprintf("packet %d", n)) }

// expectPackets checks that c was written exactly the packets want from
// src, in order, and nothing else.
func expectPackets(t *testing.T, c *Client, src wire.NodePublic, want ...int) {
	t.Helper()
	var got []string
	for _, f := range c.Take() {
		s, p, ok := f.RecvPacket()
		if !ok || s != src {
			t.Fatalf("frame %v %q, want RecvPacket from %v", f.Type, f.Body, src)
		}
		got = append(got, string(p))
	}
	var w []string
	for _, n := range want {
		w = append(w, string(payloadN(n)))
	}
	if !slices.Equal(got, w) {
		t.Fatalf("received %q, want %q", got, w)
	}
}

// conn is the registry's handle on a client's connection.
func (k *Kit) conn(t *testing.T, c *Client) *actors.Conn {
	t.Helper()
	p := k.Peer(c.Key)
	if len(p.Conns) != 1 {
		t.Fatalf("%d connections for %v", len(p.Conns), c.Key)
	}
	return p.Conns[0].Conn
}

// TestStallDetection: a receiver whose socket write has been blocked for
// no time at all by the clock is keeping up, so a sender meeting its full
// queue waits for room and nothing is dropped; once the write has been
// blocked longer than actors.StalledWriteAfter, the receiver is stalled
// and the sender does not wait.
func TestStallDetection(t *testing.T) {
	const depth = 4
	Run(t, func(k *Kit) {
		a, b := k.Dial(), k.Dial()
		bc := k.conn(t, b)
		b.Stall()
		for n := range 1 + depth { // one in the blocked write, depth queued
			a.SendPacket(b.Key, payloadN(n))
		}
		a.SendPacket(b.Key, payloadN(depth+1)) // the queue is full: a waits
		if d := bc.Dropped[actors.DropQueueHead].Load() + bc.Dropped[actors.DropQueueTail].Load(); d != 0 {
			t.Fatalf("%d packets dropped for a receiver blocked for no time", d)
		}
		b.Resume()
		expectPackets(t, b, a.Key, 0, 1, 2, 3, 4, 5)

		b.Stall()
		for n := 6; n < 6+1+depth; n++ { // as before: the queue is full
			a.SendPacket(b.Key, payloadN(n))
		}
		k.Advance(actors.StalledWriteAfter + time.Millisecond)
		// Stalled now: a's reader must not wait, or it could not answer
		// the ping behind the packet.
		a.SendPacket(b.Key, payloadN(11))
		a.Ping([wire.PingDataLen]byte{1})
		if got := a.Take(); len(got) != 1 || got[0].Type != wire.FramePong {
			t.Fatalf("sender got %v, want its Pong: it waited for a stalled receiver", got)
		}
		if d := bc.Dropped[actors.DropQueueHead].Load(); d != 1 {
			t.Fatalf("%d oldest packets dropped for a stalled receiver, want 1", d)
		}
		b.Resume()
		expectPackets(t, b, a.Key, 6, 8, 9, 10, 11)
	}, WithServer(client.Config{QueueDepth: depth}))
}

// TestQueueOverflowDropsOldest: a stalled receiver's full queue makes
// room for each new packet by dropping its oldest, so it gets the newest
// when it reads again.
func TestQueueOverflowDropsOldest(t *testing.T) {
	const depth = 4
	Run(t, func(k *Kit) {
		a, b := k.Dial(), k.Dial()
		bc := k.conn(t, b)
		b.Stall()
		a.SendPacket(b.Key, payloadN(0)) // the write that blocks
		k.Advance(actors.StalledWriteAfter + time.Millisecond)
		for n := 1; n <= depth+3; n++ {
			a.SendPacket(b.Key, payloadN(n))
		}
		if d := bc.Dropped[actors.DropQueueHead].Load(); d != 3 {
			t.Fatalf("%d oldest packets dropped, want 3", d)
		}
		b.Resume()
		expectPackets(t, b, a.Key, 0, 4, 5, 6, 7)
	}, WithServer(client.Config{QueueDepth: depth}))
}

// TestFlowSwept: a flow counted by a real connection's reader is
// collected at the next interval, survives a sweep while it has been
// active within Inactive, and is forgotten at the first sweep after it
// has been inactive that long, not before.
func TestFlowSwept(t *testing.T) {
	cfg := flows.Config{Interval: time.Second, Inactive: time.Minute, Sweep: 3 * time.Minute}
	Run(t, func(k *Kit) {
		a, b := k.Dial(), k.Dial()
		a.SendPacket(b.Key, payloadN(0))
		k.Advance(cfg.Interval)
		snap := k.Flows()
		if len(snap.Flows) != 1 || snap.Flows[0].Src != a.Key || snap.Flows[0].Dst != b.Key || snap.Flows[0].Packets != 1 {
			t.Fatalf("after a collection: %+v, want the one flow a→b of one packet", snap.Flows)
		}
		// Active again half a minute before the first sweep.
		k.Advance(cfg.Sweep - 30*time.Second - cfg.Interval)
		a.SendPacket(b.Key, payloadN(1))
		k.Advance(30 * time.Second)
		if snap := k.Flows(); snap.Tracked != 1 || snap.Swept != 0 {
			t.Fatalf("after a sweep that found it active: tracked %d, swept %d, want 1 and 0", snap.Tracked, snap.Swept)
		}
		k.Advance(cfg.Sweep - time.Nanosecond)
		if snap := k.Flows(); snap.Tracked != 1 || snap.Swept != 0 {
			t.Fatalf("before the next sweep: tracked %d, swept %d, want 1 and 0", snap.Tracked, snap.Swept)
		}
		k.Advance(time.Nanosecond)
		if snap := k.Flows(); snap.Tracked != 0 || snap.Swept != 1 {
			t.Fatalf("after the next sweep: tracked %d, swept %d, want 0 and 1", snap.Tracked, snap.Swept)
		}
	}, WithFlows(cfg))
}

// TestDuplicateConnectionsLastWriterReceives: the same as
// TestDuplicateKeyLastWriterIsActive through real connections, where the
// claim is the reader's (a frame from the idle duplicate, here a ping,
// waits for the registry to switch before it is answered).
func TestDuplicateConnectionsLastWriterReceives(t *testing.T) {
	Run(t, func(k *Kit) {
		key := PrivateKey(500)
		older, newer := k.Dial(WithPrivateKey(key)), k.Dial(WithPrivateKey(key))
		sender := k.Dial()
		sender.SendPacket(older.Key, payloadN(0))
		expectPackets(t, newer, sender.Key, 0)
		expectPackets(t, older, sender.Key)

		older.Ping([wire.PingDataLen]byte{7})
		if got := older.Take(); len(got) != 1 || got[0].Type != wire.FramePong {
			t.Fatalf("the older connection's ping got %v", got)
		}
		sender.SendPacket(older.Key, payloadN(1))
		expectPackets(t, older, sender.Key, 1)
		expectPackets(t, newer, sender.Key)

		newer.Ping([wire.PingDataLen]byte{8})
		newer.Take()
		sender.SendPacket(older.Key, payloadN(2))
		expectPackets(t, newer, sender.Key, 2)
		expectPackets(t, older, sender.Key)
		k.Check()
	})
}
