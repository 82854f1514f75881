package actors

import (
	"sync/atomic"

	"github.com/derpd/derpd/wire"
)

// A flow is the traffic from one key to another, through one mesh peer
// or none. Readers count flows in FlowTallies, one per connection, and the
// flows actor collects them on a timer: the data path sends no message
// about flows at all, and its cost per packet is a comparison with the
// flow it counted last and two uncontended atomic additions.

// FlowCounter counts one flow as one reader sees it. Its reader is the only
// writer; the flows actor reads it.
type FlowCounter struct {
	Src, Dst wire.NodePublic
	// Via is the mesh peer the packets came from or go to: the link's
	// name for packets forwarded out, the peer server's key for packets
	// it forwarded in; empty for a flow between two local clients.
	Via     string
	Packets atomic.Int64
	Bytes   atomic.Int64
}

// DefaultFlowTallySize bounds one connection's tally. A client talks to a
// handful of peers; a mesh peer's link carries every flow of its node
// toward this one, so its tally gets the larger MeshFlowTallySize. When a
// tally is full, packets of new flows are counted together under
// OtherFlows until the flows actor has read the full tally; then the
// reader starts an empty one. The actor keeps the old counters until it
// has read them a last time, so nothing is lost, only regrouped.
const (
	DefaultFlowTallySize = 256
	MeshFlowTallySize    = 16384
)

// OtherFlows is the Via of the counter of a full tally's new flows (its
// Src and Dst are zero).
const OtherFlows = "(other flows)"

// FlowTally is one connection's flow counters.
type FlowTally struct {
	Conn uint64 // the connection whose reader counts into it

	// published is what the flows actor reads: the counters so far, in
	// the order they were made. The reader replaces the slice (never
	// changes one it has published) when it adds a counter.
	published atomic.Pointer[[]*FlowCounter]

	// full is raised by the reader when the tally is full; collected by
	// the flows actor once it has read the tally since. Only then may the
	// reader drop its counters and start over.
	full, collected atomic.Bool

	// Owned by the reader.
	max   int
	list  []*FlowCounter
	index map[flowKey]*FlowCounter
	last  *FlowCounter
	other *FlowCounter // the new flows of a full tally
}

type flowKey struct {
	src, dst wire.NodePublic
	via      string
}

// NewFlowTally returns an empty tally for connection conn holding up to max
// counters (0 means DefaultFlowTallySize).
func NewFlowTally(conn uint64, max int) *FlowTally {
	if max <= 0 {
		max = DefaultFlowTallySize
	}
	t := &FlowTally{Conn: conn, max: max}
	t.published.Store(&[]*FlowCounter{})
	return t
}

// Count adds one packet of n payload bytes to its flow. Reader only.
func (t *FlowTally) Count(src, dst wire.NodePublic, via string, n int) {
	c := t.last
	if c == nil || c.Dst != dst || c.Src != src || c.Via != via {
		c = t.counter(src, dst, via)
		t.last = c
	}
	c.Packets.Add(1)
	c.Bytes.Add(int64(n))
}

// counter finds or makes the counter of a flow that is not the last one.
func (t *FlowTally) counter(src, dst wire.NodePublic, via string) *FlowCounter {
	k := flowKey{src, dst, via}
	if c := t.index[k]; c != nil {
		return c
	}
	if len(t.list) >= t.max {
		if !t.collected.Load() {
			// Full, and not read since: wait (see DefaultFlowTallySize).
			t.full.Store(true)
			if t.other == nil {
				t.other = &FlowCounter{Via: OtherFlows}
				t.add(t.other)
			}
			return t.other
		}
		t.list, t.index, t.other = nil, nil, nil
		t.collected.Store(false)
		t.full.Store(false)
	}
	if t.index == nil {
		t.index = make(map[flowKey]*FlowCounter)
	}
	c := &FlowCounter{Src: src, Dst: dst, Via: via}
	t.index[k] = c
	t.add(c)
	return c
}

// add appends c and publishes a copy of the list: the slice the flows
// actor may be reading stays as it was.
func (t *FlowTally) add(c *FlowCounter) {
	t.list = append(t.list, c)
	pub := make([]*FlowCounter, len(t.list))
	copy(pub, t.list)
	t.published.Store(&pub)
}

// Collected tells the tally that the flows actor has just read every
// counter it publishes, so a full tally may start over. Flows actor only.
func (t *FlowTally) Collected() {
	if t.full.Load() {
		t.collected.Store(true)
	}
}

// Counters returns the counters the reader has published. Safe from any
// goroutine; the slice must not be changed.
func (t *FlowTally) Counters() []*FlowCounter { return *t.published.Load() }

// Messages to the flows actor.

// FlowTallyStarted hands the flows actor a new connection's tally.
type FlowTallyStarted struct{ Tally *FlowTally }

// FlowTallyEnded says the tally's connection has ended: the flows actor
// collects it one last time and lets it go.
type FlowTallyEnded struct{ Tally *FlowTally }
