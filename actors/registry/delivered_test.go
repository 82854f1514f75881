package registry

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// TakeDelivered implements actors.DeliveredTaker as the client outbox
// does.
func (s *fakeSink) TakeDelivered() []actors.DeliveredSource {
	taken := s.pending
	s.pending = nil
	return taken
}

// ring reports that f's connection was written its first packet from src
// as its outbox does: onto the connection's list, with a bare Delivered
// posted (not run) only when the list was empty.
func (h *harness) ring(f *fakeClient, src wire.NodePublic, forwarded bool) {
	f.sink.pending = append(f.sink.pending, actors.DeliveredSource{Source: src, Forwarded: forwarded})
	if len(f.sink.pending) == 1 {
		h.sys.Send(h.reg, &actors.Delivered{Receiver: f.conn})
	}
}

// ForgetSource implements actors.SourceForgetter.
func (s *fakeSink) ForgetSource(src wire.NodePublic) { s.forgot = append(s.forgot, src) }

// forgot returns and clears the sources the registry told f's sink to
// forget.
func (f *fakeClient) forgot() []wire.NodePublic {
	got := f.sink.forgot
	f.sink.forgot = nil
	return got
}

// post posts msg to the registry without running it.
func (h *harness) post(msg any) { h.sys.Send(h.reg, msg) }

// TestRegisterOvertakesDeliveredBacklog: thousands of Delivered posted
// before a Register, an Unregister and a WatchConns wait for them, so a
// new connection's ServerInfo does not wait for PeerGone bookkeeping; the
// mailbox's counts still see every message.
func TestRegisterOvertakesDeliveredBacklog(t *testing.T) {
	order := backlogOrder(t, false)
	want := []string{"*actors.Register", "*actors.Unregister", "*actors.WatchConns"}
	if fmt.Sprint(order[:3]) != fmt.Sprint(want) {
		t.Fatalf("registry handled %v first, want %v", order[:3], want)
	}
	for i, m := range order[3:] {
		if m != "*actors.Delivered" {
			t.Fatalf("message %d after the control messages is %s", i+3, m)
		}
	}
}

// TestPostingOrderKeepsTheBacklogFirst: a registry made for a replay
// (WithPostingOrder) takes the same messages as posted.
func TestPostingOrderKeepsTheBacklogFirst(t *testing.T) {
	order := backlogOrder(t, true)
	want := []string{"*actors.Register", "*actors.Unregister", "*actors.WatchConns"}
	if fmt.Sprint(order[len(order)-3:]) != fmt.Sprint(want) {
		t.Fatalf("registry handled %v last, want %v", order[len(order)-3:], want)
	}
}

// backlogOrder posts 5,000 Delivered and then three control messages to
// a registry (WithPostingOrder if postingOrder), runs it, and returns
// the types of the messages in the order it handled them.
func backlogOrder(t *testing.T, postingOrder bool) []string {
	var order []string
	record := func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if ctx.Self().Id == "registry" {
				order = append(order, fmt.Sprintf("%T", env.Message))
			}
			next(ctx, env)
		}
	}
	var opts []Option
	if postingOrder {
		opts = append(opts, WithPostingOrder())
	}
	h := newHarnessWith(t, actors.NewStepDispatcher(), []actors.Option{actors.WithReceiverMiddleware(record)}, opts...)
	h.connect(key(1), false)
	b := h.connect(key(2), false)
	leaving := h.connect(key(3), false)
	mesh := h.connect(key(4), true)
	const backlog = 5000
	for range backlog {
		h.post(delivered(b.conn, key(1), false))
	}
	newcomer := h.newClient(key(5), false)
	h.post(&actors.Register{Conn: newcomer.conn})
	h.post(&actors.Unregister{Conn: leaving.conn})
	h.post(&actors.WatchConns{Conn: mesh.conn})
	if got := h.r.mbox.Depth(); got != backlog+3 {
		t.Fatalf("registry mailbox depth %d, want %d", got, backlog+3)
	}
	order = nil
	h.d.RunUntilIdle()
	handled := order
	if len(handled) != backlog+3 {
		t.Fatalf("registry handled %d messages, want %d", len(handled), backlog+3)
	}
	if newcomer.registered != 1 {
		t.Fatalf("newcomer registered %d times", newcomer.registered)
	}
	if got := h.r.mbox.Depth(); got != 0 {
		t.Fatalf("registry mailbox depth %d when idle", got)
	}
	h.mustBeConsistent()
	return handled
}

