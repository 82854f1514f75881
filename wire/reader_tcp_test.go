package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

func loopbackPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestReaderOverTCPUsesRawReadsAndIdlesWithoutBuffer(t *testing.T) {
	client, server := loopbackPair(t)
	rd := NewReader(server, nil, 1<<20)
	if rd.raw == nil {
		t.Fatal("TCP connection did not get the raw read path")
	}
	bodies := [][]byte{[]byte("a"), bytes.Repeat([]byte{1}, 5000), bytes.Repeat([]byte{2}, MaxPacketSize), {}}
	stream := frames(t, bodies...)
	go func() {
		// Odd chunk sizes, so frames straddle reads.
		for len(stream) > 0 {
			n := min(len(stream), 777)
			client.Write(stream[:n])
			stream = stream[n:]
		}
	}()
	for i, want := range bodies {
		_, n, err := rd.ReadHeader()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		got := make([]byte, n)
		if err := rd.ReadFull(got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("frame %d body: %v", i, err)
		}
	}
	// Everything consumed: a read that has to wait gives the buffer back
	// first. A short deadline ends the wait (a deadline already past would
	// fail before any read is attempted).
	server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := rd.ReadHeader(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle read: %v, want a deadline error", err)
	}
	if rd.bufp != nil {
		t.Fatal("idle reader still holds its buffer")
	}
}

func TestReaderOverTCPSeesPeerClose(t *testing.T) {
	client, server := loopbackPair(t)
	rd := NewReader(server, nil, 1<<20)
	client.Write(frames(t, []byte("last")))
	client.Close()
	_, n, err := rd.ReadHeader()
	if err != nil {
		t.Fatal(err)
	}
	rd.ReadFull(make([]byte, n))
	if _, _, err := rd.ReadHeader(); err != io.EOF {
		t.Fatalf("after close: %v, want io.EOF", err)
	}
	rd.Release()
}

func TestReaderOverTCPDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; `make test` runs this without it")
	}
	client, server := loopbackPair(t)
	var one bytes.Buffer
	w0 := NewWriter(&one, 0)
	w0.WriteSendPacket(NodePublic{1}, make([]byte, 1280))
	w0.Flush()
	const n = 3000
	go func() {
		batch := bytes.Repeat(one.Bytes(), 50)
		for i := 0; i < n+200; i += 50 {
			if _, err := client.Write(batch); err != nil {
				return
			}
		}
	}()
	rd := NewReader(server, nil, 1<<20)
	w := NewWriter(io.Discard, 0)
	for range 100 {
		relayOne(rd, w, NodePublic{2})
	}
	// Counted exactly (testing.AllocsPerRun rounds down to whole
	// allocations per run, which would hide up to one per packet).
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		if err := relayOne(rd, w, NodePublic{2}); err != nil {
			t.Fatal(err)
		}
		if w.Buffered() > 48<<10 {
			w.Flush()
		}
	}
	runtime.ReadMemStats(&after)
	// The sending goroutine and parking in the poller may allocate now
	// and then inside the runtime; the per-packet path itself must not.
	if allocs := after.Mallocs - before.Mallocs; allocs >= n/100 {
		t.Fatalf("%d allocations for %d packets over TCP", allocs, n)
	}
}

// gatedSource hands out data only when the test sends it, and reports the
// size of each read as it starts.
type gatedSource struct {
	reads chan int
	data  chan []byte
}

func (g *gatedSource) Read(p []byte) (int, error) {
	g.reads <- len(p)
	b, ok := <-g.data
	if !ok {
		return 0, io.EOF
	}
	return copy(p, b), nil
}

// On connections without a raw socket (TLS, WebSocket) an idle reader
// must wait without a pooled 64 KiB buffer, or 10,000 idle clients hold
// 640 MiB of buffers doing nothing; once bytes flow (a read fills all the
// room it had), the rest goes into a pooled buffer, many frames a read.
// (TestSilentReadersWithoutRawSourceHoldNoPooledBuffer covers the stalls.)
func TestIdleReaderWithoutRawSourceHoldsNoBuffer(t *testing.T) {
	src := &gatedSource{reads: make(chan int), data: make(chan []byte)}
	rd := NewReader(src, nil, 1<<20)
	var frame bytes.Buffer
	w := NewWriter(&frame, 0)
	w.WriteSendPacket(NodePublic{1}, make([]byte, 1280))
	w.Flush()

	done := make(chan error, 1)
	go func() {
		for range 2 {
			_, n, err := rd.ReadHeader()
			if err == nil {
				_, err = rd.ReadKey()
			}
			if err == nil {
				err = rd.Discard(int(n) - KeyLen)
			}
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range 2 {
		// The reader has nothing unread and is about to wait.
		if n := <-src.reads; n > smallLen {
			t.Fatalf("frame %d: idle reader waits with a %d-byte buffer", i, n)
		}
		if rd.bufp != nil {
			t.Fatalf("frame %d: idle reader still holds its pooled buffer", i)
		}
		b := frame.Bytes()
		src.data <- b[:smallLen]
		// The first bytes filled the wait's room: it reads the rest into
		// a pooled buffer.
		if n := <-src.reads; n < len(b)-smallLen {
			t.Fatalf("frame %d: second read offers %d bytes, want room for the rest", i, n)
		}
		src.data <- b[smallLen:]
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFrameBuffered(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b, 0)
	w.WriteSendPacket(NodePublic{1}, make([]byte, 100))
	w.WriteSendPacket(NodePublic{2}, make([]byte, 100))
	w.Flush()
	two := b.Bytes()
	one := len(two) / 2
	for _, c := range []struct {
		prefix []byte
		want   bool // after reading the first frame
	}{
		{two, true},                    // the second frame is whole
		{two[:len(two)-1], false},      // one byte short
		{two[:one+HeaderLen-1], false}, // not even its header
	} {
		rd := NewReader(bytes.NewReader(nil), c.prefix, 1<<20)
		if !rd.FrameBuffered() {
			t.Fatal("first frame is whole, FrameBuffered says no")
		}
		_, n, err := rd.ReadHeader()
		if err != nil {
			t.Fatal(err)
		}
		if err := rd.Discard(int(n)); err != nil {
			t.Fatal(err)
		}
		if got := rd.FrameBuffered(); got != c.want {
			t.Errorf("with %d of %d bytes buffered: FrameBuffered = %v, want %v", len(c.prefix), len(two), got, c.want)
		}
	}
}
