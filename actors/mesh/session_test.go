package mesh

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// recorder stands in for the link actor: it hands the test every message
// a session sends it.
type recorder struct{ got chan any }

func (r *recorder) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *sessionUpdates, *sessionEnded:
		r.got <- ctx.Message()
	}
}

// sessionWithPeer connects to a fake peer and starts a session whose
// messages go to a recorder.
func sessionWithPeer(t *testing.T) (*session, *peerSide, chan any) {
	t.Helper()
	pki, mk := newPKI(t), testMeshKey(1)
	peer := startPeer(t, pki, wire.GenerateNodePrivate(), mk, true)
	pc, err := dialPeer(context.Background(), testConfig(pki, mk), peer.target())
	if err != nil {
		t.Fatal(err)
	}
	ps := peer.next()
	sys := actors.NewSystem(zerolog.Nop())
	rec := &recorder{got: make(chan any, 64)}
	props, _ := sys.Props(actors.ActorMeshLink, func() actor.Actor { return rec })
	pid := sys.Root.Spawn(props)
	s := newSession(sys, pid, "peer", pc, 0, zerolog.Nop())
	s.start()
	t.Cleanup(s.close)
	return s, ps, rec.got
}

func next(t *testing.T, got chan any) any {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("the session sent nothing")
		return nil
	}
}

// However fast a peer announces, a session hands the registry one batch
// at a time: the next only once the last was taken (returnCredit).
func TestSessionBatchesWaitForTheRegistry(t *testing.T) {
	s, ps, got := sessionWithPeer(t)
	var keys []wire.NodePublic
	for i := range 1500 {
		keys = append(keys, testKey(byte(i%250)))
	}
	ps.present(t, keys...)
	var seen []wire.NodePublic
	for len(seen) < len(keys) {
		m, ok := next(t, got).(*sessionUpdates)
		if !ok {
			t.Fatalf("got %T before all updates", m)
		}
		if n := len(m.updates); n == 0 || n > maxUpdateBatch {
			t.Fatalf("batch of %d updates", n)
		}
		for _, u := range m.updates {
			if !u.Present {
				t.Fatal("PeerPresent read as a withdrawal")
			}
			seen = append(seen, u.Key)
		}
		s.returnCredit()
	}
	for i := range keys {
		if seen[i] != keys[i] {
			t.Fatalf("update %d is %v, want %v: order lost", i, seen[i].ShortString(), keys[i].ShortString())
		}
	}

	// Without the credit back, a second batch never leaves: the peer's
	// further announcements and even its hanging up wait behind it.
	ps.present(t, keys[:maxUpdateBatch+10]...)
	if m, ok := next(t, got).(*sessionUpdates); !ok || len(m.updates) != maxUpdateBatch {
		t.Fatalf("got %T, want a full batch", m)
	}
	ps.conn.Close()
	s.close()
	end, ok := next(t, got).(*sessionEnded)
	if !ok || !errors.Is(end.err, errLinkClosed) {
		t.Fatalf("got %T %+v, want the session to end closed while it waited for credit", end, end)
	}
}

// Every body length the spec allows is read; too short ones are
// dropped; other frames are skipped; PeerGone of any reason withdraws.
func TestSessionReadsPresenceFrames(t *testing.T) {
	s, ps, got := sessionWithPeer(t)
	k1, k2, k3, k4 := testKey(1), testKey(2), testKey(3), testKey(4)
	var b []byte
	frame := func(typ wire.FrameType, body []byte) {
		b = wire.AppendHeader(b, typ, uint32(len(body)))
		b = append(b, body...)
	}
	frame(wire.FramePeerPresent, k1[:])                                                   // key only
	frame(wire.FramePeerPresent, append(append([]byte{}, k2[:]...), make([]byte, 18)...)) // no flags
	frame(wire.FramePeerPresent, append(append([]byte{}, k3[:]...), make([]byte, 40)...)) // longer
	frame(wire.FramePeerPresent, k4[:31])                                                 // too short: dropped
	frame(wire.FrameKeepAlive, nil)
	frame(0x0b, []byte("unknown type"))
	frame(wire.FrameHealth, []byte("disk full"))
	frame(wire.FrameHealth, []byte("disk full"))
	frame(wire.FramePeerGone, k1[:]) // no reason byte
	frame(wire.FramePeerGone, append(append([]byte{}, k2[:]...), byte(wire.PeerGoneNotHere)))
	frame(wire.FramePeerGone, k3[:5]) // too short: dropped
	pd := pingData(time.Now().Add(-time.Millisecond))
	frame(wire.FramePong, pd[:])
	ps.raw(t, b)
	// The frames arrive in one write, but how many batches they make
	// depends on where the reader's reads end (over a link without a raw
	// socket, its first read after a wait is small): what must hold is
	// the updates, in order.
	want := []actors.MeshPeerUpdate{{Key: k1, Present: true}, {Key: k2, Present: true}, {Key: k3, Present: true}, {Key: k1}, {Key: k2}}
	var updates []actors.MeshPeerUpdate
	for len(updates) < len(want) {
		m, ok := next(t, got).(*sessionUpdates)
		if !ok {
			t.Fatalf("got %T after updates %+v, want %+v", m, updates, want)
		}
		updates = append(updates, m.updates...)
		s.returnCredit()
	}
	if len(updates) != len(want) {
		t.Fatalf("updates %+v, want %+v", updates, want)
	}
	for i := range want {
		if updates[i] != want[i] {
			t.Fatalf("update %d = %+v, want %+v", i, updates[i], want[i])
		}
	}
	// One more update proves the Pong before it was read.
	ps.present(t, k4)
	if m, ok := next(t, got).(*sessionUpdates); !ok || len(m.updates) != 1 || m.updates[0].Key != k4 {
		t.Fatalf("got %T %+v, want the update for k4", m, m)
	}
	if s.rtt.Load() <= 0 {
		t.Fatal("the Pong did not give a round trip")
	}
	if s.health != "disk full" {
		t.Fatalf("health %q", s.health)
	}
}

func TestSessionEndsOnBadInput(t *testing.T) {
	for _, c := range []struct {
		name  string
		bytes func() []byte
		want  string
	}{
		{"oversized frame", func() []byte { return wire.AppendHeader(nil, wire.FramePeerPresent, 2<<20) }, "broke the protocol"},
		{"cut mid-frame", func() []byte {
			k := testKey(1)
			return append(wire.AppendHeader(nil, wire.FramePeerPresent, 51), k[:10]...)
		}, "unexpected EOF"},
		{"closed before announcing anyone", func() []byte { return nil }, "same mesh key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, ps, got := sessionWithPeer(t)
			ps.raw(t, c.bytes())
			ps.conn.Close()
			end, ok := next(t, got).(*sessionEnded)
			if !ok || end.err == nil || !strings.Contains(end.err.Error(), c.want) {
				t.Fatalf("got %T %+v, want the session to end with an error saying %q", end, end, c.want)
			}
			<-s.readDone
			s.close()
			<-s.out.finished
		})
	}
}

func zeroLog() zerolog.Logger { return zerolog.Nop() }