// TestDeliveredRingsAreTakenWhole: the registry takes a receiver's whole
// list on one Delivered; the sources reported after that ring again.
func TestDeliveredRingsAreTakenWhole(t *testing.T) {
	h := newHarness(t)
	b := h.connect(key(2), false)
	for i := range 3 {
		h.connect(key(byte(10+i)), false)
	}
	for i := range 3 {
		h.ring(b, key(byte(10+i)), false)
	}
	if got := h.r.mbox.Depth(); got != 1 {
		t.Fatalf("three first deliveries posted %d messages, want one", got)
	}
	h.d.RunUntilIdle()
	if n := len(h.r.conns[b.conn].heardFrom); n != 3 || len(b.sink.pending) != 0 {
		t.Fatalf("heard from %d sources, %d left in the list; want 3, 0", n, len(b.sink.pending))
	}
	h.connect(key(20), false)
	h.ring(b, key(20), false)
	h.d.RunUntilIdle()
	if _, ok := h.r.recipients[key(20)][b.conn]; !ok {
		t.Fatal("a source reported after the list was taken was not recorded")
	}
	h.mustBeConsistent()
}

// TestDeliveredAfterTheReceiverLeft: the receiver's Unregister overtakes
// its Delivered, which then finds no receiver; its list is still taken.
func TestDeliveredAfterTheReceiverLeft(t *testing.T) {
	h := newHarness(t)
	a := h.connect(key(1), false)
	b := h.connect(key(2), false)
	h.ring(b, key(1), false)
	h.post(&actors.Unregister{Conn: b.conn})
	h.d.RunUntilIdle()
	if len(h.r.recipients) != 0 || len(b.sink.pending) != 0 {
		t.Fatalf("recipients %v, list %v; want both empty", h.r.recipients, b.sink.pending)
	}
	h.send(&actors.Unregister{Conn: a.conn})
	if got := b.take(); len(got) != 0 {
		t.Fatalf("departed receiver was sent %v", got)
	}
	h.mustBeConsistent()
}

// TestPeerGoneReachesExactlyThoseWhoHeard: key 1 leaves while one
// receiver's report of it is already recorded and another's is still
// behind the Unregister in the mailbox. Each of the two hears PeerGone
// once (from goneFromRegion, and from the "source left while its packet
// was queued" path); a receiver that heard from someone else, and one
// that heard from nobody, hear nothing.
func TestPeerGoneReachesExactlyThoseWhoHeard(t *testing.T) {
	h := newHarness(t)
	a := h.connect(key(1), false)
	recorded := h.connect(key(2), false)
	queued := h.connect(key(3), false)
	other := h.connect(key(4), false)
	silent := h.connect(key(5), false)
	h.ring(recorded, key(1), false)
	h.d.RunUntilIdle()
	h.ring(queued, key(1), false)
	h.ring(other, key(4), false)
	h.post(&actors.Unregister{Conn: a.conn})
	h.d.RunUntilIdle()
	want := fmt.Sprint([]actors.SendPeerGone{{Peer: key(1), Reason: wire.PeerGoneDisconnected}})
	for name, f := range map[string]*fakeClient{"recorded": recorded, "queued": queued} {
		if got := fmt.Sprint(peerGones(f.take())); got != want {
			t.Fatalf("%s receiver got %v, want %v", name, got, want)
		}
	}
	for name, f := range map[string]*fakeClient{"other": other, "silent": silent} {
		if got := peerGones(f.take()); len(got) != 0 {
			t.Fatalf("%s receiver got %v, want nothing", name, got)
		}
	}
	if len(h.r.recipients[key(1)]) != 0 {
		t.Fatalf("departed key 1 still has recipients %v", h.r.recipients[key(1)])
	}
	h.mustBeConsistent()
}

// TestDeliveredAfterTheSourceCameBack: the source's Unregister and its
// Register again both overtake the Delivered. The receiver is recorded
// as hearing from the key's new connection, without a PeerGone for the
// absence (the key is back), and hears PeerGone when the key leaves
// again.
func TestDeliveredAfterTheSourceCameBack(t *testing.T) {
	h := newHarness(t)
	a := h.connect(key(1), false)
	b := h.connect(key(2), false)
	h.ring(b, key(1), false)
	h.post(&actors.Unregister{Conn: a.conn})
	back := h.newClient(key(1), false)
	h.post(&actors.Register{Conn: back.conn})
	h.d.RunUntilIdle()
	if got := peerGones(b.take()); len(got) != 0 {
		t.Fatalf("receiver got %v while key 1 is back, want nothing", got)
	}
	if _, ok := h.r.recipients[key(1)][b.conn]; !ok {
		t.Fatal("receiver not recorded as hearing from the returned key 1")
	}
	h.send(&actors.Unregister{Conn: back.conn})
	if got := peerGones(b.take()); len(got) != 1 || got[0].Peer != key(1) {
		t.Fatalf("receiver got %v when key 1 left again, want one PeerGone", got)
	}
	h.mustBeConsistent()
}

