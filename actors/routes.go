package actors

import (
	"hash/maphash"
	"sync/atomic"
	"time"

	"github.com/derpd/derpd/wire"
)

// Tuning of the outboxes, clients' and mesh links': facts about healthy
// receivers, not knobs to turn for speed.
const (
	// MaxQueueWait bounds how long a reader waits for room in the queue
	// of a receiver that is draining. Under CPU overload the destination's
	// writer needs a scheduling slot, a few milliseconds at worst; a
	// longer wait means something else is wrong, and dropping the oldest
	// takes over.
	MaxQueueWait = 20 * time.Millisecond

	// StalledWriteAfter is how long one socket write may block before a
	// client counts as not reading. A write of one batch to a receiver
	// with room in its socket buffer takes microseconds. (A mesh link,
	// which carries a whole node's traffic through TLS, has a threshold
	// of its own.)
	StalledWriteAfter = 2 * time.Millisecond

	// BatchFlushBytes is how much a writer collects before it flushes even
	// though more frames are ready, so one slow flush never holds more
	// than about a buffer's worth of data past its write deadline.
	BatchFlushBytes = 48 << 10
)

// PacketSink accepts relayed packets for one destination. SendPacket takes
// ownership of the packet (it is released whether it is written or
// dropped). It is called from other connections' read loops: it may make
// the caller wait, briefly and only through w, for room in a destination
// that is draining; it never waits on a destination whose socket has
// stopped taking data. A nil w means never wait.
type PacketSink interface {
	SendPacket(p *wire.Packet, w *Waiter)
}

// Waiter lets a read loop wait, with a bound, for room in a full queue.
// Waiting is how an overloaded server pushes back on senders through TCP
// instead of reading packets only to drop them. Each read loop owns one, so
// its timer is reused rather than allocated per wait.
type Waiter struct {
	timer *time.Timer

	// Direct is set by the owner when the packet it is routing is the last
	// it has read for now: a destination with nothing queued may then
	// write it on the spot instead of waking its writer.
	Direct bool

	// Burst is set by the owner when the next frame is already whole in
	// its buffer, so it will route it without waiting on its socket. A
	// destination may then queue the packet without waking its writer
	// and leave that to the owner (see Defer): the burst goes out in one
	// write, made by the owner, instead of waking a writer per burst.
	Burst bool

	// Rejects, when set, gathers what the destinations this loop sends to
	// could not deliver, for the rejects actor; the owner sends it on.
	Rejects *RejectTally

	// deferred is the destination this loop queued packets for without
	// waking it; at most one at a time.
	deferred Deferrer

	// Counts since the owner last folded them into Stats.
	Waits, Timeouts int64
}

// NoteDrop records, when w gathers rejects, that a packet for key was
// not delivered.
func (w *Waiter) NoteDrop(reason RejectReason, key wire.NodePublic, detail string) {
	if w != nil && w.Rejects != nil {
		w.Rejects.Note(RejectDelivery, reason, key, wire.NodePublic{}, detail)
	}
}

// Deferrer is a destination that lets a read loop wake it late.
type Deferrer interface {
	// WakeDeferred sends what the loop queued without waking the
	// destination's writer. It never waits on the destination.
	WakeDeferred()
}

// Defer records that d holds packets from this loop that no writer has
// been woken for. A different destination deferred before is woken now.
func (w *Waiter) Defer(d Deferrer) {
	if w.deferred != nil && w.deferred != d {
		w.deferred.WakeDeferred()
	}
	w.deferred = d
}

// HasDeferred reports whether some destination waits to be woken.
func (w *Waiter) HasDeferred() bool { return w.deferred != nil }

// IsDeferred reports whether d is this loop's deferred destination.
func (w *Waiter) IsDeferred(d Deferrer) bool { return w.deferred == d }

// WakeDeferred wakes the deferred destination, if any. The owner calls it
// before anything that may make it wait, and when its burst ends.
func (w *Waiter) WakeDeferred() {
	if d := w.deferred; d != nil {
		w.deferred = nil
		d.WakeDeferred()
	}
}

// Send puts p on q, waiting up to d for room. It reports whether p was
// queued; if not, p is still the caller's.
func (w *Waiter) Send(q chan<- *wire.Packet, p *wire.Packet, d time.Duration) bool {
	return SendWaiting(w, q, p, d)
}

// SendWaiting is Waiter.Send for a queue of any element type (a mesh
// link queues a packet together with its destination).
func SendWaiting[T any](w *Waiter, q chan<- T, v T, d time.Duration) bool {
	// Whatever this loop deferred must not wait behind the wait (it may
	// be the very queue that is full).
	w.WakeDeferred()
	w.Waits++
	// A time.Timer, not sys.Clock: this is a reader goroutine's wait on
	// a channel, reused without an allocation under overload. In a test
	// it runs in a testing/synctest bubble, whose time is as virtual as a
	// FakeClock's.
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d)
	}
	select {
	case q <- v:
		w.timer.Stop()
		return true
	case <-w.timer.C:
		w.Timeouts++
		return false
	}
}

// Forwarder carries packets for a key that lives on a mesh peer: a mesh
// link's outbox. Like PacketSink it owns the packet from the call on, the
// packet's source is the one stamped on it, and it never makes the caller
// wait on a link that has stopped taking data.
type Forwarder interface {
	ForwardPacket(dst wire.NodePublic, p *wire.Packet, w *Waiter)
	// Name is the link's, for flows and drops that name the peer.
	Name() string
}

