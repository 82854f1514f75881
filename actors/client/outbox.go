package client

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// Outbox is everything a connection sends: two bounded packet queues (disco
// and everything else, so bulk data cannot starve path discovery), a queue
// of control frames, and the writer goroutine that drains them into the
// socket. It is owned by the connection's client actor; other connections'
// readers only ever call SendPacket.
type Outbox struct {
	// Set at construction, read-only after.
	sys          *actors.System
	conn         net.Conn
	w            *wire.Writer
	direct       *directWriter // nil unless the socket allows non-blocking writes
	writeTimeout time.Duration
	kaInterval   time.Duration
	owner        *actors.Conn // set by Serve before the outbox is reachable

	data  chan *wire.Packet
	disco chan *wire.Packet
	wake  chan struct{} // capacity 1: control frames are waiting

	closed  atomic.Bool
	started atomic.Bool // Start was called: the writer may run
	// running is true while someone holds the writer's slot: a writer
	// goroutine, started on demand and gone as soon as nothing is left to
	// write (so an idle connection costs no stack on the write side), or a
	// reader writing a lone packet directly.
	running   atomic.Bool
	keepAlive actors.Timer // set by Start before any writer runs
	kaPeriod  time.Duration
	kaDue     atomic.Bool
	startOne  sync.Once
	finishOne sync.Once

	// writeStart is when the writer's current socket write began (Unix
	// nanoseconds), 0 between writes. A write that has been blocked for a
	// while means the receiver is not taking data: senders must not wait
	// for it.
	writeStart atomic.Int64
	closeOnce  sync.Once
	finished   chan struct{}         // closed when the writer goroutine has exited
	writeErr   atomic.Pointer[error] // the first write error, which ended the connection

	// greeted is closed once ServerInfo has been flushed to the socket
	// (or the writer has given up): the reader handles no frame before,
	// so nothing a client pipelines behind its ClientInfo can make the
	// server answer ahead of ServerInfo, or close the connection
	// without it. Closed by the writer's slot holder (greetedClosed).
	greeted       chan struct{}
	greetedClosed bool

	// aborted is closed when the connection is being closed by the
	// server, so that a reader waiting (on the rate limit) stops at once.
	aborted   chan struct{}
	abortOnce sync.Once

	ctrlMu      sync.Mutex
	ctrl        []ctrlFrame
	presenceCap int // see maxPresenceBacklog
	pong        [wire.PingDataLen]byte
	pongPending bool

	// deliveredMu guards delivered: the first deliveries the registry has
	// not taken yet (see noteSource). It is a handoff buffer between the
	// writer and the registry, as ctrl is one between actors and the
	// writer, not actor state: the writer runs outside any actor and must
	// not wait for one, and the registry empties it whole when it gets to
	// it, so neither side ever holds the lock for more than an append or
	// a slice swap.
	deliveredMu sync.Mutex
	delivered   []actors.DeliveredSource
	// forget, also under deliveredMu, lists the sources the registry has
	// stopped counting this connection a recipient of (ForgetSource, the
	// registry's other side of the handoff),
	// for the writer to take out of seen before its next packet;
	// forgetAll says there were too many to list, and seen starts over.
	// forgetPending is raised while either is set, so that the writer
	// looks with one atomic load per packet, not a lock.
	forget        []wire.NodePublic
	forgetAll     bool
	forgetPending atomic.Bool

	// Owned by whoever holds the writer's slot (see running): the writer
	// goroutine, or a reader writing a lone packet directly.
	spare    []ctrlFrame
	seen     map[wire.NodePublic]struct{} // sources already reported Delivered
	lastSrc  wire.NodePublic              // cache: consecutive packets usually share a source
	haveLast bool
	sent     actors.SendCounts
	oldest   int64 // QueuedAt of the first packet in the current batch
	hangUp   bool  // a graceful close was reached in the control queue
}

