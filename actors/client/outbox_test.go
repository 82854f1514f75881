package client

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// recorder is a stand-in registry that keeps what it is sent.
type recorder struct{ got []any }

func (r *recorder) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started, *actor.Stopping, *actor.Stopped:
		return
	}
	r.got = append(r.got, ctx.Message())
}

type outboxEnv struct {
	d   *actors.StepDispatcher
	sys *actors.System
	reg *recorder
	ob  *Outbox
	far net.Conn // the client's end
	rd  *wire.Reader
}

// newOutboxEnv builds an outbox on one end of a loopback TCP connection;
// the test reads what it writes from the other.
func newOutboxEnv(t testing.TB, cfg OutboxConfig) *outboxEnv {
	near, far := tcpPair(t)
	e := newOutboxEnvOn(t, near, cfg)
	e.far, e.rd = far, wire.NewReader(far, nil, 1<<20)
	return e
}

// newOutboxEnvOn builds an outbox writing to conn, with a stand-in
// registry on a step dispatcher.
func newOutboxEnvOn(t testing.TB, conn net.Conn, cfg OutboxConfig) *outboxEnv {
	d := actors.NewStepDispatcher()
	sys := actors.NewSystem(zerolog.Nop(), actors.WithDispatcher(d))
	rec := &recorder{}
	props, _ := sys.Props(actors.ActorRegistry, func() actor.Actor { return rec })
	sys.Registry = sys.Root.Spawn(props)
	d.RunUntilIdle()
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = time.Hour
	}
	ob := NewOutbox(sys, conn, cfg)
	ob.owner = &actors.Conn{ID: 1, Key: testKey(0xaa)}
	t.Cleanup(ob.Close)
	return &outboxEnv{d: d, sys: sys, reg: rec, ob: ob}
}

func testKey(b byte) wire.NodePublic {
	var k wire.NodePublic
	for i := range k {
		k[i] = b
	}
	return k
}

func packet(src wire.NodePublic, payload []byte) *wire.Packet {
	p := wire.NewPacket(len(payload))
	copy(p.Payload(), payload)
	p.SetSource(src)
	return p
}

func discoPayload(seq byte) []byte {
	b := make([]byte, 80)
	copy(b, "TS\xf0\x9f\x92\xac")
	b[79] = seq
	return b
}

// readFrame reads one frame from the client's end, bounded by a deadline
// so a missing frame fails the test instead of hanging it.
func (e *outboxEnv) readFrame(t *testing.T) (wire.FrameType, []byte) {
	t.Helper()
	e.far.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, n, err := e.rd.ReadHeader()
	if err != nil {
		t.Fatalf("reading frame header: %v", err)
	}
	body := make([]byte, n)
	if err := e.rd.ReadFull(body); err != nil {
		t.Fatalf("reading %v body: %v", typ, err)
	}
	return typ, body
}

func TestOutboxWritesServerInfoFirstThenPackets(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	e.ob.queueServerInfo([]byte("sealed"))
	e.ob.SendPacket(packet(testKey(1), []byte("hello")), nil)
	e.ob.Start()
	typ, body := e.readFrame(t)
	if typ != wire.FrameServerInfo || string(body) != "sealed" {
		t.Fatalf("first frame %v %q, want ServerInfo", typ, body)
	}
	typ, body = e.readFrame(t)
	src := testKey(1)
	want := append(src[:], "hello"...)
	if typ != wire.FrameRecvPacket || !bytes.Equal(body, want) {
		t.Fatalf("second frame %v %x, want RecvPacket %x", typ, body, want)
	}
}