// Route is where packets for one key go. Routes are immutable: the registry
// replaces a key's Route whenever its connections or forwarders change, so
// a reader that loaded a Route sees one consistent answer.
type Route struct {
	Key wire.NodePublic

	// Local is the key's active connection on this server, if any. Local
	// always wins over forwarding.
	Local PacketSink

	// Forward is the mesh link used when the key is not local: of the
	// links that announce the key, the one that announced it first.
	Forward Forwarder
}

// RouteTable maps node keys to Routes. Exactly one goroutine, the registry
// actor, writes it; every connection's read loop looks keys up without
// taking a lock. It is an open-addressing hash table of atomic pointers:
// the writer publishes a new Route with one atomic store, and grows by
// building a fresh table and swapping the table pointer, so a reader never
// sees a half-written entry.
//
// Keys are hashed with a per-process random seed: node keys are chosen by
// clients, and an unseeded hash would let one client pick keys that pile
// onto one probe chain and slow every lookup.
type RouteTable struct {
	tab  atomic.Pointer[routeSlots]
	seed maphash.Seed

	// Writer-only state.
	live, dead int // occupied slots holding routes, and tombstones
}

type routeSlots struct {
	mask  uint64
	slots []atomic.Pointer[Route]
}

// tombstone marks a deleted slot so probe chains that pass through it stay
// intact. Readers treat it as "not this key, keep looking".
var tombstone = &Route{}

const minRouteSlots = 64

// NewRouteTable returns an empty table.
func NewRouteTable() *RouteTable {
	t := &RouteTable{seed: maphash.MakeSeed()}
	t.tab.Store(newRouteSlots(minRouteSlots))
	return t
}

func newRouteSlots(n int) *routeSlots {
	return &routeSlots{mask: uint64(n - 1), slots: make([]atomic.Pointer[Route], n)}
}

func (t *RouteTable) hash(k *wire.NodePublic) uint64 {
	return maphash.Bytes(t.seed, k[:])
}

// Lookup returns the key's Route, or nil. Safe from any goroutine; it does
// not allocate or lock.
func (t *RouteTable) Lookup(k wire.NodePublic) *Route {
	tab := t.tab.Load()
	for i := t.hash(&k) & tab.mask; ; i = (i + 1) & tab.mask {
		r := tab.slots[i].Load()
		if r == nil {
			return nil
		}
		if r != tombstone && r.Key == k {
			return r
		}
	}
}

// Len reports how many keys have routes. Writer only.
func (t *RouteTable) Len() int { return t.live }

// Set publishes r as the Route for r.Key, replacing any previous one.
// Writer only.
func (t *RouteTable) Set(r *Route) {
	if r == nil || r == tombstone {
		panic("actors: RouteTable.Set of an invalid route")
	}
	tab := t.tab.Load()
	free := -1
	i := t.hash(&r.Key) & tab.mask
	for ; ; i = (i + 1) & tab.mask {
		cur := tab.slots[i].Load()
		if cur == nil {
			break
		}
		if cur == tombstone {
			if free < 0 {
				free = int(i)
			}
			continue
		}
		if cur.Key == r.Key {
			tab.slots[i].Store(r)
			return
		}
	}
	// New key. Reuse the first tombstone on its chain, or the empty slot.
	if free >= 0 {
		tab.slots[free].Store(r)
		t.dead--
	} else {
		tab.slots[i].Store(r)
	}
	t.live++
	if 4*(t.live+t.dead) > 3*len(tab.slots) {
		t.rebuild()
	}
}

// Delete removes the key's Route. Writer only.
func (t *RouteTable) Delete(k wire.NodePublic) {
	tab := t.tab.Load()
	for i := t.hash(&k) & tab.mask; ; i = (i + 1) & tab.mask {
		cur := tab.slots[i].Load()
		if cur == nil {
			return
		}
		if cur != tombstone && cur.Key == k {
			tab.slots[i].Store(tombstone)
			t.live--
			t.dead++
			// A table grown for a burst of clients shrinks once they have
			// mostly left: under an eighth full, it is rebuilt for what it
			// holds (at under half full, so the next shrink waits for at
			// least half of those to leave: amortized O(1) a deletion).
			if len(tab.slots) > minRouteSlots && 8*t.live < len(tab.slots) {
				t.rebuild()
			}
			return
		}
	}
}

// Range calls f for every Route, in no particular order. Writer only (or
// for diagnostics, where a slightly stale view is fine).
func (t *RouteTable) Range(f func(*Route) bool) {
	tab := t.tab.Load()
	for i := range tab.slots {
		if r := tab.slots[i].Load(); r != nil && r != tombstone {
			if !f(r) {
				return
			}
		}
	}
}

// rebuild copies the live routes into a table sized for them, dropping
// tombstones, and publishes it. The table at least doubles when mostly
// live and shrinks when mostly empty, so churn of connecting and
// disconnecting clients cannot grow it without bound.
func (t *RouteTable) rebuild() {
	n := minRouteSlots
	for 2*t.live >= n { // keep the load under one half after rebuilding
		n *= 2
	}
	old := t.tab.Load()
	fresh := newRouteSlots(n)
	for i := range old.slots {
		r := old.slots[i].Load()
		if r == nil || r == tombstone {
			continue
		}
		j := t.hash(&r.Key) & fresh.mask
		for fresh.slots[j].Load() != nil {
			j = (j + 1) & fresh.mask
		}
		fresh.slots[j].Store(r)
	}
	t.dead = 0
	t.tab.Store(fresh)
}
