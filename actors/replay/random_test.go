package replay

import (
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/journal"
)

// randomJournal is a journal of seeded nonsense that is still well formed:
// registrations and departures in any order (twice, or of connections
// never registered), packets to keys here, gone or never seen, mesh links
// coming and going, watchers, ClosePeer, flow tallies, a restart.
func randomJournal(t *testing.T, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed*0x9e3779b97f4a7c15))
	b := newBuilder(t)
	conns := make([]*actors.Conn, 12)
	for i := range conns {
		conns[i] = &actors.Conn{ID: uint64(i + 1), Key: key(byte(rng.IntN(9))), CanMesh: i == 0, Since: testStart}
	}
	someConn := func() *actors.Conn { return conns[rng.IntN(len(conns))] }
	toFlows := journal.Target{Kind: actors.ActorFlows}
	for range 150 + rng.IntN(150) {
		c := someConn()
		switch rng.IntN(14) {
		case 0, 1:
			b.toRegistry(&actors.Register{Conn: c})
		case 2:
			b.toRegistry(&actors.Unregister{Conn: c})
		case 3, 4, 5, 6:
			b.packet(c, key(byte(rng.IntN(12))), rng.IntN(1500))
		case 7:
			b.toRegistry(&actors.Delivered{Receiver: c, Sources: []actors.DeliveredSource{{Source: key(byte(rng.IntN(12))), Forwarded: rng.IntN(2) == 0}}})
		case 8:
			b.toRegistry(&actors.Activity{Conn: c})
		case 9:
			b.toRegistry(&actors.WatchConns{Conn: c})
		case 10:
			b.toRegistry(&actors.ClosePeer{From: c, Target: key(byte(rng.IntN(12)))})
		case 11:
			link := uint64(1 + rng.IntN(2))
			switch rng.IntN(3) {
			case 0:
				b.toRegistry(&actors.MeshLinkUp{Link: link, Peer: "peer", PeerKey: key(100)})
			case 1:
				b.toRegistry(&actors.MeshUpdate{Link: link, Updates: []actors.MeshPeerUpdate{{Key: key(byte(rng.IntN(12))), Present: rng.IntN(3) > 0}}})
			default:
				b.toRegistry(&actors.MeshLinkDown{Link: link})
			}
		case 12:
			msg := any(&actors.FlowTallyStarted{Tally: actors.NewFlowTally(c.ID, 0)})
			if rng.IntN(2) == 0 {
				msg = &actors.FlowTallyEnded{Tally: actors.NewFlowTally(c.ID, 0)}
			}
			b.write(&journal.Record{Kind: journal.KindMessage, Target: toFlows, Msg: msg})
		case 13:
			if rng.IntN(4) == 0 {
				b.toRegistry(&actors.RestartAll{Spread: time.Duration(rng.IntN(50)) * time.Millisecond})
			} else {
				b.toRegistry(&actors.CloseAll{Reason: "test"})
			}
		}
	}
	return b.bytes()
}

// Whatever a well-formed journal holds, a replay does not panic, routes
// every packet once per clone (delivered, forwarded or dropped), and
// gives the same counts twice.
func TestRandomJournals(t *testing.T) {
	for seed := range uint64(40) {
		data := randomJournal(t, seed)
		for _, scale := range []int{1, 3} {
			first := run(t, data, Options{Max: true, Scale: scale, Batch: 8})
			second := run(t, data, Options{Max: true, Scale: scale, Batch: 8})
			routed := first.PacketsDelivered + first.PacketsForwarded + first.PacketsDropped
			if routed != first.PacketRecords*int64(scale) {
				t.Errorf("seed %d scale %d: %d packets routed of %d records", seed, scale, routed, first.PacketRecords)
			}
			if !reflect.DeepEqual(first.Counts(), second.Counts()) {
				t.Errorf("seed %d scale %d: two replays differ:\n%+v\n%+v", seed, scale, first.Counts(), second.Counts())
			}
		}
		// On protoactor's dispatcher too: no panic, no hang, every packet routed.
		rep := run(t, data, Options{Max: true, Dispatcher: DispatchDefault})
		if routed := rep.PacketsDelivered + rep.PacketsForwarded + rep.PacketsDropped; routed != rep.PacketRecords {
			t.Errorf("seed %d, default dispatcher: %d packets routed of %d records", seed, routed, rep.PacketRecords)
		}
	}
}