func TestOutboxFullQueueDropsOldest(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	// The writer is not running yet, so the queue fills exactly.
	for i := range 40 {
		e.ob.SendPacket(packet(testKey(1), []byte{byte(i)}), nil)
	}
	for i := range 5 {
		e.ob.SendPacket(packet(testKey(2), discoPayload(byte(i))), nil)
	}
	stats := e.sys.Stats
	if got := stats.Dropped(actors.DropQueueHead, actors.KindOther); got != 8 {
		t.Fatalf("queue_head drops = %d, want 8", got)
	}
	if got := stats.Dropped(actors.DropQueueHead, actors.KindDisco); got != 0 {
		t.Fatalf("disco drops = %d, want 0: disco has its own queue", got)
	}
	e.ob.Start()
	var data []byte
	disco := 0
	for range 32 + 5 {
		typ, body := e.readFrame(t)
		if typ != wire.FrameRecvPacket {
			t.Fatalf("got %v, want RecvPacket", typ)
		}
		if wire.LooksLikeDisco(body[wire.KeyLen:]) {
			disco++
			continue
		}
		data = append(data, body[wire.KeyLen])
	}
	if disco != 5 {
		t.Fatalf("delivered %d disco packets, want 5", disco)
	}
	for i, b := range data {
		if int(b) != 8+i {
			t.Fatalf("data packets delivered %v, want the newest 32 (8..39) in order", data)
		}
	}
}

func TestOutboxCloseCountsQueuedAsGone(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	for range 3 {
		e.ob.SendPacket(packet(testKey(1), []byte("x")), nil)
	}
	e.ob.Start()
	e.ob.Close()
	<-e.ob.Finished()
	stats := e.sys.Stats
	gone := stats.Dropped(actors.DropGoneDisconnected, actors.KindOther)
	sent := stats.PacketsSent.Load()
	// Each of the first three was either written before the writer saw
	// the close, or dropped as gone.
	if gone+sent != 3 {
		t.Fatalf("gone=%d sent=%d, want gone+sent=3", gone, sent)
	}
	// One sent to the finished outbox is gone, and counted once.
	e.ob.SendPacket(packet(testKey(1), []byte("late")), nil)
	if got := stats.Dropped(actors.DropGoneDisconnected, actors.KindOther); got != gone+1 {
		t.Fatalf("gone=%d after the late packet, want %d", got, gone+1)
	}
	if got := stats.PacketsSent.Load(); got != sent {
		t.Fatalf("sent=%d after the late packet, want %d", got, sent)
	}
}

func TestOutboxAnswersOnePingAtATime(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	e.ob.QueuePong([8]byte{1})
	e.ob.QueuePong([8]byte{2}) // arrives while the first is pending: dropped
	e.ob.Start()
	typ, body := e.readFrame(t)
	if typ != wire.FramePong || body[0] != 1 {
		t.Fatalf("got %v %x, want Pong 01…", typ, body)
	}
	e.ob.QueuePong([8]byte{3})
	typ, body = e.readFrame(t)
	if typ != wire.FramePong || body[0] != 3 {
		t.Fatalf("got %v %x, want Pong 03…", typ, body)
	}
	if got := e.sys.Stats.SentPong.Load(); got != 2 {
		t.Fatalf("sent_pong = %d, want 2", got)
	}
}

func TestOutboxReportsFirstDeliveryPerSource(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	e.ob.Start()
	for _, src := range []byte{1, 1, 2, 1, 2} {
		e.ob.SendPacket(packet(testKey(src), []byte("p")), nil)
		e.readFrame(t)
	}
	e.d.RunUntilIdle()
	// One doorbell (the stand-in registry takes nothing, so the list
	// was never empty again), and the list holds each source once.
	e.mustRing(t, 1, testKey(1), testKey(2))

	// Once told that source 1 is gone, a new packet from it is a new
	// relationship and reported again.
	e.ob.QueuePeerGone(testKey(1), wire.PeerGoneDisconnected)
	if typ, body := e.readFrame(t); typ != wire.FramePeerGone || len(body) != 33 || body[32] != 0 {
		t.Fatalf("got %v %x, want PeerGone(disconnected)", typ, body)
	}
	e.ob.SendPacket(packet(testKey(1), []byte("again")), nil)
	e.readFrame(t)
	e.d.RunUntilIdle()
	e.mustRing(t, 1, testKey(1))
}

