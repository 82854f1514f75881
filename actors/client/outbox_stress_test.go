package client

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/leakcheck"
	"github.com/derpd/derpd/wire"
)

// The outbox's state machine under fire (docs/outbox.md): many senders,
// each behaving as a reader does (lone packets written directly, bursts
// deferred and written by their reader, waits for room, no waiter at
// all), control frames and pongs queued meanwhile, a receiver that reads
// fast and then pauses (so queues fill, writes block and senders see a
// stalled receiver), and Close in the middle, while packets still come.
//
// What must hold, whatever the interleaving:
//   - every packet handed to SendPacket is counted exactly once: as sent
//     (flushed to the socket) or as dropped with a reason;
//   - the receiver reads no packet twice, none corrupted (two writers at
//     once would interleave their bytes), and, when the socket outlives
//     the outbox, exactly the packets counted as sent; when the socket is
//     cut under the writer (as the client actor does), a batch whose
//     write failed counts as write errors though part of it may have
//     reached the peer, so reads lie between sent and sent+write errors;
//   - ServerInfo is the first frame; control frames arrive in the order
//     they were queued, without gaps until the outbox closed; pongs in the
//     order of their pings;
//   - the per-connection drop counts match the server-wide ones;
//   - nothing outlives Finished: no writer goroutine, no write.
//
// Each run is seeded; a failure names its seed. Run it many times to
// shake out rare interleavings:
//
//	go test -race -run TestOutboxStress -count=20 ./actors/client/
func TestOutboxStress(t *testing.T) {
	for _, v := range []stressVariant{
		{name: "tcp, closed gracefully", direct: true},
		{name: "tcp, socket cut under the writer", direct: true, cutSocket: true},
		{name: "writer goroutines only, closed gracefully", keepAlives: true},
		{name: "writer goroutines only, socket cut", cutSocket: true, keepAlives: true},
		{name: "tcp, drained, then closed", direct: true, closeLast: true},
		{name: "writer goroutines only, drained, then closed", closeLast: true, keepAlives: true},
	} {
		t.Run(v.name, func(t *testing.T) {
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			runOutboxStress(t, v, seed)
		})
	}
}

type stressVariant struct {
	name       string
	direct     bool // a real TCP socket, so lone packets and bursts are written by their senders
	cutSocket  bool // Close and close the socket at once, as the client actor does
	keepAlives bool // keepalives every millisecond, interleaved with everything else
	// closeLast: no Close in the middle; once the senders are done, the
	// queues must drain with no further wake-up (a writer that gave up
	// its slot with work left would strand them), and then Close.
	closeLast bool
}

const (
	stressSenders   = 6
	stressPerSender = 1200
)

