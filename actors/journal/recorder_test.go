package journal

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/rs/zerolog"
)

// syncBuffer is a bytes.Buffer the recorder's writer goroutine may write
// while the test reads it after Close.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

type nopActor struct{}

func (nopActor) Receive(actor.Context) {}

// An actor spawned with PropsFor records every message its mailbox hands
// it, stamped with the System's (fake) clock and named by its id; a
// reader's packets go to a buffer of their own.
func TestRecorderSystem(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	clock := actors.NewFakeClock(start)
	var out syncBuffer
	rec, err := NewRecorder(&out, RecorderConfig{Clock: clock, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	d := actors.NewStepDispatcher()
	sys := actors.NewSystem(zerolog.Nop(), actors.WithDispatcher(d), actors.WithClock(clock), actors.WithRecorder(rec))
	props, _ := sys.PropsFor(actors.ActorClient, 7, func() actor.Actor { return nopActor{} })
	pid := sys.Root.Spawn(props)
	d.RunUntilIdle()

	clock.Advance(5 * time.Millisecond)
	sys.Send(pid, &actors.SendPeerGone{Peer: testKey(1)})
	sys.Send(pid, &actors.CloseConn{Reason: "test"})
	d.RunUntilIdle()
	clock.Advance(5 * time.Millisecond)
	pkts := rec.Packets(7)
	pkts.RecordPacket(clock.Now().UnixNano(), 7, testKey(1), testKey(2), []byte("hello"), false, false)
	pkts.Close()
	sys.Root.Stop(pid)
	d.RunUntilIdle()
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if rec.Stopped() {
		t.Fatal("a journal closed under its limit says it stopped at the limit")
	}

	r, recs, err := readAll(out.Bytes())
	if err != io.EOF {
		t.Fatalf("read: %v", err)
	}
	if !r.Header().Start.Equal(start) || r.Header().Payloads {
		t.Errorf("header %+v", r.Header())
	}
	type seen struct {
		kind Kind
		at   time.Duration
		typ  MsgType
	}
	var got []seen
	for _, x := range recs {
		if x.Target != (Target{Kind: actors.ActorClient, ID: 7}) {
			t.Errorf("record %+v: target %+v", x, x.Target)
		}
		got = append(got, seen{x.Kind, x.At, x.Type})
	}
	ms := time.Millisecond
	want := []seen{
		{KindMessage, 0, TypeStarted},
		{KindMessage, 5 * ms, TypeSendPeerGone},
		{KindMessage, 5 * ms, TypeCloseConn},
		{KindMessage, 10 * ms, TypeStopping},
		{KindMessage, 10 * ms, TypeStopped},
	}
	var msgs []seen
	var pkt *Record
	for i, x := range got {
		if x.kind == KindPacket {
			pkt = recs[i]
			continue
		}
		msgs = append(msgs, x)
	}
	if !equalSeen(msgs, want) {
		t.Errorf("messages %v, want %v", msgs, want)
	}
	if pkt == nil || pkt.At != 10*ms || pkt.Packet.SrcConn != 7 || pkt.Packet.Size != 5 || pkt.Packet.Payload != nil || pkt.Packet.Dst != testKey(2) {
		t.Errorf("packet record %+v", pkt)
	}
	// Seq orders records across buffers.
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq == recs[i-1].Seq {
			t.Errorf("two records of seq %d", recs[i].Seq)
		}
	}
}

func equalSeen[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// At the byte limit recording stops, says so once in the log and in a
// note, and the journal stays whole.
func TestRecorderMaxBytes(t *testing.T) {
	var out syncBuffer
	var logs bytes.Buffer
	clock := actors.NewFakeClock(time.Unix(1_700_000_000, 0))
	rec, err := NewRecorder(&out, RecorderConfig{MaxBytes: 3 * ChunkBytes, Payloads: true, Clock: clock, Log: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	pkts := rec.Packets(3)
	payload := make([]byte, 1000)
	sent := 0
	for ; sent < 1000; sent++ {
		pkts.RecordPacket(clock.Now().UnixNano(), 3, testKey(1), testKey(2), payload, false, false)
	}
	if !rec.Stopped() {
		t.Fatal("recording did not stop at the limit")
	}
	pkts.Close()
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	if !rec.Stopped() {
		t.Fatal("closing forgot that recording stopped at the limit")
	}
	_, recs, err := readAll(out.Bytes())
	if err != io.EOF {
		t.Fatalf("read: %v", err)
	}
	last := recs[len(recs)-1]
	if last.Kind != KindNote || !strings.Contains(last.Note, "recording stopped at the limit") {
		t.Fatalf("last record %+v, want the note", last)
	}
	packets := len(recs) - 1
	if packets == 0 || packets >= sent || len(out.Bytes()) > 4*ChunkBytes {
		t.Errorf("%d packets in %d bytes", packets, len(out.Bytes()))
	}
	if n := strings.Count(logs.String(), "recording stopped"); n != 1 {
		t.Errorf("%d log lines about stopping:\n%s", n, logs.String())
	}
	for _, r := range recs[:packets] {
		if len(r.Packet.Payload) != 1000 {
			t.Fatalf("payload of %d bytes", len(r.Packet.Payload))
		}
	}
}

// Recording a packet allocates nothing but the buffer's amortized growth.
func TestRecordPacketAllocs(t *testing.T) {
	rec, err := NewRecorder(io.Discard, RecorderConfig{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	pkts := rec.Packets(1)
	payload := make([]byte, 1200)
	src, dst := testKey(1), testKey(2)
	allocs := testing.AllocsPerRun(20000, func() {
		pkts.RecordPacket(time.Now().UnixNano(), 1, src, dst, payload, false, false)
	})
	if allocs > 0.02 {
		t.Errorf("%.3f allocations per packet", allocs)
	}
}

// BenchmarkRecordPacket is what -record adds to a reader per packet:
// stamping, encoding into the connection's buffer and, amortized, handing
// full chunks to the writer (here writing to io.Discard).
func BenchmarkRecordPacket(b *testing.B) {
	rec, err := NewRecorder(io.Discard, RecorderConfig{Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer rec.Close()
	pkts := rec.Packets(1)
	payload := make([]byte, 1280)
	src, dst := testKey(1), testKey(2)
	at := time.Now().UnixNano() // the reader's stamp, read once per socket read
	b.ReportAllocs()
	for b.Loop() {
		pkts.RecordPacket(at, 1, src, dst, payload, false, false)
	}
}

// BenchmarkRecordMessage is what -record adds to an actor per message.
func BenchmarkRecordMessage(b *testing.B) {
	rec, err := NewRecorder(io.Discard, RecorderConfig{Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer rec.Close()
	buf := rec.NewBuffer(Target{Kind: actors.ActorRegistry})
	msg := &actors.Unregister{Conn: &actors.Conn{ID: 12345}}
	b.ReportAllocs()
	for b.Loop() {
		buf.Message(msg)
	}
}