// TestOutboxReportsAgainAfterForgetSource: once the registry says it no
// longer counts this connection among a source's recipients, the
// source's next packet is reported again, even when it is the source of
// the packet just before (the lastSrc shortcut); other sources stay
// reported.
func TestOutboxReportsAgainAfterForgetSource(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	e.ob.Start()
	for _, src := range []byte{2, 1} {
		e.ob.SendPacket(packet(testKey(src), []byte("p")), nil)
		e.readFrame(t)
	}
	e.d.RunUntilIdle()
	e.mustRing(t, 1, testKey(2), testKey(1))

	e.ob.ForgetSource(testKey(1))
	for _, src := range []byte{1, 2, 1} {
		e.ob.SendPacket(packet(testKey(src), []byte("again")), nil)
		e.readFrame(t)
	}
	e.d.RunUntilIdle()
	e.mustRing(t, 1, testKey(1))
	if n := e.ob.owner.UniqueSenders.Load(); n != 2 {
		t.Fatalf("unique senders %d, want 2", n)
	}
}

// TestOutboxForgetsEverySourceWhenForgetsPileUp: more forgets than
// maxSeenSources before the writer takes them make it forget every
// source, rather than keep a list that long.
func TestOutboxForgetsEverySourceWhenForgetsPileUp(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	e.ob.Start()
	e.ob.SendPacket(packet(testKey(1), []byte("p")), nil)
	e.readFrame(t)
	e.d.RunUntilIdle()
	e.mustRing(t, 1, testKey(1))
	for i := range maxSeenSources + 1 {
		var k wire.NodePublic
		k[0], k[1], k[31] = byte(i>>8), byte(i), 0x55
		e.ob.ForgetSource(k)
	}
	e.ob.deliveredMu.Lock()
	n, all := len(e.ob.forget), e.ob.forgetAll
	e.ob.deliveredMu.Unlock()
	if n != 0 || !all {
		t.Fatalf("%d forgets listed (forget all: %v), want none listed and all forgotten", n, all)
	}
	e.ob.SendPacket(packet(testKey(1), []byte("again")), nil)
	e.readFrame(t)
	e.d.RunUntilIdle()
	e.mustRing(t, 1, testKey(1))
}

func TestOutboxPresenceUpdatesInOrder(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	e.ob.Start()
	e.ob.QueuePresence([]actors.PeerPresence{
		{Peer: testKey(1), Present: true, Flags: wire.PeerPresentIsRegular},
		{Peer: testKey(1), Present: false},
	})
	if typ, body := e.readFrame(t); typ != wire.FramePeerPresent || len(body) != wire.PeerPresentLen || body[50] != 1 {
		t.Fatalf("got %v %x, want PeerPresent with regular flag", typ, body)
	}
	if typ, body := e.readFrame(t); typ != wire.FramePeerGone || body[0] != 1 {
		t.Fatalf("got %v %x, want PeerGone for key 1", typ, body)
	}
}

func TestOutboxSendsKeepAlives(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{KeepAlive: time.Millisecond})
	e.ob.Start()
	// The interval is tiny, so keepalives arrive with or without jitter;
	// the deadline in readFrame bounds the wait.
	if typ, body := e.readFrame(t); typ != wire.FrameKeepAlive || len(body) != 0 {
		t.Fatalf("got %v %x, want an empty KeepAlive", typ, body)
	}
}

func TestOutboxStalledReceiverHitsWriteDeadline(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{WriteTimeout: 50 * time.Millisecond})
	e.ob.Start()
	// The client never reads. Keep the queue topped up with large packets
	// until the kernel buffers fill and a write misses its deadline.
	big := make([]byte, wire.MaxPacketSize)
	for i := 0; ; i++ {
		select {
		case <-e.ob.Finished():
			if got := e.sys.Stats.WriteTimeouts.Load(); got != 1 {
				t.Fatalf("write timeouts = %d, want 1", got)
			}
			// The writer closed the socket, so the client sees the end
			// once it drains what was delivered.
			e.far.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, e.far)
			if err != nil && !errors.Is(err, net.ErrClosed) {
				t.Logf("client read ended with %v", err)
			}
			return
		default:
		}
		if i > 1_000_000 {
			t.Fatal("writer never timed out")
		}
		e.ob.SendPacket(packet(testKey(1), big), nil)
	}
}