func runOutboxStress(t *testing.T, v stressVariant, seed uint64) {
	near, far := tcpPair(t)
	// Small socket buffers: the receiver's pauses block the writer soon.
	near.(*net.TCPConn).SetWriteBuffer(32 << 10)
	far.(*net.TCPConn).SetReadBuffer(32 << 10)
	var conn net.Conn = near
	var guard *writeGuard
	if !v.direct {
		guard = &writeGuard{Conn: near}
		conn = guard
	}
	cfg := OutboxConfig{QueueDepth: 8}
	if v.keepAlives {
		cfg.KeepAlive = time.Millisecond
	}
	e := newOutboxEnvOn(t, conn, cfg)
	if v.direct && e.ob.direct == nil {
		t.Skip("no direct writes on this platform")
	}
	leaks := leakcheck.Take(t)
	ob, stats := e.ob, e.sys.Stats
	if guard != nil {
		guard.finished = ob.Finished()
	}

	// The receiver.
	got := make(chan stressReceipt, 1)
	go func() { got <- receiveStress(far, seed, v.cutSocket) }()

	// Senders, and between their packets control frames (PeerGone, as
	// the reader queues for an unknown destination; presence, as the
	// actor queues for a watcher) and pongs. One lock numbers them in the
	// order they are queued, which is the order they must arrive in.
	var (
		handed    atomic.Int64 // packets given to SendPacket
		closeOnce sync.Once
		wg        sync.WaitGroup
		ctrlMu    sync.Mutex
		ctrlSent  int // control frames queued
		pings     int // pongs asked for
		closing   atomic.Bool
		// lateCtrl[i]: control frame i may have been queued after Close
		// began, and so may be missing (a presence update is not queued
		// once the outbox is closed).
		lateCtrl []bool
	)
	queueCtrl := func() {
		ctrlMu.Lock()
		defer ctrlMu.Unlock()
		i := ctrlSent
		ctrlSent++
		if i%2 == 0 {
			ob.QueuePeerGone(stressCtrlKey(i), wire.PeerGoneNotHere)
		} else {
			ob.QueuePresence([]actors.PeerPresence{{Peer: stressCtrlKey(i), Present: i%4 == 1, Flags: wire.PeerPresentIsRegular}})
		}
		// Read after the call: Close, once begun, sets closing before
		// it closes the outbox.
		lateCtrl = append(lateCtrl, closing.Load())
	}
	queuePong := func() {
		ctrlMu.Lock()
		defer ctrlMu.Unlock()
		pings++
		var data [wire.PingDataLen]byte
		binary.BigEndian.PutUint64(data[:], uint64(pings))
		ob.QueuePong(data)
	}
	closeAt := int64(stressSenders * stressPerSender * (40 + int(seed%30)) / 100)
	if v.closeLast {
		closeAt = -1
	}
	closeOutbox := func() {
		closeOnce.Do(func() {
			closing.Store(true)
			ob.Close()
			if v.cutSocket {
				near.Close()
			}
		})
	}
	startAt := int64(20 + seed%50)
	started := sync.OnceFunc(func() {
		ob.queueServerInfo([]byte("server-info"))
		ob.Start()
	})
	for s := range stressSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(s)))
			w := &actors.Waiter{}
			mode := s % 3 // 0: as a reader; 1: as a reader that never defers; 2: no waiter
			for seq := 0; seq < stressPerSender; {
				burst := 1 + rng.IntN(6)
				for i := 0; i < burst && seq < stressPerSender; i++ {
					p := stressPacket(byte(s), uint32(seq), rng)
					seq++
					n := handed.Add(1)
					if n == startAt {
						started()
					}
					if n == closeAt {
						closeOutbox()
					}
					switch mode {
					case 0:
						w.Burst = i < burst-1 && seq < stressPerSender
						w.Direct = !w.Burst
						ob.SendPacket(p, w)
					case 1:
						w.Burst, w.Direct = false, true
						ob.SendPacket(p, w)
					default:
						ob.SendPacket(p, nil)
					}
					if n%17 == 0 {
						queueCtrl()
					}
					if n%23 == 0 {
						queuePong()
					}
				}
				// The burst ended: a reader wakes what it deferred.
				w.WakeDeferred()
			}
			stats.AddWaits(w)
		}()
	}
	wg.Wait()
	started()
	if v.closeLast {
		deadline := time.Now().Add(leakcheck.Wait)
		for data, disco := ob.QueueDepths(); data+disco > 0 || len(ob.wake) > 0; data, disco = ob.QueueDepths() {
			if time.Now().After(deadline) {
				t.Fatalf("%d data and %d disco packets, control frames waiting %v, still queued %v after the last was handed in: stranded",
					data, disco, len(ob.wake) > 0, leakcheck.Wait)
			}
			time.Sleep(time.Millisecond)
		}
	}
	closeOutbox()
	select {
	case <-ob.Finished():
	case <-time.After(leakcheck.Wait):
		t.Fatal("the outbox did not finish after Close")
	}
	near.Close() // after a graceful close, the receiver reads to the end
	var r stressReceipt
	select {
	case r = <-got:
	case <-time.After(leakcheck.Wait):
		far.Close()
		t.Fatal("the receiver did not see the end of the stream")
	}
	if r.err != nil {
		t.Fatalf("receiver: %v", r.err)
	}
	leaks.Check(t)

	// Control frames: none skipped that was queued before Close began
	// and has a later one after it.
	next := 0
	for _, i := range r.ctrlRead {
		for ; next < i; next++ {
			if !lateCtrl[next] {
				t.Errorf("control frame %d, queued before Close, is missing, and %d came after it", next, i)
			}
		}
		next = i + 1
	}
	if v.closeLast && len(r.ctrlRead) != ctrlSent {
		t.Errorf("%d control frames read of %d queued, all before Close", len(r.ctrlRead), ctrlSent)
	}

	// Every packet handed in is counted once.
	total := handed.Load()
	sent := stats.PacketsSent.Load()
	var dropped, perConn int64
	drops := map[actors.DropReason]int64{}
	for _, reason := range []actors.DropReason{actors.DropQueueHead, actors.DropQueueTail, actors.DropGoneDisconnected, actors.DropWriteError} {
		n := stats.Dropped(reason, actors.KindOther) + stats.Dropped(reason, actors.KindDisco)
		drops[reason] = n
		dropped += n
		if c := ob.owner.Dropped[reason].Load(); c != n {
			t.Errorf("%v: %d dropped for the connection, %d server-wide", reason, c, n)
		}
		perConn += ob.owner.Dropped[reason].Load()
	}
	t.Logf("handed %d: sent %d, read %d, dropped %d %v; %d control frames of %d, %d pongs of %d pings, %d keepalives, %d waits for room",
		total, sent, r.packets, dropped, drops, len(r.ctrlRead), ctrlSent, r.pongs, pings, r.keepAlives, stats.QueueWaits.Load())
	if sent+dropped != total {
		t.Errorf("sent %d + dropped %d = %d, want the %d handed in: a packet was lost uncounted, or counted twice", sent, dropped, sent+dropped, total)
	}
	if c := ob.owner.PacketsSent.Load(); c != sent {
		t.Errorf("the connection counts %d sent, the server %d", c, sent)
	}
	switch {
	case !v.cutSocket && drops[actors.DropWriteError] != 0:
		t.Errorf("%d write errors on a socket nobody closed", drops[actors.DropWriteError])
	case !v.cutSocket && r.packets != sent:
		t.Errorf("the receiver read %d packets, %d were counted as sent", r.packets, sent)
	case r.packets < sent || r.packets > sent+drops[actors.DropWriteError]:
		t.Errorf("the receiver read %d packets; sent %d, write errors %d", r.packets, sent, drops[actors.DropWriteError])
	}
	switch {
	case r.packets == 0:
		t.Errorf("no packet was delivered")
	case v.closeLast && drops[actors.DropGoneDisconnected] != 0:
		t.Errorf("%d packets dropped as gone, though the queues had drained before Close", drops[actors.DropGoneDisconnected])
	case !v.closeLast && drops[actors.DropGoneDisconnected] == 0:
		t.Errorf("no packet was sent to the closed outbox: the run did not exercise the close")
	}
	if guard != nil {
		if n := guard.overlaps.Load(); n != 0 {
			t.Errorf("%d socket writes overlapped another: two holders of the writer's slot", n)
		}
		if n := guard.late.Load(); n != 0 {
			t.Errorf("%d socket writes after Finished", n)
		}
	}
}

