package mesh

import (
	"bytes"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

func packet(src wire.NodePublic, payload []byte) *wire.Packet {
	p := wire.NewPacket(len(payload))
	copy(p.Payload(), payload)
	p.SetSource(src)
	return p
}

// Forwarded packets leave as ForwardPacket frames with the sender's key,
// the destination and the payload, in order.
func TestOutboxWritesForwardPackets(t *testing.T) {
	sys := actors.NewSystem(zerolog.Nop())
	ours, theirs := net.Pipe()
	sock := &stampedConn{Conn: ours}
	o := newOutbox(sys, sock, sock, 0)
	go o.run()
	src, dst := testKey(1), testKey(2)
	for i := range 3 {
		o.ForwardPacket(dst, packet(src, []byte{'p', byte('0' + i)}), nil)
	}
	rd := wire.NewReader(theirs, nil, 1<<20)
	for i := range 3 {
		typ, n, err := rd.ReadHeader()
		if err != nil || typ != wire.FrameForwardPacket {
			t.Fatalf("frame %d: %v %v", i, typ, err)
		}
		body := make([]byte, n)
		if err := rd.ReadFull(body); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body[:32], src[:]) || !bytes.Equal(body[32:64], dst[:]) || string(body[64:]) != string([]byte{'p', byte('0' + i)}) {
			t.Fatalf("frame %d body %x", i, body)
		}
	}
	o.close()
	<-o.finished
	if got := o.forwarded.Load(); got != 3 {
		t.Fatalf("forwarded = %d, want 3", got)
	}
	theirs.Close()
}

// A peer that stops reading costs its link's queue and no more: with the
// writer stuck on the socket, senders never wait (the bubble's clock does
// not move while they send) and every packet beyond the queue is dropped
// and counted; when the link goes, the queued ones are counted too.
func TestOutboxStalledPeerNeverHoldsSenders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := actors.NewSystem(zerolog.Nop())
		ours, theirs := net.Pipe() // theirs is not read
		sock := &stampedConn{Conn: ours}
		o := newOutbox(sys, sock, sock, 0)
		go o.run()
		src, dst := testKey(1), testKey(2)
		o.ForwardPacket(dst, packet(src, make([]byte, 1200)), nil)
		synctest.Wait() // the writer is blocked writing the first packet
		// Blocked for a while: longer than a healthy peer takes. (The
		// bubble's clock: the sleep is instant, and nothing else runs.)
		time.Sleep(2 * linkStalledAfter)

		const n = 3000
		var w actors.Waiter
		start := time.Now()
		for range n {
			o.ForwardPacket(dst, packet(src, make([]byte, 1200)), &w)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("senders waited %v on a stalled link", d)
		}
		if w.Waits != 0 {
			t.Fatalf("senders waited %d times on a stalled link", w.Waits)
		}
		if got, want := o.dropped[DropQueueFull].Load(), int64(n-DefaultQueueDepth); got != want {
			t.Fatalf("queue_full drops = %d, want %d", got, want)
		}
		if got := o.depth(); got != DefaultQueueDepth {
			t.Fatalf("queue depth %d, want %d", got, DefaultQueueDepth)
		}
		if got := sys.Stats.Dropped(actors.DropQueueHead, actors.KindOther); got != n-DefaultQueueDepth {
			t.Fatalf("derp_packets_dropped{queue_head} = %d", got)
		}

		// The link breaks: the packet in the write is a write error,
		// the queued ones are link_down, and later sends are dropped.
		theirs.Close()
		o.close()
		<-o.finished
		o.ForwardPacket(dst, packet(src, []byte("late")), &w)
		if got := o.dropped[DropWriteError].Load(); got != 1 {
			t.Fatalf("write_error drops = %d, want 1", got)
		}
		if got := o.dropped[DropLinkDown].Load(); got != DefaultQueueDepth+1 {
			t.Fatalf("link_down drops = %d, want %d", got, DefaultQueueDepth+1)
		}
		if o.err() == nil {
			t.Fatal("the write error was not kept for the session to report")
		}
	})
}

// A writer that is taking data but is behind (short of CPU) makes a
// sender wait a moment for room rather than drop: that is how TCP pushes
// back on senders under overload.
func TestOutboxDrainingWriterMakesSendersWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := actors.NewSystem(zerolog.Nop())
		o := newOutbox(sys, nil, &stampedConn{}, 1)
		src, dst := testKey(1), testKey(2)
		o.ForwardPacket(dst, packet(src, []byte("a")), nil) // fills the queue; no writer runs
		go func() {
			time.Sleep(actors.MaxQueueWait / 2) // the bubble's clock
			it := <-o.data                      // the writer takes one
			it.p.Release()
		}()
		var w actors.Waiter
		o.ForwardPacket(dst, packet(src, []byte("b")), &w)
		if w.Waits != 1 || w.Timeouts != 0 || o.depth() != 1 {
			t.Fatalf("waits %d timeouts %d depth %d, want one wait that found room", w.Waits, w.Timeouts, o.depth())
		}
		if got := o.dropped[DropQueueFull].Load(); got != 0 {
			t.Fatalf("dropped %d", got)
		}
	})
}

// Once a link has been seen stalled it stays congested, dropping rather
// than holding senders, until its queue has drained: a slow peer's socket
// takes a little data now and then, and every write it accepts must not
// start another round of senders waiting for room.
func TestOutboxCongestionLastsUntilTheQueueDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := actors.NewSystem(zerolog.Nop())
		ours, theirs := net.Pipe()
		sock := &stampedConn{Conn: ours}
		o := newOutbox(sys, sock, sock, 0)
		go o.run()
		src, dst := testKey(1), testKey(2)
		send := func(n int, w *actors.Waiter) {
			for range n {
				o.ForwardPacket(dst, packet(src, make([]byte, 1200)), w)
			}
		}
		send(1, nil)
		synctest.Wait()
		time.Sleep(2 * linkStalledAfter) // the bubble's clock: instant
		var w actors.Waiter
		send(DefaultQueueDepth+1, &w) // fills the queue, then finds it stalled
		if !o.congested.Load() || w.Waits != 0 {
			t.Fatalf("congested %v after %d waits, want congested and no waits", o.congested.Load(), w.Waits)
		}

		// The peer takes one frame: the writer's write completes, it takes
		// its next batch and blocks again, at once, so not stalled now.
		rd := wire.NewReader(theirs, nil, 1<<20)
		if _, n, err := rd.ReadHeader(); err != nil || rd.Discard(int(n)) != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if o.stalled() {
			t.Fatal("a write that just began counts as stalled")
		}
		send(DefaultQueueDepth, &w) // the queue fills again
		if w.Waits != 0 {
			t.Fatalf("senders waited %d times on a congested link", w.Waits)
		}

		// The peer reads everything: the queue drains and the link is
		// no longer congested.
		go func() {
			for {
				if _, n, err := rd.ReadHeader(); err != nil || rd.Discard(int(n)) != nil {
					return
				}
			}
		}()
		synctest.Wait()
		if o.congested.Load() || o.depth() != 0 {
			t.Fatalf("congested %v with %d queued after the peer caught up", o.congested.Load(), o.depth())
		}
		o.close()
		theirs.Close()
		<-o.finished
	})
}