type ctrlFrame struct {
	typ      wire.FrameType
	presence bool // a watcher update (PeerPresent, or PeerGone for a departure)
	key      wire.NodePublic
	reason   wire.PeerGoneReason
	addr     netip.AddrPort
	flags    wire.PeerPresentFlags
	body     []byte

	reconnectIn, tryFor time.Duration // Restarting
	hangUp              bool          // not a frame: close once what is ahead is written
}

// OutboxConfig sizes an outbox.
type OutboxConfig struct {
	QueueDepth   int           // per queue; upstream's 32
	WriteTimeout time.Duration // per batch; 0 means none
	KeepAlive    time.Duration // nominal interval; jitter is added
	MaxWrite     int           // largest single socket write; 0 = unlimited
}

// NewOutbox prepares an outbox for conn. Start launches its writer.
func NewOutbox(sys *actors.System, conn net.Conn, cfg OutboxConfig) *Outbox {
	depth := cfg.QueueDepth
	if depth <= 0 {
		depth = 32
	}
	o := &Outbox{
		sys:          sys,
		conn:         conn,
		direct:       newDirectWriter(conn),
		writeTimeout: cfg.WriteTimeout,
		kaInterval:   cfg.KeepAlive,
		data:         make(chan *wire.Packet, depth),
		disco:        make(chan *wire.Packet, depth),
		wake:         make(chan struct{}, 1),
		finished:     make(chan struct{}),
		greeted:      make(chan struct{}),
		aborted:      make(chan struct{}),
	}
	o.w = wire.NewWriter(timedWriter{o}, cfg.MaxWrite)
	return o
}

// timedWriter stamps writeStart around every blocking socket write,
// whether it is the writer's own flush or one the wire.Writer makes
// because a frame did not fit in its buffer: any of them can be the one
// that blocks on a receiver that has stopped reading.
type timedWriter struct{ o *Outbox }

func (t timedWriter) Write(b []byte) (int, error) {
	t.o.writeStart.Store(t.o.sys.Clock.Now().UnixNano())
	n, err := t.o.conn.Write(b)
	t.o.writeStart.Store(0)
	return n, err
}

// SendPacket queues a packet for this connection. Implements
// actors.PacketSink.
//
// When the queue is full there are two cases. If the writer is stuck in a
// socket write, the receiver is not reading: the oldest queued packet is
// dropped to make room, so that one slow receiver never stalls the flows
// of those who send to it (DERP's rule). Otherwise the receiver is keeping
// up and the server itself is behind (short of CPU): the sender's reader
// waits, briefly, for room. That stops the reader reading, TCP pushes back
// on the sender, and the CPU goes to delivering packets instead of reading
// ones that would be dropped, which is what makes relays collapse under
// overload.
func (o *Outbox) SendPacket(p *wire.Packet, w *actors.Waiter) {
	// A packet that arrives alone (its reader has nothing more buffered)
	// at a connection with no writer running, and so nothing queued, is
	// written right here, without handing it to another goroutine. Packets
	// in a burst are queued instead, for the writer to send in one batch.
	// (Not if this reader has packets of its own queued here unwoken:
	// the lone packet must not overtake them.)
	if w != nil && w.Direct && o.direct != nil && !w.IsDeferred(o) && o.started.Load() && !o.running.Load() && o.running.CompareAndSwap(false, true) {
		if o.writeDirect(p) {
			return
		}
		// Control frames were waiting; a writer goroutine now sends them,
		// and the packet queues behind them.
	}
	// A packet of a burst, or the end of one this reader queued here, is
	// queued without waking the writer when the reader could write the
	// burst itself once it ends (see WakeDeferred).
	deferrable := w != nil && o.direct != nil && (w.Burst || w.IsDeferred(o))
	kind := actors.KindOther
	q := o.data
	if p.IsDisco() {
		kind, q = actors.KindDisco, o.disco
	}
	select {
	case q <- p:
		if deferrable {
			o.queuedDeferred(w)
		} else {
			o.queued()
		}
		return
	default:
	}
	if w != nil && !o.closed.Load() && !o.receiverStalled() {
		if w.Send(q, p, actors.MaxQueueWait) {
			o.queued()
			return
		}
	}
	stats := o.sys.Stats
	for range 3 {
		if o.closed.Load() {
			stats.DropFor(o.owner, actors.DropGoneDisconnected, kind, p.Len())
			w.NoteDrop(actors.RejectReceiverGone, o.owner.Key, "")
			p.Release()
			return
		}
		select {
		case q <- p:
			o.queued()
			return
		default:
		}
		select {
		case old := <-q:
			stats.DropFor(o.owner, actors.DropQueueHead, kind, old.Len())
			w.NoteDrop(actors.RejectQueueFull, o.owner.Key, "")
			old.Release()
		default:
		}
	}
	stats.DropFor(o.owner, actors.DropQueueTail, kind, p.Len())
	w.NoteDrop(actors.RejectQueueFull, o.owner.Key, "")
	p.Release()
}