// stressPacket is packet seq of sender s: a disco packet one time in
// five, of a size from tiny to the largest, its payload a pattern the
// receiver checks byte by byte.
func stressPacket(s byte, seq uint32, rng *rand.Rand) *wire.Packet {
	var n int
	switch rng.IntN(100) {
	case 0:
		n = wire.MaxPacketSize // bigger than what is left of any batch
	case 1, 2, 3, 4, 5:
		n = 8 << 10
	default:
		n = 64 + rng.IntN(1400)
	}
	disco := rng.IntN(5) == 0
	p := wire.NewPacket(n)
	fillStressPayload(p.Payload(), s, seq, disco)
	p.SetSource(testKey(s + 1))
	return p
}

// A payload: 6 bytes of disco magic (or zeros), the sender, the sequence
// number, then a stretch of stressPattern that starts where the sender
// and number say.
func fillStressPayload(b []byte, s byte, seq uint32, disco bool) {
	if disco {
		copy(b, "TS\xf0\x9f\x92\xac")
	} else {
		clear(b[:6])
	}
	b[6] = s
	binary.BigEndian.PutUint32(b[7:11], seq)
	copy(b[11:], stressPattern[stressOffset(s, seq):])
}

// stressPayloadOK reports whether b is what fillStressPayload wrote
// (with one comparison, cheap even under the race detector).
func stressPayloadOK(b []byte, s byte, seq uint32) bool {
	return bytes.Equal(b[11:], stressPattern[stressOffset(s, seq):][:len(b)-11])
}

func stressOffset(s byte, seq uint32) int { return int(seq*7+uint32(s)*131) % 4096 }

var stressPattern = func() []byte {
	b := make([]byte, 4096+wire.MaxPacketSize)
	rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}()

func stressCtrlKey(i int) wire.NodePublic {
	var k wire.NodePublic
	binary.BigEndian.PutUint32(k[:], uint32(i))
	k[31] = 0xc7
	return k
}

