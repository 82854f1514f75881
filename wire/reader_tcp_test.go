package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
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
	allocs := testing.AllocsPerRun(n, func() {
		if err := relayOne(rd, w, NodePublic{2}); err != nil {
			t.Fatal(err)
		}
		if w.Buffered() > 48<<10 {
			w.Flush()
		}
	})
	// Parking in the poller may allocate rarely inside the runtime; the
	// per-packet path itself must not.
	if allocs >= 0.01 {
		t.Fatalf("%v allocations per packet over TCP", allocs)
	}
}
