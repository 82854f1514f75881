package interop

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
	"tailscale.com/derp"
)

// §9.10: both directions, every size from empty to the 64 KiB maximum,
// byte-exact with the right source.
func TestRelayBothWaysAllSizes(t *testing.T) {
	srv := start(t, harness.Options{})
	a, b := connect(t, srv), connect(t, srv)
	for _, size := range []int{0, 1, 100, 1280, 16 << 10, 64 << 10} {
		payload := bytes.Repeat([]byte{byte(size % 251)}, size)
		if size > 0 {
			payload[0], payload[size-1] = 0xaa, 0xbb
		}
		if err := a.Send(b.Pub, payload); err != nil {
			t.Fatal(err)
		}
		b.ExpectPacket(t, a.Pub, payload)
		if err := b.Send(a.Pub, payload); err != nil {
			t.Fatal(err)
		}
		a.ExpectPacket(t, b.Pub, payload)
	}
}

// A burst keeps its order and loses nothing when the receiver keeps up
// (the prober's bandwidth check keeps < 32 in flight for this reason).
func TestRelayKeepsOrder(t *testing.T) {
	srv := start(t, harness.Options{})
	a, b := connect(t, srv), connect(t, srv)
	for i := range 30 {
		var p [8]byte
		binary.BigEndian.PutUint64(p[:], uint64(i))
		if err := a.Send(b.Pub, p[:]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		p := b.RecvPacket(t)
		if got := binary.BigEndian.Uint64(p.Data); got != uint64(i) {
			t.Fatalf("packet %d arrived as %d", i, got)
		}
	}
}

// §9.11: oversized or undersized SendPacket closes the sender only.
func TestBadSendPacketClosesSender(t *testing.T) {
	srv := start(t, harness.Options{})
	b := connect(t, srv)
	for name, body := range map[string][]byte{
		"payload 65537": make([]byte, 32+65537),
		"body 31":       make([]byte, 31),
	} {
		t.Run(name, func(t *testing.T) {
			rc := harness.DialRaw(t, srv, false)
			rc.Handshake(`{"version":2}`)
			if len(body) >= 32 {
				dst := toWire(b.Pub)
				copy(body, dst[:])
			}
			rc.Frame(wire.FrameSendPacket, body)
			rc.ExpectClosed()
		})
	}
	b.SyncPackets(t, connect(t, srv)) // nothing was delivered to b, and b is fine
}

// §9.12: ping is answered with its first 8 bytes; 7 or 1001 bytes close.
func TestPing(t *testing.T) {
	srv := start(t, harness.Options{})
	a := connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), harness.Wait)
	defer cancel()
	go func() { // Ping needs Recv running to see the pong
		for {
			if _, err := a.NextErr(); err != nil {
				return
			}
		}
	}()
	if err := a.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	for _, n := range []int{7, 1001} {
		rc := harness.DialRaw(t, srv, false)
		rc.Handshake(`{"version":2}`)
		rc.Frame(wire.FramePing, make([]byte, n))
		rc.ExpectClosed(wire.FramePong)
	}
	rc := harness.DialRaw(t, srv, false)
	rc.Handshake(`{"version":2}`)
	rc.Frame(wire.FramePing, append([]byte("8 bytes!"), make([]byte, 992)...))
	for {
		typ, body := rc.ReadFrame()
		if typ == wire.FrameKeepAlive {
			continue
		}
		if typ != wire.FramePong || string(body) != "8 bytes!" {
			t.Fatalf("1000-byte ping answered with %v %q", typ, body)
		}
		break
	}
}

// §9.13: control frames with the wrong length close the connection.
func TestControlFrameLengths(t *testing.T) {
	srv := start(t, harness.Options{})
	for name, f := range map[string]struct {
		typ  wire.FrameType
		body []byte
	}{
		"NotePreferred 2": {wire.FrameNotePreferred, []byte{1, 1}},
		"NotePreferred 0": {wire.FrameNotePreferred, nil},
	} {
		t.Run(name, func(t *testing.T) {
			rc := harness.DialRaw(t, srv, false)
			rc.Handshake(`{"version":2}`)
			rc.Frame(f.typ, f.body)
			rc.ExpectClosed()
		})
	}
}