type stressReceipt struct {
	packets    int64 // distinct packets read
	ctrlRead   []int // numbers of the control frames read, in order
	pongs      int64
	keepAlives int64
	err        error // the first broken rule
}

// receiveStress reads the far end until the stream ends, checking every
// frame, and pausing now and then as a slow phone would. Only if the
// socket may be cut under the writer may the last frame be cut short.
func receiveStress(conn net.Conn, seed uint64, mayBeCut bool) (r stressReceipt) {
	rng := rand.New(rand.NewPCG(seed, 0xfeed))
	rd := wire.NewReader(conn, nil, 1<<20)
	seen := make([][]bool, stressSenders)
	for i := range seen {
		seen[i] = make([]bool, stressPerSender)
	}
	var lastPong uint64
	buf := make([]byte, wire.MaxRecvFrameBody)
	fail := func(format string, args ...any) stressReceipt {
		r.err = fmt.Errorf(format, args...)
		io.Copy(io.Discard, conn) // let the writer finish
		return r
	}
	for frame := 0; ; frame++ {
		if rng.IntN(400) == 0 {
			time.Sleep(time.Duration(3+rng.IntN(5)) * time.Millisecond) // the scenario, not a wait
		}
		conn.SetReadDeadline(time.Now().Add(leakcheck.Wait))
		typ, n, err := rd.ReadHeader()
		if err != nil {
			if errors.Is(err, io.EOF) || isReset(err) || errors.Is(err, net.ErrClosed) {
				return r
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fail("no frame and no end of stream within %v", leakcheck.Wait)
			}
			return fail("frame %d: %v", frame, err)
		}
		body := buf[:n]
		if err := rd.ReadFull(body); err != nil {
			if mayBeCut && (errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) {
				return r // a batch cut short by the closed socket
			}
			return fail("frame %d, %v body: %v", frame, typ, err)
		}
		if frame == 0 && typ != wire.FrameServerInfo {
			return fail("first frame %v, want ServerInfo", typ)
		}
		switch typ {
		case wire.FrameServerInfo:
			if frame != 0 || string(body) != "server-info" {
				return fail("ServerInfo %q as frame %d", body, frame)
			}
		case wire.FrameRecvPacket:
			payload := body[wire.KeyLen:]
			if len(payload) < 11 {
				return fail("a packet of %d bytes", len(payload))
			}
			s, seq := payload[6], binary.BigEndian.Uint32(payload[7:11])
			if int(s) >= stressSenders || int(seq) >= stressPerSender {
				return fail("a packet from sender %d, number %d: corrupt", s, seq)
			}
			if wire.NodePublic(body[:wire.KeyLen]) != testKey(s+1) {
				return fail("packet %d of sender %d has source %x", seq, s, body[:4])
			}
			if !stressPayloadOK(payload, s, seq) {
				return fail("packet %d of sender %d is corrupt", seq, s)
			}
			if seen[s][seq] {
				return fail("packet %d of sender %d written twice", seq, s)
			}
			seen[s][seq] = true
			r.packets++
		case wire.FramePeerGone, wire.FramePeerPresent:
			key := wire.NodePublic(body[:wire.KeyLen])
			i := int(binary.BigEndian.Uint32(key[:]))
			wantType := wire.FramePeerGone
			if i%4 == 1 {
				wantType = wire.FramePeerPresent
			}
			if key != stressCtrlKey(i) || typ != wantType {
				return fail("control frame %v for %x: corrupt", typ, key[:4])
			}
			if n := len(r.ctrlRead); n > 0 && i <= r.ctrlRead[n-1] {
				return fail("control frame %d after %d: out of order", i, r.ctrlRead[n-1])
			}
			r.ctrlRead = append(r.ctrlRead, i)
		case wire.FramePong:
			v := binary.BigEndian.Uint64(body)
			if v <= lastPong {
				return fail("pong %d after pong %d", v, lastPong)
			}
			lastPong = v
			r.pongs++
		case wire.FrameKeepAlive:
			r.keepAlives++
		default:
			return fail("unexpected %v frame", typ)
		}
	}
}

// writeGuard is a connection that is not a *net.TCPConn, so the outbox
// writes only from writer goroutines, and that counts writes which
// overlap another (two holders of the writer's slot) or begin after the
// outbox finished.
type writeGuard struct {
	net.Conn
	inflight atomic.Int32
	overlaps atomic.Int64
	late     atomic.Int64
	finished <-chan struct{}
}