// gateConn is a connection whose writes block until it is closed, and
// which reports the size of each write as it starts.
type gateConn struct {
	net.Conn // not used; calls other than these would panic
	started  chan int
	closed   chan struct{}
	once     sync.Once
}

func newGateConn() *gateConn {
	return &gateConn{started: make(chan int, 16), closed: make(chan struct{})}
}

func (g *gateConn) Write(b []byte) (int, error) {
	g.started <- len(b)
	<-g.closed
	return 0, net.ErrClosed
}

func (g *gateConn) Close() error {
	g.once.Do(func() { close(g.closed) })
	return nil
}

func (g *gateConn) SetWriteDeadline(time.Time) error { return nil }

// A write can block inside the wire.Writer, when a frame does not fit in
// what is left of the buffer and the batch so far must go out first, not
// only in the outbox's own flush. Senders must see that write as in
// progress too: otherwise, with a receiver that has stopped reading, they
// keep waiting for room instead of dropping for it.
func TestOutboxMarksWritesBlockedMidBatch(t *testing.T) {
	conn := newGateConn()
	ob := newOutboxEnvOn(t, conn, OutboxConfig{}).ob
	defer conn.Close()

	// Queued before Start, so the writer finds both in one batch: the
	// first fits under the flush threshold, the second does not fit
	// beside it.
	const first, second = 30 << 10, 60 << 10
	ob.SendPacket(packet(testKey(1), make([]byte, first)), nil)
	ob.SendPacket(packet(testKey(1), make([]byte, second)), nil)
	ob.Start()

	n := <-conn.started
	if want := wire.HeaderLen + wire.KeyLen + first; n != want {
		t.Fatalf("first write of %d bytes, want %d (the first packet alone, flushed mid-batch)", n, want)
	}
	if ob.writeStart.Load() == 0 {
		t.Fatal("a write is blocked but writeStart is not set: senders would not see the receiver as stalled")
	}
}

// A sender's reader that writes a lone packet itself must never block on
// the receiver. When control frames are waiting they go first, and with
// them the packet may not fit in the write buffer; the packet must then
// be left to a writer goroutine rather than flushed, blocking, by the
// sender.
func TestOutboxDirectWriteLeavesWaitingControlToTheWriter(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{}) // no write deadline: a blocked write stays blocked
	if e.ob.direct == nil {
		t.Skip("no direct writes on this platform")
	}
	// Fill the socket so that any blocking write would block for good.
	near := e.ob.conn.(*net.TCPConn)
	near.SetWriteBuffer(4096)
	e.far.(*net.TCPConn).SetReadBuffer(4096)
	junk := make([]byte, 64<<10)
	near.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		if _, err := near.Write(junk); err != nil {
			break
		}
	}
	near.SetWriteDeadline(time.Time{})
	e.ob.started.Store(true) // as Start would, without its writer running

	// A control frame queued while a writer held the slot: it waits.
	e.ob.running.Store(true)
	e.ob.QueuePeerGone(testKey(2), wire.PeerGoneDisconnected)
	e.ob.running.Store(false)

	done := make(chan struct{})
	go func() {
		defer close(done)
		w := &actors.Waiter{Direct: true}
		e.ob.SendPacket(packet(testKey(1), make([]byte, wire.MaxPacketSize)), w)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		e.far.Close() // unblock the stuck sender before failing
		e.ob.conn.Close()
		t.Fatal("SendPacket blocked in a write to a receiver that is not reading")
	}
}

// Packets in a batch whose flush fails were buffered, not delivered: they
// count as write errors, by kind, and not as sent.
func TestOutboxFailedFlushCountsBatchAsWriteErrors(t *testing.T) {
	conn := newGateConn()
	e := newOutboxEnvOn(t, conn, OutboxConfig{})
	sys, ob := e.sys, e.ob

	// Queued before Start, so the writer takes all three into one batch.
	ob.SendPacket(packet(testKey(1), []byte("one")), nil)
	ob.SendPacket(packet(testKey(1), []byte("two")), nil)
	ob.SendPacket(packet(testKey(2), discoPayload(0)), nil)
	ob.Start()
	<-conn.started // the batch's one write is under way
	conn.Close()   // and fails
	<-ob.Finished()

	stats := sys.Stats
	if got := stats.Dropped(actors.DropWriteError, actors.KindOther); got != 2 {
		t.Fatalf("write_error drops of data = %d, want 2", got)
	}
	if got := stats.Dropped(actors.DropWriteError, actors.KindDisco); got != 1 {
		t.Fatalf("write_error drops of disco = %d, want 1", got)
	}
	if got := stats.PacketsSent.Load(); got != 0 {
		t.Fatalf("sent = %d, want 0", got)
	}
}

