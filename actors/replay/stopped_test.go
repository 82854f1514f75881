package replay

import (
	"reflect"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/replay/internal/client"
	"github.com/derpd/derpd/wire"
)

// In a shutdown every client actor may stop before the registry takes
// the first Unregister: the PeerGone it then sends a departed client's
// peer goes to dead letters, and the journal shows none (seen with six
// Tailscale clients in interop's TestRecordReplayOfTailscaleClients). A
// replay must not count it as produced; a PeerGone sent before the peer's
// actor stopped must still count.
func TestStoppedClientCountsNoFrames(t *testing.T) {
	gone := wire.PeerGoneDisconnected.String()
	for _, tc := range []struct {
		name         string
		peerStopLate bool // b's actor stops after the registry told it a left
		readerDone   bool // b's actor takes its reader's last word before the Unregister, Stopped after
		wantPeerGone int64
	}{
		{"peer stopped first", false, false, 0},
		{"peer stopped after", true, false, 1},
		{"peer's reader done first", false, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBuilder(t)
			a, c := conn(1, 1), conn(2, 2)
			for _, x := range []*actors.Conn{a, c} {
				b.toRegistry(&actors.Register{Conn: x})
				b.toClient(x, &actors.Registered{})
			}
			b.packet(a, c.Key, 100)
			b.toRegistry(&actors.Delivered{Receiver: c, Sources: []actors.DeliveredSource{{Source: a.Key}}})
			b.toClient(a, &actor.Stopped{})
			switch {
			case tc.readerDone:
				// Live, the actor takes nothing after this: the
				// registry's PeerGone to it goes to dead letters, even
				// though its Stopping and Stopped are journaled after
				// the Unregister.
				b.toClient(c, client.ReaderDone)
			case !tc.peerStopLate:
				b.toClient(c, &actor.Stopped{})
			}
			b.toRegistry(&actors.Unregister{Conn: a})
			if tc.readerDone {
				b.toClient(c, &actor.Stopping{})
				b.toClient(c, &actor.Stopped{})
			}
			if tc.peerStopLate {
				b.toClient(c, &actors.SendPeerGone{Peer: a.Key, Reason: wire.PeerGoneDisconnected})
				b.toClient(c, &actor.Stopped{})
			}
			b.toRegistry(&actors.Unregister{Conn: c})
			data := b.bytes()

			for _, scale := range []int{1, 3} {
				rep := run(t, data, Options{Max: true, Scale: scale})
				if got := rep.Recorded.PeerGone[gone]; got != tc.wantPeerGone {
					t.Fatalf("scale %d: recorded %d PeerGone, want %d", scale, got, tc.wantPeerGone)
				}
				if got, want := rep.Produced.PeerGone[gone], int64(scale)*tc.wantPeerGone; got != want {
					t.Errorf("scale %d: produced %d PeerGone, want %d", scale, got, want)
				}
				if want := int64(2 * scale); rep.Produced.Registered != want {
					t.Errorf("scale %d: produced %d Registered, want %d", scale, rep.Produced.Registered, want)
				}
				if !reflect.DeepEqual(run(t, data, Options{Max: true, Scale: scale}).Counts(), rep.Counts()) {
					t.Errorf("scale %d: two replays differ", scale)
				}
			}
		})
	}
}
