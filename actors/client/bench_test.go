package client

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// BenchmarkOutboxHandoff measures handing a packet to a destination's
// outbox and the writer batching it onto a real socket, whose far end
// discards everything.
func BenchmarkOutboxHandoff(b *testing.B) {
	e := newOutboxEnv(b, OutboxConfig{})
	defer e.ob.Close()
	go io.Copy(io.Discard, e.far)
	e.ob.Start()
	src := testKey(1)
	payload := make([]byte, 1280)
	var w actors.Waiter
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		p := wire.NewPacket(len(payload))
		copy(p.Payload(), payload)
		p.SetSource(src)
		e.ob.SendPacket(p, &w)
	}
}

// BenchmarkRelay measures the whole server path for one 1280-byte packet:
// a client's SendPacket frames are read, routed and written to the
// receiver as RecvPacket frames. Allocations are counted process-wide, so
// "0 allocs/op" means the steady-state relay allocates nothing per packet.
func BenchmarkRelay(b *testing.B) { benchmarkRelay(b) }

// BenchmarkRelayRecording is BenchmarkRelay with derpd -record on: every
// packet and every actor message is journaled (to a file in the test's
// temporary directory), payloads by size only.
func BenchmarkRelayRecording(b *testing.B) {
	rec, err := journal.Create(filepath.Join(b.TempDir(), "relay.journal"), journal.RecorderConfig{Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer rec.Close()
	benchmarkRelay(b, actors.WithRecorder(rec))
}

func benchmarkRelay(b *testing.B, opts ...actors.Option) {
	s := startTestServer(b, Config{}, opts...)
	a := s.connect(b, clientInfo)
	rcv := s.connect(b, clientInfo)
	const payload = 1280
	frameLen := wire.HeaderLen + wire.KeyLen + payload
	frame := wire.AppendHeader(nil, wire.FrameSendPacket, uint32(wire.KeyLen+payload))
	frame = append(frame, rcv.pub[:]...)
	frame = append(frame, make([]byte, payload)...)
	const perWrite = 32
	batch := make([]byte, 0, perWrite*frameLen)
	for range perWrite {
		batch = append(batch, frame...)
	}

	// The receiver counts bytes until every packet sent has been either
	// received or dropped. On two busy cores the receiver can go
	// unscheduled long enough to look stalled, and then the relay drops
	// for it, as it should; the benchmark must not wait for those.
	dropped := func() int64 {
		return s.sys.Stats.Dropped(actors.DropQueueHead, actors.KindOther) + s.sys.Stats.Dropped(actors.DropQueueTail, actors.KindOther)
	}
	var got sync.WaitGroup
	want := make(chan int64, 1)
	got.Add(1)
	go func() {
		defer got.Done()
		var n, target int64 = 0, -1
		buf := make([]byte, 256<<10)
		for {
			select {
			case target = <-want:
			default:
			}
			if target >= 0 && n+dropped()*int64(frameLen) >= target {
				return
			}
			rcv.conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			k, err := rcv.conn.Read(buf)
			n += int64(k)
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
	// Warm the pools before measuring.
	warm := 64
	for range warm {
		a.conn.Write(batch)
	}
	b.SetBytes(payload)
	b.ReportAllocs()
	b.ResetTimer()
	sent := 0
	for sent < b.N {
		k := min(perWrite, b.N-sent)
		if _, err := a.conn.Write(batch[:k*frameLen]); err != nil {
			b.Fatal(err)
		}
		sent += k
	}
	want <- int64(sent+warm*perWrite) * int64(frameLen)
	got.Wait()
	b.StopTimer()
	b.ReportMetric(float64(dropped())/float64(b.N), "drops/op")
}