// The same for a lone packet a sender's reader writes itself.
func TestOutboxFailedDirectWriteCountsWriteError(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	if e.ob.direct == nil {
		t.Skip("no direct writes on this platform")
	}
	e.ob.started.Store(true) // as Start would, without its writer running
	e.ob.conn.Close()        // the next write fails
	e.ob.SendPacket(packet(testKey(1), []byte("lost")), &actors.Waiter{Direct: true})
	<-e.ob.Finished()
	stats := e.sys.Stats
	if got := stats.Dropped(actors.DropWriteError, actors.KindOther); got != 1 {
		t.Fatalf("write_error drops = %d, want 1", got)
	}
	if got := stats.PacketsSent.Load(); got != 0 {
		t.Fatalf("sent = %d, want 0", got)
	}
}

// expectPackets reads frames from the far end and requires RecvPackets
// whose one-byte payloads are want, in order.
func (e *outboxEnv) expectPackets(t *testing.T, want ...byte) {
	t.Helper()
	for _, b := range want {
		typ, body := e.readFrame(t)
		if typ != wire.FrameRecvPacket || len(body) != wire.KeyLen+1 || body[wire.KeyLen] != b {
			t.Fatalf("got %v %x, want the packet %d", typ, body, b)
		}
	}
}

// A reader with more whole frames buffered queues its burst without
// waking the writer, then writes it itself when the burst ends; a lone
// packet at the end of the burst must not overtake it.
func TestOutboxBurstWaitsForItsReaderAndKeepsOrder(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{})
	if e.ob.direct == nil {
		t.Skip("no direct writes on this platform")
	}
	e.ob.started.Store(true) // as Start would, without a writer running
	src := testKey(1)
	w := &actors.Waiter{Burst: true}
	for i := range 3 {
		e.ob.SendPacket(packet(src, []byte{byte(i)}), w)
	}
	if e.ob.running.Load() || len(e.ob.data) != 3 || !w.IsDeferred(e.ob) {
		t.Fatalf("burst: writer running %v, %d queued, deferred %v; want no writer, 3 queued, deferred",
			e.ob.running.Load(), len(e.ob.data), w.IsDeferred(e.ob))
	}
	w.Burst, w.Direct = false, true
	e.ob.SendPacket(packet(src, []byte{3}), w) // the burst's last packet
	w.WakeDeferred()
	e.expectPackets(t, 0, 1, 2, 3)
}

// A burst bigger than the queue: waiting for room must first send what
// the reader deferred, or it would wait for a writer nobody woke.
func TestOutboxBurstWakesItselfBeforeWaitingForRoom(t *testing.T) {
	e := newOutboxEnv(t, OutboxConfig{QueueDepth: 2})
	if e.ob.direct == nil {
		t.Skip("no direct writes on this platform")
	}
	e.ob.started.Store(true)
	src := testKey(1)
	w := &actors.Waiter{Burst: true}
	for i := range 5 {
		e.ob.SendPacket(packet(src, []byte{byte(i)}), w)
	}
	w.WakeDeferred()
	e.expectPackets(t, 0, 1, 2, 3, 4)
	for _, r := range []actors.DropReason{actors.DropQueueHead, actors.DropQueueTail} {
		if n := e.sys.Stats.Dropped(r, actors.KindOther); n != 0 {
			t.Fatalf("%d packets dropped as %v", n, r)
		}
	}
	if w.Timeouts != 0 {
		t.Fatalf("%d waits for room timed out", w.Timeouts)
	}
}