// QueuePeerGone asks the writer to send PeerGone.
func (o *Outbox) QueuePeerGone(peer wire.NodePublic, reason wire.PeerGoneReason) {
	o.queueCtrl(ctrlFrame{typ: wire.FramePeerGone, key: peer, reason: reason})
}

// maxPresenceBacklog bounds the watcher updates waiting for a mesh peer
// that has stopped reading: every update must reach a watcher, so rather
// than drop one, the connection is closed and the peer, reconnecting,
// gets a fresh snapshot. The bound is at least twice the largest batch
// (the snapshot) queued, so a big region's snapshot never trips it.
const maxPresenceBacklog = 65536

// errPresenceBacklog ends a watcher that lets updates pile up.
var errPresenceBacklog = errors.New("watcher not reading: too many connection updates waiting")

// QueueRestarting asks the writer to send Restarting.
func (o *Outbox) QueueRestarting(reconnectIn, tryFor time.Duration) {
	o.queueCtrl(ctrlFrame{typ: wire.FrameRestarting, reconnectIn: reconnectIn, tryFor: tryFor})
}

// CloseWhenWritten asks the writer to close the connection once every
// control frame queued before it is written, and any packet it meets on
// the way: a graceful close, which a Restarting frame must not lose a
// race with. It reports false when there is no writer to ask (not
// started, or closed), and the caller closes the connection itself. A
// receiver that does not read is cut off by the write timeout as ever.
func (o *Outbox) CloseWhenWritten() bool {
	if !o.started.Load() || o.closed.Load() {
		return false
	}
	o.queueCtrl(ctrlFrame{hangUp: true})
	return true
}

// QueuePresence asks the writer to send watcher updates, in order.
func (o *Outbox) QueuePresence(updates []actors.PeerPresence) {
	if o.closed.Load() {
		return // nobody will write them
	}
	o.ctrlMu.Lock()
	o.presenceCap = max(o.presenceCap, maxPresenceBacklog, 2*len(updates))
	if len(o.ctrl)+len(updates) > o.presenceCap {
		o.ctrlMu.Unlock()
		if !o.closed.Load() {
			o.sys.Stats.PresenceBacklogCloses.Add(1)
			o.writeErr.CompareAndSwap(nil, &errPresenceBacklog)
			o.closed.Store(true)
			o.conn.Close()
			o.Abort()
		}
		return
	}
	for _, u := range updates {
		if u.Present {
			o.ctrl = append(o.ctrl, ctrlFrame{typ: wire.FramePeerPresent, presence: true, key: u.Peer, addr: u.Addr, flags: u.Flags})
		} else {
			o.ctrl = append(o.ctrl, ctrlFrame{typ: wire.FramePeerGone, presence: true, key: u.Peer, reason: wire.PeerGoneDisconnected})
		}
	}
	o.ctrlMu.Unlock()
	o.signal()
}

// QueuePong answers a ping. At most one pong waits at a time; pings that
// arrive meanwhile are not answered, which bounds what a client can make
// the server queue.
func (o *Outbox) QueuePong(data [wire.PingDataLen]byte) {
	o.ctrlMu.Lock()
	if o.pongPending {
		o.ctrlMu.Unlock()
		return
	}
	o.pong, o.pongPending = data, true
	o.ctrlMu.Unlock()
	o.signal()
}