// TestForwardedDeliveredAfterWithdrawal: a mesh link's withdrawal of a
// key overtakes the Delivered of a packet it forwarded from that key.
// The key is then unknown to the region, as the source of a forwarded
// packet whose announcement is late would be: it goes on probation and
// is forgotten, without PeerGone (a later packet to it is answered
// PeerGone(not here)).
func TestForwardedDeliveredAfterWithdrawal(t *testing.T) {
	h, clock := newHarnessWithClock(t)
	b := h.connect(key(2), false)
	h.linkUp(1)
	h.update(1, true, key(9))
	h.ring(b, key(9), true)
	h.post(&actors.MeshUpdate{Link: 1, Updates: []actors.MeshPeerUpdate{{Key: key(9), Present: false}}})
	h.d.RunUntilIdle()
	if _, ok := h.r.unknownSources[key(9)]; !ok {
		t.Fatal("withdrawn forwarded source is not on probation")
	}
	clock.Advance(time.Duration(unknownSourceProbation))
	h.d.RunUntilIdle()
	if got := b.take(); len(got) != 0 {
		t.Fatalf("receiver was sent %v, want nothing", got)
	}
	if got := b.forgot(); !slices.Equal(got, []wire.NodePublic{key(9)}) {
		t.Fatalf("receiver's sink was told to forget %v, want key 9", got)
	}
	if len(h.r.recipients) != 0 || len(h.r.conns[b.conn].heardFrom) != 0 {
		t.Fatal("withdrawn forwarded source not forgotten after its probation")
	}
	h.mustBeConsistent()
}

// TestForgottenSourceReturnsAndLeaves is the sequence the whole-relay
// simulation found (seed 437): a key writes to b through the mesh, its
// withdrawal overtakes the Delivered, so it goes on probation, and the
// sweep forgets b as its recipient. The key then connects here and
// writes to b again, and leaves: b must hear PeerGone. That takes the
// outbox reporting the key a second time, which it does only because
// the sweep told it to forget the first report (ForgetSource, before
// the registry took anything else: the key's Register may be next); the
// stand-in outbox here rings again only then, as client.Outbox does.
func TestForgottenSourceReturnsAndLeaves(t *testing.T) {
	h, clock := newHarnessWithClock(t)
	b := h.connect(key(2), false)
	h.linkUp(1)
	h.update(1, true, key(22))
	h.ring(b, key(22), true)
	h.post(&actors.MeshUpdate{Link: 1, Updates: []actors.MeshPeerUpdate{{Key: key(22), Present: false}}})
	h.d.RunUntilIdle()
	clock.Advance(unknownSourceProbation)
	h.d.RunUntilIdle()
	b.take()

	a := h.connect(key(22), false)
	if slices.Contains(b.forgot(), key(22)) {
		h.ring(b, key(22), false) // the outbox, having forgotten, reports it again
	}
	h.d.RunUntilIdle()
	h.send(&actors.Unregister{Conn: a.conn})
	if got := peerGones(b.take()); len(got) != 1 || got[0].Peer != key(22) {
		t.Fatalf("after key 22 left, b was sent PeerGone %v, want one for key 22", got)
	}
	h.mustBeConsistent()
}

// TestIgnoredUnknownSourceIsForgotten: with no room left on probation, a
// forwarded unknown source's Delivered is not recorded, and the receiver
// is told to forget it, so that it reports the source again.
func TestIgnoredUnknownSourceIsForgotten(t *testing.T) {
	h, _ := newHarnessWithClock(t)
	b := h.connect(key(2), false)
	for i := range maxUnknownSources {
		var k wire.NodePublic
		k[0], k[1], k[2], k[31] = byte(i>>16), byte(i>>8), byte(i), 0x77
		h.r.unknownSources[k] = h.sys.Clock.Now()
	}
	h.send(delivered(b.conn, key(9), true))
	if got := b.forgot(); !slices.Equal(got, []wire.NodePublic{key(9)}) {
		t.Fatalf("receiver's sink was told to forget %v, want key 9", got)
	}
	if len(h.r.recipients[key(9)]) != 0 {
		t.Fatal("an ignored source was recorded")
	}
}