func (g *writeGuard) Write(b []byte) (int, error) {
	if g.inflight.Add(1) > 1 {
		g.overlaps.Add(1)
	}
	defer g.inflight.Add(-1)
	select {
	case <-g.finished:
		g.late.Add(1)
	default:
	}
	return g.Conn.Write(b)
}

// Pairs of packets from two senders, the second a few microseconds
// after the first, round after round, each round read to the end before
// the next: the second often arrives just as the holder that wrote the
// first lets go of the writer's slot. A holder that gave up the slot
// without a last look for work would leave it queued, waiting for a
// wake-up that never comes (nothing else is sent), and the round would
// never end.
func TestOutboxStressHandoffs(t *testing.T) {
	for _, direct := range []bool{false, true} {
		name := map[bool]string{false: "queued, writer goroutines", true: "lone packets written directly"}[direct]
		t.Run(name, func(t *testing.T) {
			// A write timeout makes the writer clear its deadline on the
			// way out, which widens the instant.
			e := newOutboxEnv(t, OutboxConfig{WriteTimeout: time.Minute})
			leaks := leakcheck.Take(t)
			e.ob.queueServerInfo([]byte("server-info"))
			e.ob.Start()
			if typ, _ := e.readFrame(t); typ != wire.FrameServerInfo {
				t.Fatalf("first frame %v", typ)
			}
			waiter := func() *actors.Waiter {
				if direct {
					return &actors.Waiter{Direct: true}
				}
				return nil
			}
			wa, wb := waiter(), waiter()
			second := make(chan time.Duration)
			done := make(chan struct{})
			go func() { // the second sender
				defer close(done)
				for gap := range second {
					for t0 := time.Now(); time.Since(t0) < gap; { // the scenario: a gap shorter than any sleep
					}
					e.ob.SendPacket(packet(testKey(2), []byte("b")), wb)
				}
			}()
			rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
			const rounds = 1200
			for k := range rounds {
				second <- time.Duration(rng.IntN(30_000))
				e.ob.SendPacket(packet(testKey(1), []byte("a")), wa)
				for range 2 {
					// A stranded packet fails here, after the deadline.
					if typ, body := e.readFrame(t); typ != wire.FrameRecvPacket {
						t.Fatalf("round %d: got %v %x", k, typ, body)
					}
				}
			}
			close(second)
			<-done
			e.ob.Close()
			<-e.ob.Finished()
			leaks.Check(t)
			if sent := e.sys.Stats.PacketsSent.Load(); sent != 2*rounds {
				t.Fatalf("%d counted as sent, %d read", sent, 2*rounds)
			}
		})
	}
}

// Start races with senders writing lone packets directly: ServerInfo,
// queued before Start, must still be the first frame on the wire, in
// every one of many rounds. The senders start the moment Start is about
// to be called, and stop before their queue is full (a full one would
// make them wait, not race).
func TestOutboxStressStartRacesDirectWrites(t *testing.T) {
	sys := newOutboxEnv(t, OutboxConfig{}).sys // one system for every round: it is slow to start
	for round := range 800 {
		near, far := tcpPair(t)
		e := &outboxEnv{sys: sys, far: far, rd: wire.NewReader(far, nil, 1<<20),
			ob: NewOutbox(sys, near, OutboxConfig{KeepAlive: time.Hour})}
		e.ob.owner = &actors.Conn{ID: uint64(round), Key: testKey(0xaa)}
		if e.ob.direct == nil {
			t.Skip("no direct writes on this platform")
		}
		e.ob.queueServerInfo([]byte("server-info"))
		var wg sync.WaitGroup
		release := make(chan struct{})
		for s := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w := &actors.Waiter{Direct: true}
				<-release
				for range 24 {
					if data, _ := e.ob.QueueDepths(); data > 24 {
						return
					}
					e.ob.SendPacket(packet(testKey(byte(s+1)), []byte("early")), w)
				}
			}()
		}
		close(release)
		e.ob.Start()
		typ, body := e.readFrame(t)
		wg.Wait()
		if typ != wire.FrameServerInfo {
			t.Fatalf("round %d: first frame %v %q, want ServerInfo", round, typ, body)
		}
		e.ob.Close()
		near.Close()
		far.Close()
		<-e.ob.Finished()
	}
}