// queueServerInfo queues the ServerInfo frame. The client actor calls it
// once the registry has confirmed the registration, before Start. It goes
// ahead of any control frame queued before it, so it is the first frame
// the writer sends.
func (o *Outbox) queueServerInfo(body []byte) {
	o.ctrlMu.Lock()
	o.ctrl = slices.Insert(o.ctrl, 0, ctrlFrame{typ: wire.FrameServerInfo, body: body})
	o.ctrlMu.Unlock()
	o.signal()
}

// Abort says the connection is being closed: waits end (see Aborted).
// Safe to call more than once and from any goroutine.
func (o *Outbox) Abort() { o.abortOnce.Do(func() { close(o.aborted) }) }

// Aborted is closed by Abort.
func (o *Outbox) Aborted() <-chan struct{} { return o.aborted }

// Greeted is closed once ServerInfo has been written, or the writer has
// ended without writing it.
func (o *Outbox) Greeted() <-chan struct{} { return o.greeted }

func (o *Outbox) queueCtrl(f ctrlFrame) {
	o.ctrlMu.Lock()
	o.ctrl = append(o.ctrl, f)
	o.ctrlMu.Unlock()
	o.signal()
}

// queuedDeferred is queued for a packet whose reader will wake this
// outbox itself when its burst ends.
func (o *Outbox) queuedDeferred(w *actors.Waiter) {
	if o.closed.Load() {
		o.dropQueued()
		return
	}
	w.Defer(o)
}

// WakeDeferred implements actors.Deferrer: a reader's burst has ended, and
// the packets it queued here without waking the writer must go. If no
// writer is running, the reader writes them itself, as one batch with one
// non-blocking write (see writeDirect); otherwise the running writer
// takes them.
func (o *Outbox) WakeDeferred() {
	if !o.started.Load() {
		return // Start wakes the writer for everything queued before it
	}
	if o.running.Load() || !o.running.CompareAndSwap(false, true) {
		return
	}
	if o.ctrlWaiting() {
		go o.run() // control frames first; they may not fit one buffer
		return
	}
drain:
	for o.w.Buffered() < actors.BatchFlushBytes {
		select {
		case p := <-o.disco:
			o.writePacket(p)
		case p := <-o.data:
			o.writePacket(p)
		default:
			break drain
		}
	}
	o.tryFlushDirect()
}

// queued follows every successful enqueue: it makes sure a writer will
// see the packet, or, if the outbox closed meanwhile, that it is counted.
func (o *Outbox) queued() {
	if o.closed.Load() {
		o.dropQueued()
		return
	}
	o.kick()
}

func (o *Outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
	o.kick()
}

// kick starts a writer goroutine if there is none. It costs one atomic
// load when a writer is already running, which under load it is.
func (o *Outbox) kick() {
	if o.started.Load() && !o.running.Load() && o.running.CompareAndSwap(false, true) {
		go o.run()
	}
}

// Start lets the writer run, with whatever was queued so far (ServerInfo
// first), and starts the keepalive timer.
func (o *Outbox) Start() {
	o.startOne.Do(func() {
		// Keepalives are a minute apart to spare phone batteries, with a
		// per-connection jitter (up to 5 s on 60 s) so that clients
		// connected together by a server restart do not keep their
		// keepalives in step. The writer re-arms the timer after each one.
		o.kaPeriod = o.kaInterval + o.keepAliveJitter()
		o.keepAlive = o.sys.Clock.AfterFunc(o.kaPeriod, func() {
			o.kaDue.Store(true)
			o.signal()
		})
		o.started.Store(true)
		o.kick()
	})
}

