package actorkit

import (
	"fmt"
	"slices"
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// TestDuplicateKeyLastWriterIsActive: of two connections with one key,
// the newer receives; the older takes the key's packets back by speaking,
// and the newer by speaking after it (upstream's last writer is active).
func TestDuplicateKeyLastWriterIsActive(t *testing.T) {
	k := New(t)
	key, src := Key(1), Key(2)
	older := k.Connect(key)
	newer := k.Connect(key)
	relayTo := func(want *Probe, other *Probe, payload string) {
		t.Helper()
		if !k.Relay(src, key, []byte(payload)) {
			t.Fatalf("no route for the key")
		}
		if got := want.TakePackets(); len(got) != 1 || string(got[0].Payload) != payload {
			t.Fatalf("%s: the active connection got %v", payload, got)
		}
		if got := other.TakePackets(); len(got) != 0 {
			t.Fatalf("%s: the idle duplicate got %v", payload, got)
		}
	}
	relayTo(newer, older, "the newer connection receives")
	newer.Speak() // not a duplicate idling: nothing to claim
	relayTo(newer, older, "speaking while active changes nothing")
	older.Speak()
	relayTo(older, newer, "the older spoke last")
	newer.Speak()
	relayTo(newer, older, "the newer spoke last")
	if st := k.RegistryState(); st.DupKeys != 1 || st.Conns != 2 {
		t.Fatalf("registry state %+v, want one duplicated key, two connections", st)
	}
	newer.Disconnect()
	relayTo(older, newer, "the last connection left receives")
	k.Check()
}

// TestPeerGoneOnlyToReceiversThatHeard: when a key leaves, PeerGone goes
// to the connections that were sent packets from it, and to no other.
func TestPeerGoneOnlyToReceiversThatHeard(t *testing.T) {
	k := New(t)
	departing := k.Connect(Key(1))
	heard1, heard2, deaf := k.Connect(Key(2)), k.Connect(Key(3)), k.Connect(Key(4))
	heard2.Delivered(departing.Conn.Key) // out of connection order on purpose
	heard1.Delivered(departing.Conn.Key)
	deaf.Delivered(heard1.Conn.Key) // heard from someone else
	departing.Disconnect()
	want := []any{&actors.SendPeerGone{Peer: departing.Conn.Key, Reason: wire.PeerGoneDisconnected}}
	for _, p := range []*Probe{heard1, heard2} {
		if got := p.Take(); describe(got) != describe(want) {
			t.Errorf("conn %d heard %s, want %s", p.Conn.ID, describe(got), describe(want))
		}
	}
	if got := deaf.Take(); len(got) != 0 {
		t.Errorf("a connection that never heard from the key got %s", describe(got))
	}
	k.Check()
}

// TestWatcherSnapshotAndUpdates: a mesh peer's WatchConns is answered
// with every key connected, in connection order, then one update per
// connection that arrives and per key that leaves.
func TestWatcherSnapshotAndUpdates(t *testing.T) {
	k := New(t)
	// Keys that sort against connection order: the snapshot must follow
	// the connections, not the keys or a map.
	x, y := k.Connect(Key(9)), k.Connect(Key(3))
	w := k.Connect(Key(5), AsMeshPeer())
	w.Watch()
	snapshot := []actors.PeerPresence{present(x), present(y), present(w)}
	if got := presence(t, w.Take()); !slices.Equal(got, snapshot) {
		t.Fatalf("snapshot %v, want %v", got, snapshot)
	}
	z := k.Connect(Key(1))
	x.Disconnect()
	dup := k.Connect(Key(3)) // a second connection announces itself too
	updates := []actors.PeerPresence{present(z), {Peer: x.Conn.Key, Present: false}, present(dup)}
	if got := presence(t, w.Take()); !slices.Equal(got, updates) {
		t.Fatalf("updates %v, want %v", got, updates)
	}
	k.Check()
}

// describe prints messages by value, for comparing them.
func describe(msgs []any) string {
	s := ""
	for _, m := range msgs {
		s += fmt.Sprintf("%T%+v;", m, m)
	}
	return s
}

func present(p *Probe) actors.PeerPresence {
	return actors.PeerPresence{Peer: p.Conn.Key, Present: true, Addr: p.Conn.Addr, Flags: p.Conn.Flags}
}

// presence flattens a watcher's SendPeerPresence messages.
func presence(t *testing.T, msgs []any) []actors.PeerPresence {
	t.Helper()
	var out []actors.PeerPresence
	for _, m := range msgs {
		sp, ok := m.(*actors.SendPeerPresence)
		if !ok {
			t.Fatalf("watcher got %T %v", m, m)
		}
		out = append(out, sp.Updates...)
	}
	return out
}

// TestForwarderChangesOnMeshLinkLoss: a key announced by two mesh links
// goes through the one that announced it first; when that link is lost
// its packets go through the other at once, and when both are lost the
// key has no route and those who heard from it hear PeerGone.
func TestForwarderChangesOnMeshLinkLoss(t *testing.T) {
	k := New(t)
	remote := Key(7)
	first := k.LinkUp("b.example", Key(100))
	second := k.LinkUp("c.example", Key(101))
	if a := first.Announce(remote); a.Keys != 1 {
		t.Fatalf("first link's announcement: %+v", a)
	}
	second.Announce(remote)
	receiver := k.Connect(Key(1))
	receiver.Delivered(remote)

	via := func(want, other *Forwarder, payload string) {
		t.Helper()
		if !k.Relay(receiver.Conn.Key, remote, []byte(payload)) {
			t.Fatalf("%s: no route", payload)
		}
		if got := want.TakePackets(); len(got) != 1 || got[0].Dst != remote || string(got[0].Payload) != payload {
			t.Fatalf("%s: %s forwarded %v", payload, want.Peer, got)
		}
		if got := other.TakePackets(); len(got) != 0 {
			t.Fatalf("%s: %s forwarded %v too", payload, other.Peer, got)
		}
	}
	via(first, second, "the first announcer forwards")
	first.Down()
	via(second, first, "the link lost, the other takes over")
	if got := receiver.Take(); len(got) != 0 {
		t.Fatalf("the key is still in the region, yet the receiver got %s", describe(got))
	}
	second.Down()
	if k.Relay(receiver.Conn.Key, remote, []byte("gone")) {
		t.Fatal("a route to a key no link announces any more")
	}
	want := []any{&actors.SendPeerGone{Peer: remote, Reason: wire.PeerGoneDisconnected}}
	if got := receiver.Take(); describe(got) != describe(want) {
		t.Fatalf("receiver got %s, want %s", describe(got), describe(want))
	}
	k.Check()
}