// §9.15: unknown frame types (and server-only types sent by a client) are
// skipped and the connection stays up.
func TestUnknownFramesAreSkipped(t *testing.T) {
	srv := start(t, harness.Options{})
	b := connect(t, srv)
	rc := harness.DialRaw(t, srv, false)
	rc.Handshake(`{"version":2}`)
	for _, typ := range []wire.FrameType{0x0b, 0x0f, wire.FrameKeepAlive, wire.FramePong, 0x7f, wire.FrameClientInfo} {
		rc.Frame(typ, []byte("whatever this is"))
	}
	rc.Frame(wire.FrameNotePreferred, []byte{1})
	dst := toWire(b.Pub)
	rc.Frame(wire.FrameSendPacket, append(dst[:], "after unknowns"...))
	b.ExpectPacket(t, fromWire(rc.Pub), []byte("after unknowns"))
}

// §9.16: disco to an unknown key earns PeerGone(NotHere), at most three
// in a burst; other packets earn nothing.
func TestPeerGoneNotHere(t *testing.T) {
	srv := start(t, harness.Options{})
	a := connect(t, srv)
	ghost := harness.NewKey() // never connected anywhere
	if err := a.Send(ghost, []byte("not disco")); err != nil {
		t.Fatal(err)
	}
	a.Sync(t)
	for i := range 5 {
		if err := a.Send(ghost, disco(byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		a.ExpectPeerGone(t, ghost, derp.PeerGoneReasonNotHere)
	}
	a.Sync(t)
}

// §9.17: when A leaves, B who heard from A gets PeerGone(Disconnected);
// C who did not, gets nothing.
func TestPeerGoneDisconnected(t *testing.T) {
	srv := start(t, harness.Options{})
	a, b, c := connect(t, srv), connect(t, srv), connect(t, srv)
	if err := a.Send(b.Pub, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	b.ExpectPacket(t, a.Pub, []byte("hi"))
	a.Close()
	b.ExpectPeerGone(t, a.Pub, derp.PeerGoneReasonDisconnected)
	c.Sync(t)
}

// §9.17 on the wire: PeerGone is 33 bytes, the key and a reason byte.
// Tailscale's client reads a 32-byte PeerGone as reason 0, so only raw
// bytes show the reason is really sent.
func TestPeerGoneFrameLayout(t *testing.T) {
	srv := start(t, harness.Options{})
	a := connect(t, srv)
	rc := harness.DialRaw(t, srv, false)
	rc.Handshake(`{"version":2}`)
	if err := a.Send(fromWire(rc.Pub), []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if typ, body := rc.ReadFrame(); typ != wire.FrameRecvPacket || string(body[32:]) != "hi" {
		t.Fatalf("got %v %q, want the packet", typ, body)
	}
	a.Close()
	for {
		typ, body := rc.ReadFrame()
		if typ == wire.FrameKeepAlive {
			continue
		}
		ak := toWire(a.Pub)
		want := append(ak[:], 0x00)
		if typ != wire.FramePeerGone || string(body) != string(want) {
			t.Fatalf("got %v %x, want PeerGone %x", typ, body, want)
		}
		return
	}
}

// §9.18: the newest connection of a key receives; an older one that
// speaks takes over; the older one is never closed for being a duplicate.
func TestDuplicateKeys(t *testing.T) {
	srv := start(t, harness.Options{})
	sender := connect(t, srv)
	a1 := connect(t, srv)
	a2 := harness.Connect(t, srv, a1.Priv)
	a2.Sync(t) // a2 is registered once its own pong came back
	if err := sender.Send(a1.Pub, []byte("1")); err != nil {
		t.Fatal(err)
	}
	a2.ExpectPacket(t, sender.Pub, []byte("1"))
	a1.Sync(t) // a1 speaks (a ping) and gets nothing but its pong
	if err := sender.Send(a1.Pub, []byte("2")); err != nil {
		t.Fatal(err)
	}
	a1.ExpectPacket(t, sender.Pub, []byte("2"))
	a2.Sync(t)
	if err := sender.Send(a1.Pub, []byte("3")); err != nil {
		t.Fatal(err)
	}
	a2.ExpectPacket(t, sender.Pub, []byte("3"))
	// Closing one duplicate sends no PeerGone to those who heard from it.
	a2.Close()
	a1.Sync(t)
	if err := sender.Send(a1.Pub, []byte("4")); err != nil {
		t.Fatal(err)
	}
	a1.ExpectPacket(t, sender.Pub, []byte("4"))
}

// §9.22: a stalled receiver keeps at most 32 packets queued and drops the
// oldest, counted as queue_head; its disco queue is separate.
func TestStalledReceiverDropsOldest(t *testing.T) {
	srv := start(t, harness.Options{})
	sender := connect(t, srv)
	// The receiver completes the handshake, then stops reading. Its
	// receive buffer is kept small so the server's writer blocks soon.
	rc := harness.DialRaw(t, srv, false)
	if tc, ok := rc.Conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	rc.Handshake(`{"version":2}`)
	dst := fromWire(rc.Pub)
	const headDrops = `derp_packets_dropped{reason="queue_head",kind="other"}`
	const discoDrops = `derp_packets_dropped{reason="queue_head",kind="disco"}`

	// Fill the socket buffers and the data queue.
	big := make([]byte, 60<<10)
	for range 400 {
		if err := sender.Send(dst, big); err != nil {
			t.Fatal(err)
		}
	}
	sender.Sync(t) // every packet has been read and queued or dropped
	before := srv.Metric(t, headDrops)
	if before == 0 {
		t.Fatal("400 packets of 60 KiB to a receiver that does not read, and no queue_head drop")
	}
	// The queue is full and the writer is stuck: each further packet now
	// pushes out exactly one, the oldest.
	const more = 50
	for range more {
		if err := sender.Send(dst, big); err != nil {
			t.Fatal(err)
		}
	}
	// Disco packets have a queue of their own, 32 deep, which is empty.
	for i := range 20 {
		if err := sender.Send(dst, disco(byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	sender.Sync(t)
	if got := srv.Metric(t, headDrops) - before; got != more {
		t.Fatalf("%d more packets to a full queue dropped %v, want exactly %d", more, got, more)
	}
	if d := srv.Metric(t, discoDrops); d != 0 {
		t.Fatalf("20 disco packets into an empty disco queue dropped %v", d)
	}
	if n := srv.Metric(t, "derp_current_connections"); n != 2 {
		t.Fatalf("current connections = %v: the stalled receiver was cut off during the test (write deadline), so the counts above mean less", n)
	}
}

// §9.35: a client that stops reading is disconnected once writes to it
// block past the write deadline (2 s by default).
func TestStalledReceiverIsDisconnected(t *testing.T) {
	srv := start(t, harness.Options{})
	sender := connect(t, srv)
	rc := harness.DialRaw(t, srv, false)
	if tc, ok := rc.Conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	rc.Handshake(`{"version":2}`)
	big := make([]byte, 60<<10)
	deadline := time.Now().Add(harness.Wait)
	for {
		if err := sender.Send(fromWire(rc.Pub), big); err != nil {
			t.Fatal(err)
		}
		if srv.Metric(t, "derp_current_connections") == 1 {
			break // the stalled receiver was cut off; the sender remains
		}
		if time.Now().After(deadline) {
			t.Fatal("stalled receiver still connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if srv.Kind == harness.Derpd {
		if n := srv.Metric(t, "derp_sclient_write_timeouts"); n < 1 {
			t.Fatalf("write timeouts = %v", n)
		}
	}
	// (Not drained here: with the tiny receive window the kernel would
	// trickle the megabytes already queued for minutes.)
	sender.Sync(t)
}
