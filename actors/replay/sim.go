package replay

import (
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// simConn is one simulated connection: the Conn the fresh registry is
// told about, the actor standing in for its client actor, and the sink
// standing in for its outbox.
type simConn struct {
	conn   *actors.Conn
	client *simClient
	sink   *simSink
	tally  *actors.FlowTally // its reader's flow tally, once FlowTallyStarted was replayed
	ended  bool              // the journal showed its client actor ending (the feeder's, not the actor's)
}

// simClient stands in for a client actor: instead of writing frames it
// counts what the registry asks it to write. Its counters are atomics
// because the report reads them from the feeding goroutine.
type simClient struct {
	mbox *actors.MailboxStats

	registered, presence, closes, restarting atomic.Int64
	peerGone                                 [numGoneReasons]atomic.Int64 // by reason; the last slot for any other
	maxDepth                                 atomic.Int64                 // deepest its mailbox was when it took a message

	// stopped: the recorded client actor had stopped by here, so what
	// the registry asks of it from now on would have gone to dead
	// letters live, and is not counted. Touched only in Receive.
	stopped bool
}

// simStopped tells a simulated client that its recorded actor stopped.
// It goes through the mailbox, behind what the registry sent before, so
// those frames still count.
type simStopped struct{}

// numGoneReasons: the two reasons the protocol defines, and one slot for
// any other, so an unexpected reason is counted, not lost (a slot per
// possible byte would cost 2 KiB per simulated client).
const numGoneReasons = 3

// goneSlot is reason's slot in simClient.peerGone.
func goneSlot(reason wire.PeerGoneReason) int { return min(int(reason), numGoneReasons-1) }

// goneSlotName is the report's name for a slot.
func goneSlotName(slot int) string {
	if slot == numGoneReasons-1 {
		return "other"
	}
	return wire.PeerGoneReason(slot).String()
}

func (c *simClient) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*simStopped); ok {
		c.stopped = true
		return
	}
	if c.stopped {
		return
	}
	switch m := ctx.Message().(type) {
	case *actors.Registered:
		c.registered.Add(1)
	case *actors.SendPeerGone:
		c.peerGone[goneSlot(m.Reason)].Add(1)
	case *actors.SendPeerPresence:
		c.presence.Add(int64(len(m.Updates)))
	case *actors.CloseConn:
		c.closes.Add(1)
	case *actors.SendRestarting:
		c.restarting.Add(1)
	default:
		return // lifecycle messages
	}
	// The message being handled still counts as waiting: it is the
	// depth the mailbox reached, this one included.
	if d := c.mbox.Depth(); d > c.maxDepth.Load() {
		c.maxDepth.Store(d)
	}
}

// simSink stands in for an outbox: it counts the packets routed to it and
// releases them at once, so a replay measures the actors and the routing,
// not socket writes.
type simSink struct {
	packets, bytes atomic.Int64
}

func (s *simSink) SendPacket(p *wire.Packet, _ *actors.Waiter) {
	s.packets.Add(1)
	s.bytes.Add(int64(p.Len()))
	p.Release()
}

// simForwarder stands in for a mesh link's outbox, counting the packets
// the routing table sent toward a mesh peer.
type simForwarder struct {
	name    string
	packets atomic.Int64
}

func (f *simForwarder) ForwardPacket(_ wire.NodePublic, p *wire.Packet, _ *actors.Waiter) {
	f.packets.Add(1)
	p.Release()
}

func (f *simForwarder) Name() string { return f.name }

// connIndex finds a recorded connection's clones by its id, once per
// packet. A process numbers its connections from 1, so ids up to
// denseConnIDs index a slice (one memory access, where a map of 100,000
// connections costs several cache misses per lookup) and larger ones, a
// journal's oddity, go in a map.
type connIndex struct {
	dense  [][]*simConn
	sparse map[uint64][]*simConn
}

// denseConnIDs bounds the slice: 24 MiB at most.
const denseConnIDs = 1 << 20

func (x *connIndex) get(id uint64) []*simConn {
	if id < uint64(len(x.dense)) {
		return x.dense[id]
	}
	return x.sparse[id]
}

func (x *connIndex) set(id uint64, clones []*simConn) {
	if id < denseConnIDs {
		if id >= uint64(len(x.dense)) {
			x.dense = append(x.dense, make([][]*simConn, int(id)+1-len(x.dense))...)
		}
		x.dense[id] = clones
		return
	}
	if x.sparse == nil {
		x.sparse = make(map[uint64][]*simConn)
	}
	x.sparse[id] = clones
}
