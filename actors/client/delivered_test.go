package client

import (
	"slices"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// mustRing checks that the stand-in registry was rung rings times for
// this outbox, each time with a bare doorbell, and that the outbox's
// delivered list holds want (none forwarded); it takes the list, as the
// registry would, and forgets the messages.
func (e *outboxEnv) mustRing(t *testing.T, rings int, want ...wire.NodePublic) {
	t.Helper()
	if len(e.reg.got) != rings {
		t.Fatalf("registry got %d messages, want %d Delivered: %v", len(e.reg.got), rings, e.reg.got)
	}
	for _, m := range e.reg.got {
		d, ok := m.(*actors.Delivered)
		if !ok || d.Receiver != e.ob.owner || len(d.Sources) != 0 {
			t.Fatalf("registry got %#v, want a bare Delivered for the receiver", m)
		}
	}
	e.reg.got = nil
	var got []wire.NodePublic
	for _, s := range e.ob.TakeDelivered() {
		if s.Forwarded {
			t.Fatalf("source %s reported forwarded", s.Source.ShortString())
		}
		got = append(got, s.Source)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("delivered list %v, want %v", got, want)
	}
}

// TestDeliveredRingsOncePerReceiver floods receivers with packets from
// sources they have not heard from while the registry does not run: its
// mailbox holds one Delivered per receiver, not one per source (nor per
// packet), and taking a receiver's list yields every source once, in the
// order written, with its Forwarded bit.
func TestDeliveredRingsOncePerReceiver(t *testing.T) {
	const receivers, perRound = 8, 300
	d := actors.NewStepDispatcher()
	sys := actors.NewSystem(zerolog.Nop(), actors.WithDispatcher(d))
	rec := &recorder{}
	props, mbox := sys.Props(actors.ActorRegistry, func() actor.Actor { return rec })
	sys.Registry = sys.Root.Spawn(props)
	d.RunUntilIdle()

	type rcv struct {
		ob *Outbox
		e  *outboxEnv // for readFrame
	}
	var rs []rcv
	for i := range receivers {
		near, far := tcpPair(t)
		ob := NewOutbox(sys, near, OutboxConfig{KeepAlive: 3600e9})
		ob.owner = &actors.Conn{ID: uint64(i + 1), Key: testKey(0xa0 + byte(i)), Sink: ob}
		t.Cleanup(ob.Close)
		ob.Start()
		rs = append(rs, rcv{ob, &outboxEnv{far: far, rd: wire.NewReader(far, nil, 1<<20)}})
	}
	source := func(round, i int) wire.NodePublic {
		var k wire.NodePublic
		k[0], k[1], k[2] = byte(round), byte(i), byte(i>>8)
		return k
	}
	for round := range 3 {
		// In runs short of a queue's depth, each read back before the
		// next, so that none is dropped.
		const run = 16
		for start := 0; start < perRound; start += run {
			for _, r := range rs {
				for i := start; i < min(start+run, perRound); i++ {
					// Round 2 repeats round 1's sources: nothing new.
					p := packet(source(min(round, 1), i), []byte("p"))
					p.Forwarded = i%3 == 0
					r.ob.SendPacket(p, nil)
				}
			}
			for _, r := range rs {
				for i := start; i < min(start+run, perRound); i++ {
					if typ, _ := r.e.readFrame(t); typ != wire.FrameRecvPacket {
						t.Fatalf("round %d: read %v, want RecvPacket", round, typ)
					}
				}
			}
		}
		// Every packet is written, and the registry has not run.
		want := receivers
		if round == 2 {
			want = 0
		}
		if got := mbox.Depth(); got != int64(want) {
			t.Fatalf("round %d: registry mailbox holds %d messages for %d packets from new sources to %d receivers, want %d",
				round, got, receivers*perRound, receivers, want)
		}
		d.RunUntilIdle()
		rung := map[*actors.Conn]bool{}
		for _, m := range rec.got {
			dm := m.(*actors.Delivered)
			if rung[dm.Receiver] {
				t.Fatalf("round %d: receiver %d rang twice", round, dm.Receiver.ID)
			}
			rung[dm.Receiver] = true
			taken := dm.Take()
			if len(taken) != perRound {
				t.Fatalf("round %d: receiver %d reported %d sources, want %d", round, dm.Receiver.ID, len(taken), perRound)
			}
			for i, s := range taken {
				if s.Source != source(round, i) || s.Forwarded != (i%3 == 0) {
					t.Fatalf("round %d: receiver %d source %d is %+v", round, dm.Receiver.ID, i, s)
				}
			}
			if again := dm.Take(); len(again) != perRound {
				t.Fatalf("a second Take changed Sources to %d entries", len(again))
			}
		}
		rec.got = nil
	}
}

// TestDeliveredListIsBounded: a registry that never takes the list makes
// the outbox stop adding to it at maxPendingDelivered, with one doorbell
// rung; a source left out is not marked heard, so its next packet, once
// the list has room, reports it.
func TestDeliveredListIsBounded(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	e.ob.owner.Sink = e.ob
	src := func(i int) wire.NodePublic {
		var k wire.NodePublic
		k[0], k[1], k[2] = byte(i), byte(i>>8), 7
		return k
	}
	// The outbox is not started, so the test holds the writer's slot.
	for i := range maxPendingDelivered + 10 {
		e.ob.noteSource(src(i), false)
	}
	e.d.RunUntilIdle()
	if len(e.reg.got) != 1 {
		t.Fatalf("registry got %d messages, want one Delivered", len(e.reg.got))
	}
	e.reg.got = nil
	if got := len(e.ob.TakeDelivered()); got != maxPendingDelivered {
		t.Fatalf("list held %d sources, want the bound %d", got, maxPendingDelivered)
	}
	late := src(maxPendingDelivered + 3)
	e.ob.noteSource(late, false)
	e.ob.noteSource(src(1), false) // forgotten when seen started over for late
	e.ob.noteSource(late, false)   // heard: not again
	e.d.RunUntilIdle()
	e.mustRing(t, 1, late, src(1))
}
