package mesh

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// Queue sizes of a link. A client's queues hold 32 packets because they
// serve one device; a link carries everything this server's clients send
// to every client of the peer, so it needs room for the bursts of many
// flows at once. 1024 packets is about 1.3 MB of WireGuard traffic: about a
// millisecond of a 10 Gbit/s link, or of this server's whole relaying
// capacity on the 2-core machine it is measured on (docs/performance.md).
// A deeper queue would only add delay on a link that cannot keep up; a
// shallower one would drop healthy bursts. Disco packets, small and
// precious, get a queue of their own so bulk data never crowds them out.
const (
	DefaultQueueDepth = 1024
	discoQueueDepth   = 128
)

// linkWriteTimeout is how long one write to a peer may block before the
// link counts as broken and reconnects: upstream closes its mesh link
// after a forward write of 5 s.
const linkWriteTimeout = 5 * time.Second

// linkStalledAfter is how long a write on a link's socket may block before
// the link counts as not keeping up, so that senders stop waiting for room
// in its queue. A socket write blocks only when the peer's window is full,
// and on a healthy path that clears within a round trip between servers of
// one region (a millisecond or two) or the few milliseconds a busy core
// keeps the writer from running; a client's 2 ms would take those for a
// stall, dropping a whole node's traffic to the peer while its queue (1024
// packets, 10 ms of 100k packets/s) still had room to ride them out.
const linkStalledAfter = 10 * time.Millisecond

// stampedConn is a link's raw socket, below TLS, marked with the time of
// the write under way: a link is stalled when its socket does not take
// data, not while a busy core encrypts a batch.
type stampedConn struct {
	net.Conn
	writeStart atomic.Int64 // Unix nanoseconds; 0 between writes
	// clock stamps writeStart: the system's, set by newOutbox before
	// the link's writer starts; the wall clock before then (the dial).
	clock actors.Clock
}

func (c *stampedConn) Write(b []byte) (int, error) {
	if c.clock != nil {
		c.writeStart.Store(c.clock.Now().UnixNano())
	} else {
		c.writeStart.Store(time.Now().UnixNano())
	}
	n, err := c.Conn.Write(b)
	c.writeStart.Store(0)
	return n, err
}

// DropReason says why a link did not carry a packet.
type DropReason uint8