// keepAliveJitter is this connection's share of the keepalive jitter
// (see Start): drawn from the connection id rather than a random source,
// so that a run on a fake clock is the same every time, and still spread,
// since the mix scatters consecutive ids over the whole range.
func (o *Outbox) keepAliveJitter() time.Duration {
	var id uint64
	if o.owner != nil {
		id = o.owner.ID
	}
	z := id + 0x9e3779b97f4a7c15 // splitmix64's finaliser
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	z ^= z >> 31
	return time.Duration(z % uint64(o.kaInterval/12+1))
}

// Close stops the writer. Queued packets are counted as dropped because
// their receiver is gone. Safe to call more than once and from any
// goroutine.
func (o *Outbox) Close() {
	o.closeOnce.Do(func() {
		o.closed.Store(true)
		// With no writer running, claim the writer's slot for good (no
		// writer can start after this) and clean up here.
		if o.running.CompareAndSwap(false, true) {
			o.finish()
		}
	})
}

// QueueDepths implements actors.QueueDepther.
func (o *Outbox) QueueDepths() (data, disco int) { return len(o.data), len(o.disco) }

// WriteErr is the write error that ended the connection, if one did.
func (o *Outbox) WriteErr() error {
	if p := o.writeErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Finished is closed once the outbox is closed and its writer, if any,
// has exited.
func (o *Outbox) Finished() <-chan struct{} { return o.finished }

// run is the writer goroutine. It exists only while there is something to
// write, so an idle connection has none, and only one runs at a time (see
// running).
func (o *Outbox) run() {
	// Batches of watcher updates written since this writer started, for
	// upstream's mesh_update_loop_count.
	updateBatches := 0
	defer func() {
		if updateBatches > 0 {
			o.sys.Stats.NoteMeshUpdateLoops(updateBatches)
		}
	}()
	for {
		// Control frames first: that is how ServerInfo precedes every
		// packet, even one routed here the instant the connection was
		// registered (select picks among ready channels at random).
		o.armDeadline()
		updateBatches += o.writeCtrl()
		// Take whatever else is ready, flushing every actors.BatchFlushBytes,
		// and flush once nothing is: several frames per system call
		// under load, no added delay when idle.
	batch:
		for o.w.Err() == nil && !o.hangUp {
			if o.w.Buffered() >= actors.BatchFlushBytes {
				o.flush()
				o.armDeadline()
			}
			select {
			case p := <-o.disco:
				o.writePacket(p)
			case p := <-o.data:
				o.writePacket(p)
			case <-o.wake:
				updateBatches += o.writeCtrl()
			default:
				break batch
			}
		}
		o.flush()
		if !o.greetedClosed {
			// The first writer after Start: ServerInfo, queued before
			// Start and written first (see queueServerInfo), is out.
			o.greetedClosed = true
			close(o.greeted)
		}
		if err := o.w.Err(); err != nil {
			o.fail(err)
			o.finish()
			return
		}
		if o.hangUp {
			// CloseWhenWritten: what was asked for before it is out. The
			// reader ends on the closed socket, and the actor cleans up.
			o.conn.Close()
			o.finish()
			return
		}
		o.w.Release() // hold no buffer while idle
		if o.closed.Load() {
			o.finish()
			return
		}
		if o.hasWork() {
			continue
		}
		// The deadline armed for the last write would still be in force
		// for the next writer, which may come much later; direct writes
		// in particular must not find it expired.
		if o.writeTimeout > 0 {
			o.conn.SetWriteDeadline(time.Time{})
		}
		if !o.releaseSlot() {
			return
		}
	}
}

// releaseSlot gives up the writer's slot, then looks once more for work:
// work queued after the holder's last look but before it let go would
// otherwise wait for the next kick, which may never come. It reports
// whether the caller took the slot back and must write that work.
func (o *Outbox) releaseSlot() bool {
	o.running.Store(false)
	return o.hasWork() && o.running.CompareAndSwap(false, true)
}

// writeDirect writes p on the caller's goroutine, which holds the
// writer's slot, with one non-blocking write. Whatever the socket does not
// take at once, and anything queued meanwhile, is left to a writer
// goroutine, which inherits the slot; the caller never waits on the
// receiver.
//
// If control frames are waiting it writes nothing and returns false,
// having handed the slot to a writer goroutine: they must go out before
// the packet (ServerInfo before any packet, above all), and there may be
// more of them than the write buffer holds, which would make the caller
// block in a full flush.
func (o *Outbox) writeDirect(p *wire.Packet) bool {
	if o.ctrlWaiting() {
		go o.run()
		return false
	}
	o.writePacket(p)
	o.tryFlushDirect()
	return true
}

// tryFlushDirect writes what the holder of the writer's slot buffered,
// with one non-blocking write, and hands whatever is left (unwritten
// bytes, packets queued meanwhile) to a writer goroutine, which inherits
// the slot; otherwise it gives the slot back.
func (o *Outbox) tryFlushDirect() {
	frames := o.w.Frames()
	all, err := o.w.TryFlush(o.direct.write)
	if err != nil {
		o.lost()
		o.fail(err)
		o.finish()
		return
	}
	if all {
		o.flushed(frames)
	}
	if !all || o.hasWork() {
		go o.run()
		return
	}
	o.w.Release()
	if o.releaseSlot() {
		go o.run()
	}
}

// ctrlWaiting reports whether control frames wait to be written. It reads
// the wake token rather than the control queue, so a lone packet's direct
// write takes no lock: every control frame (ServerInfo, PeerGone,
// presence, a pong, a due keepalive) is followed by a token, and the
// token stays until a writer has taken the frames. A frame queued at the
// very moment of the check may be missed, which only means the packet
// goes first; ServerInfo, queued before Start, never is.
func (o *Outbox) ctrlWaiting() bool { return len(o.wake) > 0 }

// hasWork reports whether anything waits for a writer.
func (o *Outbox) hasWork() bool {
	return len(o.data) > 0 || len(o.disco) > 0 || len(o.wake) > 0 || o.closed.Load()
}

// receiverStalled reports whether the writer has been blocked in one
// socket write for longer than a healthy receiver ever takes.
func (o *Outbox) receiverStalled() bool {
	start := o.writeStart.Load()
	return start != 0 && o.sys.Clock.Now().UnixNano()-start > int64(actors.StalledWriteAfter)
}

func (o *Outbox) armDeadline() {
	if o.writeTimeout > 0 {
		// The wall clock, not sys.Clock: the kernel (or net.Pipe's own
		// timer) enforces a socket deadline, and knows no other time.
		o.conn.SetWriteDeadline(time.Now().Add(o.writeTimeout))
	}
}

func (o *Outbox) flush() {
	frames := o.w.Frames()
	if frames == 0 {
		return
	}
	if o.w.Flush() != nil {
		o.lost()
		return
	}
	o.flushed(frames)
}

// lost does the bookkeeping of a failed flush: the batch's packets count
// as write errors rather than as sent (one the buffer refused outright is
// counted by writePacket). Any that left in a write the buffer made
// mid-batch count too: nothing tells which did, and the connection is
// dead either way.
func (o *Outbox) lost() {
	if o.owner != nil {
		o.owner.Dropped[actors.DropWriteError].Add(o.sent.Packets)
	}
	o.sys.Stats.DropUnsent(actors.DropWriteError, &o.sent)
	o.oldest = 0
}

// flushed does the bookkeeping of a completed flush of frames frames.
func (o *Outbox) flushed(frames int) {
	stats := o.sys.Stats
	stats.NoteBatch(frames)
	if c := o.owner; c != nil && o.sent.Packets > 0 {
		c.PacketsSent.Add(o.sent.Packets)
		c.BytesSent.Add(o.sent.Bytes)
	}
	stats.AddSent(&o.sent)
	if o.oldest != 0 {
		stats.NoteQueueDelay(float64(o.sys.Clock.Now().UnixNano()-o.oldest) / 1e6)
		o.oldest = 0
	}
}

func (o *Outbox) writePacket(p *wire.Packet) {
	o.noteSource(p.Source(), p.Forwarded)
	if o.oldest == 0 {
		o.oldest = p.QueuedAt
	}
	disco, n := p.IsDisco(), p.Len()
	if err := o.w.WriteRaw(p.RecvFrame()); err != nil {
		o.sys.Stats.DropFor(o.owner, actors.DropWriteError, actors.KindOf(disco), n)
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

// maxSeenSources bounds the sources an outbox remembers having reported:
// about 0.5 MiB for a receiver hearing from that many.
const maxSeenSources = 8192

// maxPendingDelivered bounds the first deliveries waiting for the
// registry to take them (33 bytes each, about 270 KiB at the bound, under
// what seen costs). It is only reached when the registry is that far
// behind on one connection; past it, a new source is left unreported
// (and unmarked, so that its next packet tries again) rather than grow
// the list.
const maxPendingDelivered = maxSeenSources

// noteSource tells the registry the first time this connection is sent a
// packet from src, so that it hears PeerGone when src leaves. The report
// goes into the delivered list, and the registry hears of the list only
// when this report makes it non-empty: one Delivered per connection waits
// in its mailbox, not one per source, whatever the packet rate.
func (o *Outbox) noteSource(src wire.NodePublic, forwarded bool) {
	if o.forgetPending.Load() {
		o.applyForget()
	}
	if o.haveLast && src == o.lastSrc {
		return
	}
	if _, ok := o.seen[src]; ok {
		o.lastSrc, o.haveLast = src, true
		return
	}
	if !o.reportDelivered(src, forwarded) {
		return
	}
	o.lastSrc, o.haveLast = src, true
	if o.seen == nil || len(o.seen) >= maxSeenSources {
		// Start over rather than grow without bound: a mesh peer can
		// forward packets from any number of made-up sources, which
		// never leave and so never get the PeerGone that prunes them.
		// Sources heard again are reported again, which the registry
		// takes as it took the first report.
		o.seen = make(map[wire.NodePublic]struct{})
	}
	o.seen[src] = struct{}{}
	o.owner.UniqueSenders.Store(int64(len(o.seen)))
}

// reportDelivered adds src to the delivered list and rings the
// registry's doorbell if the list was empty. It reports false, and adds
// nothing, when the list is full.
func (o *Outbox) reportDelivered(src wire.NodePublic, forwarded bool) bool {
	o.deliveredMu.Lock()
	n := len(o.delivered)
	if n >= maxPendingDelivered {
		o.deliveredMu.Unlock()
		return false
	}
	o.delivered = append(o.delivered, actors.DeliveredSource{Source: src, Forwarded: forwarded})
	o.deliveredMu.Unlock()
	if n == 0 {
		// The list was empty, so no Delivered for it is on its way: the
		// registry takes the list whole when it handles this one.
		o.sys.Send(o.sys.Registry, &actors.Delivered{Receiver: o.owner})
	}
	return true
}

// ForgetSource implements actors.SourceForgetter: the registry no longer
// counts this connection among src's recipients, and src's next packet
// must be reported again. The registry calls it; the writer applies it
// before the next packet it writes (applyForget), so that every packet
// written after this call, whenever it was queued, finds src forgotten.
//
// Forgetting more than the registry did is harmless: a source reported
// twice is recorded once. (That is what happens when the forget crosses
// a fresh report of src on its way to the registry: the registry records
// the report after it forgot, and the outbox's next packet from src
// reports it once more.) Forgetting less is what loses a PeerGone, so
// when forgets pile up past maxSeenSources, the writer forgets every
// source rather than let the list grow.
func (o *Outbox) ForgetSource(src wire.NodePublic) {
	o.deliveredMu.Lock()
	if !o.forgetAll {
		if len(o.forget) < maxSeenSources {
			o.forget = append(o.forget, src)
		} else {
			o.forget, o.forgetAll = nil, true
		}
	}
	o.forgetPending.Store(true)
	o.deliveredMu.Unlock()
}

// applyForget takes the sources ForgetSource listed out of seen. Run by
// the holder of the writer's slot, which owns seen.
func (o *Outbox) applyForget() {
	o.deliveredMu.Lock()
	forget, all := o.forget, o.forgetAll
	o.forget, o.forgetAll = nil, false
	o.forgetPending.Store(false)
	o.deliveredMu.Unlock()
	if all {
		clear(o.seen)
	}
	for _, k := range forget {
		delete(o.seen, k)
	}
	o.haveLast = false
	if o.owner != nil {
		o.owner.UniqueSenders.Store(int64(len(o.seen)))
	}
}

// TakeDelivered implements actors.DeliveredTaker: the registry's side of
// the delivered list.
func (o *Outbox) TakeDelivered() []actors.DeliveredSource {
	o.deliveredMu.Lock()
	taken := o.delivered
	o.delivered = nil
	o.deliveredMu.Unlock()
	return taken
}

// writeCtrl writes every waiting control frame and reports whether they
// included watcher updates (1) or not (0).
func (o *Outbox) writeCtrl() int {
	o.ctrlMu.Lock()
	frames := o.ctrl
	o.ctrl = o.spare[:0]
	pong, hasPong := o.pong, o.pongPending
	o.pongPending = false
	o.ctrlMu.Unlock()

	stats := o.sys.Stats
	updates := 0
	for i := range frames {
		f := &frames[i]
		if f.presence {
			updates++
		}
		switch f.typ {
		case wire.FrameServerInfo:
			o.w.WriteFrame(wire.FrameServerInfo, f.body, nil)
		case wire.FramePeerGone:
			o.w.WritePeerGone(f.key, f.reason)
			switch f.reason {
			case wire.PeerGoneDisconnected:
				stats.PeerGoneDiscFrame.Add(1)
				// Should the peer come back and send again, that is a
				// new relationship worth a new PeerGone later.
				delete(o.seen, f.key)
				if o.owner != nil {
					o.owner.UniqueSenders.Store(int64(len(o.seen)))
				}
				if o.haveLast && o.lastSrc == f.key {
					o.haveLast = false
				}
			case wire.PeerGoneNotHere:
				stats.PeerGoneNotHere.Add(1)
			}
		case wire.FramePeerPresent:
			o.w.WritePeerPresent(f.key, f.addr, f.flags)
		case wire.FrameRestarting:
			o.w.WriteRestarting(f.reconnectIn, f.tryFor)
		}
		if f.hangUp {
			o.hangUp = true
		}
		*f = ctrlFrame{}
	}
	o.spare = frames[:0]
	if o.kaDue.Swap(false) {
		o.w.WriteKeepAlive()
		o.keepAlive.Reset(o.kaPeriod)
	}
	if hasPong {
		o.w.WritePong(pong)
		stats.SentPong.Add(1)
	}
	if updates == 0 {
		return 0
	}
	stats.NoteMeshUpdateBatch(updates)
	return 1
}

// fail handles a write error: the connection is unusable, so close it; the
// reader then fails too and the client actor cleans up.
func (o *Outbox) fail(err error) {
	o.writeErr.CompareAndSwap(nil, &err)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		o.sys.Stats.WriteTimeouts.Add(1)
	}
	o.closed.Store(true)
	o.conn.Close()
}

// finish ends the outbox for good, once: whoever holds the writer's slot
// when the outbox closes (the last writer, or Close) calls it.
func (o *Outbox) finish() {
	o.finishOne.Do(func() {
		o.closed.Store(true)
		if o.keepAlive != nil {
			o.keepAlive.Stop()
		}
		o.dropQueued()
		o.w.Release()
		o.Abort()
		close(o.finished)
	})
}

// dropQueued empties both queues, counting what was lost.
func (o *Outbox) dropQueued() {
	stats := o.sys.Stats
	for {
		select {
		case p := <-o.disco:
			stats.DropFor(o.owner, actors.DropGoneDisconnected, actors.KindDisco, p.Len())
			p.Release()
		case p := <-o.data:
			stats.DropFor(o.owner, actors.DropGoneDisconnected, actors.KindOther, p.Len())
			p.Release()
		default:
			return
		}
	}
}