const (
	DropQueueFull  DropReason = iota // the link's queue was full: it cannot keep up
	DropLinkDown                     // the link went down with the packet queued or on its way
	DropWriteError                   // the write to the peer failed
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{"queue_full", "link_down", "write_error"}

func (r DropReason) String() string { return dropReasonNames[r] }

// DropReasons lists every reason, in order.
func DropReasons() []DropReason {
	out := make([]DropReason, numDropReasons)
	for i := range out {
		out[i] = DropReason(i)
	}
	return out
}

// queued is a packet and the key it is for.
type queued struct {
	p   *wire.Packet
	dst wire.NodePublic
}

// outbox is a link session's sending side: the bounded queues that
// readers of every local client put ForwardPackets on, and the writer
// goroutine that drains them in batches. It implements actors.Forwarder.
// A reader never waits on a link whose writer is stuck in a socket write:
// it drops instead, so one slow peer costs the flows to other peers
// nothing.
type outbox struct {
	sys  *actors.System
	name string // the link's
	conn net.Conn
	w    *wire.Writer

	data  chan queued
	disco chan queued
	wake  chan struct{} // capacity 1: a ping waits
	done  chan struct{} // closed by close

	closed    atomic.Bool
	closeOnce sync.Once
	finished  chan struct{} // closed once the writer has exited

	// sock is the socket under conn, whose write stamp says whether the
	// peer is taking data.
	sock     *stampedConn
	writeErr atomic.Pointer[error]

	// congested is raised by a sender that found the queue full while
	// the socket was stalled, and lowered by the writer once the queue
	// has drained to a quarter: until then a full queue drops at once.
	// Without it every write to a slow peer would begin with a stretch
	// in which senders wait for room that only the next flush frees.
	congested atomic.Bool

	pingMu      sync.Mutex
	ping        [wire.PingDataLen]byte
	pingPending bool

	// Counts for /debug/mesh and the metrics.
	forwarded atomic.Int64 // packets written to the peer
	dropped   [numDropReasons]atomic.Int64

	sent actors.SendCounts // writer only: the batch being written
}

// newOutbox writes to conn, which runs over sock (conn itself when there
// is no TLS).
func newOutbox(sys *actors.System, conn net.Conn, sock *stampedConn, depth int) *outbox {
	if depth <= 0 {
		depth = DefaultQueueDepth
	}
	o := &outbox{
		sys:      sys,
		conn:     conn,
		sock:     sock,
		data:     make(chan queued, depth),
		disco:    make(chan queued, discoQueueDepth),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		finished: make(chan struct{}),
	}
	o.w = wire.NewWriter(conn, 0)
	if sock != nil {
		// The dial is over and the writer not yet started: nothing
		// writes through sock meanwhile.
		sock.clock = sys.Clock
	}
	return o
}

// Name implements actors.Forwarder.
func (o *outbox) Name() string { return o.name }

// ForwardPacket implements actors.Forwarder. It is called from other
// connections' read loops.
func (o *outbox) ForwardPacket(dst wire.NodePublic, p *wire.Packet, w *actors.Waiter) {
	kind, q := actors.KindOther, o.data
	if p.IsDisco() {
		kind, q = actors.KindDisco, o.disco
	}
	if o.closed.Load() {
		o.drop(DropLinkDown, kind, p)
		w.NoteDrop(actors.RejectMeshLinkDown, dst, o.name)
		return
	}
	it := queued{p: p, dst: dst}
	select {
	case q <- it:
		o.afterQueue()
		return
	default:
	}
	// Full. A writer that is taking data but short of CPU gets a moment,
	// as a client's does; a link whose peer is not taking data gets none.
	if o.stalled() {
		o.congested.Store(true)
	} else if w != nil && !o.congested.Load() && actors.SendWaiting(w, q, it, actors.MaxQueueWait) {
		o.afterQueue()
		return
	}
	for range 3 {
		if o.closed.Load() {
			o.drop(DropLinkDown, kind, p)
			w.NoteDrop(actors.RejectMeshLinkDown, dst, o.name)
			return
		}
		select {
		case q <- it:
			o.afterQueue()
			return
		default:
		}
		select {
		case old := <-q:
			o.dropped[DropQueueFull].Add(1)
			o.sys.Stats.Drop(actors.DropQueueHead, kind, old.p.Len())
			w.NoteDrop(actors.RejectMeshQueueFull, old.dst, o.name)
			old.p.Release()
		default:
		}
	}
	o.dropped[DropQueueFull].Add(1)
	o.sys.Stats.Drop(actors.DropQueueTail, kind, p.Len())
	w.NoteDrop(actors.RejectMeshQueueFull, dst, o.name)
	p.Release()
}

func (o *outbox) drop(r DropReason, kind actors.PacketKind, p *wire.Packet) {
	o.dropped[r].Add(1)
	global := actors.DropGoneDisconnected
	if r == DropWriteError {
		global = actors.DropWriteError
	}
	o.sys.Stats.Drop(global, kind, p.Len())
	p.Release()
}

// afterQueue follows a successful enqueue: if the link closed meanwhile,
// its writer may have drained the queue for the last time already.
func (o *outbox) afterQueue() {
	if o.closed.Load() {
		o.dropQueued()
	}
}

func (o *outbox) stalled() bool {
	start := o.sock.writeStart.Load()
	return start != 0 && o.sys.Clock.Now().UnixNano()-start > int64(linkStalledAfter)
}

// queuePing asks the writer to send a Ping carrying data.
func (o *outbox) queuePing(data [wire.PingDataLen]byte) {
	o.pingMu.Lock()
	o.ping, o.pingPending = data, true
	o.pingMu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// depth reports how many packets wait.
func (o *outbox) depth() int { return len(o.data) + len(o.disco) }

// run is the writer goroutine: it lives as long as the session, waits
// for the first packet, takes everything else that is ready, and flushes
// once nothing more is (or every BatchFlushBytes).
func (o *outbox) run() {
	defer o.finish()
	for {
		select {
		case it := <-o.disco:
			o.armDeadline()
			o.write(it)
		case it := <-o.data:
			o.armDeadline()
			o.write(it)
		case <-o.wake:
			o.armDeadline()
			o.writePing()
		case <-o.done:
			return
		}
	batch:
		for o.w.Err() == nil {
			if o.w.Buffered() >= actors.BatchFlushBytes {
				o.flush()
				o.armDeadline()
			}
			select {
			case it := <-o.disco:
				o.write(it)
			case it := <-o.data:
				o.write(it)
			case <-o.wake:
				o.writePing()
			default:
				break batch
			}
		}
		o.flush()
		if err := o.w.Err(); err != nil {
			o.writeErr.Store(&err)
			o.conn.Close() // the session's reader ends and reports it
			return
		}
		if o.congested.Load() && o.depth() <= cap(o.data)/4 {
			o.congested.Store(false)
		}
		o.w.Release() // an idle link holds no write buffer
	}
}

// armDeadline uses the wall clock, not sys.Clock: the kernel enforces a
// socket deadline and knows no other time.
func (o *outbox) armDeadline() { o.conn.SetWriteDeadline(time.Now().Add(linkWriteTimeout)) }

func (o *outbox) write(it queued) {
	p := it.p
	disco, n := p.IsDisco(), p.Len()
	if err := o.w.WriteForwardPacket(p.Source(), it.dst, p.Payload()); err != nil {
		o.dropped[DropWriteError].Add(1)
		o.sys.Stats.Drop(actors.DropWriteError, actors.KindOf(disco), n)
	} else {
		o.sent.Packets++
		o.sent.Bytes += int64(n)
		if disco {
			o.sent.Disco++
			o.sent.DiscoBytes += int64(n)
		}
	}
	p.Release()
}

func (o *outbox) writePing() {
	o.pingMu.Lock()
	data, ok := o.ping, o.pingPending
	o.pingPending = false
	o.pingMu.Unlock()
	if ok {
		o.w.WritePing(data)
	}
}

func (o *outbox) flush() {
	if o.w.Frames() == 0 {
		return
	}
	if o.w.Flush() != nil {
		o.dropped[DropWriteError].Add(o.sent.Packets)
		o.sys.Stats.DropUnsent(actors.DropWriteError, &o.sent)
		return
	}
	o.forwarded.Add(o.sent.Packets)
	o.sent = actors.SendCounts{}
}

// err returns the write error that ended the writer, if one did.
func (o *outbox) err() error {
	if p := o.writeErr.Load(); p != nil {
		return *p
	}
	return nil
}

// close stops the writer; queued packets are dropped as link_down.
func (o *outbox) close() {
	o.closeOnce.Do(func() {
		o.closed.Store(true)
		close(o.done)
	})
}

func (o *outbox) finish() {
	o.closed.Store(true)
	o.w.Release()
	o.dropQueued()
	close(o.finished)
}

func (o *outbox) dropQueued() {
	for {
		select {
		case it := <-o.disco:
			o.drop(DropLinkDown, actors.KindDisco, it.p)
		case it := <-o.data:
			o.drop(DropLinkDown, actors.KindOther, it.p)
		default:
			return
		}
	}
}

// pingData encodes a send time into a Ping, so the Pong tells the round
// trip without the link keeping any record of what it sent.
func pingData(now time.Time) [wire.PingDataLen]byte {
	var b [wire.PingDataLen]byte
	binary.BigEndian.PutUint64(b[:], uint64(now.UnixNano()))
	return b
}

// errLinkClosed ends a session we closed ourselves.
var errLinkClosed = errors.New("link closed")
