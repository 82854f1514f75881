package replay

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/wire"
)

// builder writes a journal in memory, as a recorder would have.
type builder struct {
	t   *testing.T
	buf bytes.Buffer
	w   *journal.Writer
	seq uint64
	at  time.Duration
}

var testStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newBuilder(t *testing.T) *builder {
	t.Helper()
	b := &builder{t: t}
	w, err := journal.NewWriter(&b.buf, journal.Header{Start: testStart})
	if err != nil {
		t.Fatal(err)
	}
	b.w = w
	return b
}

func (b *builder) write(r *journal.Record) {
	b.t.Helper()
	b.seq++
	b.at += time.Millisecond
	r.Seq, r.At = b.seq, b.at
	if err := b.w.Write(r); err != nil {
		b.t.Fatal(err)
	}
}

var toRegistry = journal.Target{Kind: actors.ActorRegistry}

func (b *builder) toRegistry(msg any) {
	b.write(&journal.Record{Kind: journal.KindMessage, Target: toRegistry, Msg: msg})
}

func (b *builder) toClient(c *actors.Conn, msg any) {
	b.write(&journal.Record{Kind: journal.KindMessage, Target: journal.Target{Kind: actors.ActorClient, ID: c.ID}, Msg: msg})
}

func (b *builder) packet(from *actors.Conn, dst wire.NodePublic, size int) {
	b.write(&journal.Record{Kind: journal.KindPacket, Target: journal.Target{Kind: actors.ActorClient, ID: from.ID},
		Packet: journal.PacketRecord{SrcConn: from.ID, Src: from.Key, Dst: dst, Size: size}})
}

func (b *builder) bytes() []byte {
	b.t.Helper()
	if err := b.w.Close(); err != nil {
		b.t.Fatal(err)
	}
	return b.buf.Bytes()
}

func key(i byte) wire.NodePublic { return wire.NodePublic{0: i, 31: 0x5a} }

func conn(id uint64, k byte) *actors.Conn { return &actors.Conn{ID: id, Key: key(k), Since: testStart} }

// pairJournal: a and b connect, a sends b n packets of size bytes (b's
// outbox rings Delivered after the first), a leaves (b hears PeerGone),
// then b. The live registry's frames to the clients are in it too.
func pairJournal(t *testing.T, n, size int) []byte {
	b := newBuilder(t)
	a, c := conn(1, 1), conn(2, 2)
	for _, x := range []*actors.Conn{a, c} {
		b.toRegistry(&actors.Register{Conn: x})
		b.toClient(x, &actors.Registered{})
	}
	for i := range n {
		b.packet(a, c.Key, size)
		if i == 0 {
			b.toRegistry(&actors.Delivered{Receiver: c, Sources: []actors.DeliveredSource{{Source: a.Key}}})
		}
	}
	b.toRegistry(&actors.Unregister{Conn: a})
	b.toClient(c, &actors.SendPeerGone{Peer: a.Key, Reason: wire.PeerGoneDisconnected})
	b.toRegistry(&actors.Unregister{Conn: c})
	return b.bytes()
}

func run(t *testing.T, data []byte, opts Options) *Report {
	t.Helper()
	jr, err := journal.Open(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(jr, opts)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestPairReplay(t *testing.T) {
	rep := run(t, pairJournal(t, 50, 100), Options{Max: true})
	if rep.PacketsDelivered != 50 || rep.BytesDelivered != 5000 || rep.PacketsDropped != 0 {
		t.Errorf("delivered %d packets (%d bytes), dropped %d; want 50 (5000), 0", rep.PacketsDelivered, rep.BytesDelivered, rep.PacketsDropped)
	}
	if rep.Inputs != 5 || rep.Messages != 5 || rep.Outputs != 3 {
		t.Errorf("inputs %d, messages %d, outputs %d; want 5, 5, 3", rep.Inputs, rep.Messages, rep.Outputs)
	}
	want := ClientFrames{Registered: 2, PeerGone: map[string]int64{wire.PeerGoneDisconnected.String(): 1}}
	if !reflect.DeepEqual(rep.Recorded, want) || !reflect.DeepEqual(rep.Produced, want) {
		t.Errorf("recorded %+v, produced %+v; want both %+v", rep.Recorded, rep.Produced, want)
	}
	if rep.Latency.Samples != rep.Messages {
		t.Errorf("%d latency samples for %d messages fed", rep.Latency.Samples, rep.Messages)
	}
}

// A packet is routed with the routes the registry has published by the
// time the packet was recorded: a replay that routed before the registry
// took in the Register would drop it.
func TestPacketAfterRegisterIsDelivered(t *testing.T) {
	for _, d := range []string{DispatchStep, DispatchDefault} {
		rep := run(t, pairJournal(t, 1, 10), Options{Max: true, Dispatcher: d, Batch: 1 << 20})
		if rep.PacketsDelivered != 1 || rep.PacketsDropped != 0 {
			t.Errorf("%s dispatcher: delivered %d, dropped %d; want 1, 0", d, rep.PacketsDelivered, rep.PacketsDropped)
		}
	}
}

func TestUnknownDestination(t *testing.T) {
	b := newBuilder(t)
	a := conn(1, 1)
	b.toRegistry(&actors.Register{Conn: a})
	b.packet(a, key(99), 30) // nobody has key 99
	rep := run(t, b.bytes(), Options{Max: true})
	if got := rep.DroppedByReason[actors.DropUnknownDest.String()]; got != 1 || rep.PacketsDropped != 1 {
		t.Errorf("unknown_dest drops %d, all drops %d; want 1, 1 (%v)", got, rep.PacketsDropped, rep.DroppedByReason)
	}
	if rep.PacketsDelivered != 0 {
		t.Errorf("delivered %d; want 0", rep.PacketsDelivered)
	}
}

func TestScale(t *testing.T) {
	data := pairJournal(t, 20, 64)
	one := run(t, data, Options{Max: true})
	ten := run(t, data, Options{Max: true, Scale: 10})
	if ten.PacketsDelivered != 10*one.PacketsDelivered || one.PacketsDelivered != 20 {
		t.Errorf("delivered %d at scale 10, %d at scale 1; want 200, 20", ten.PacketsDelivered, one.PacketsDelivered)
	}
	if ten.Receivers != 10 {
		t.Errorf("%d connections received packets at scale 10; want 10, each clone of the receiver", ten.Receivers)
	}
	if ten.PacketsDropped != 0 {
		t.Errorf("dropped %d at scale 10 (clones sent to keys that are not their peers' clones?)", ten.PacketsDropped)
	}
	// Every clone's receiver heard from its own sender, and hears it leave.
	if got := ten.Produced.PeerGone[wire.PeerGoneDisconnected.String()]; got != 10 {
		t.Errorf("PeerGone produced at scale 10: %d; want 10", got)
	}
	if ten.Produced.Registered != 20 {
		t.Errorf("Registered produced at scale 10: %d; want 20", ten.Produced.Registered)
	}
}

func TestCloneKeys(t *testing.T) {
	k := key(7)
	seen := map[wire.NodePublic]bool{k: true}
	for i := 1; i < 100; i++ {
		c := CloneKey(k, i)
		if seen[c] {
			t.Fatalf("clone %d of %v repeats a key", i, k)
		}
		seen[c] = true
		if CloneKey(k, i) != c {
			t.Fatalf("clone %d of %v differs between calls", i, k)
		}
	}
}

// churnJournal is a busier journal for the determinism test: duplicate
// connections, a watcher, packets to keys that come and go, a ClosePeer.
func churnJournal(t *testing.T) []byte {
	b := newBuilder(t)
	var conns []*actors.Conn
	mesh := &actors.Conn{ID: 1000, Key: key(200), CanMesh: true, Since: testStart}
	b.toRegistry(&actors.Register{Conn: mesh})
	b.toRegistry(&actors.WatchConns{Conn: mesh})
	for i := range 40 {
		c := conn(uint64(i+1), byte(i%30)) // keys 0-9 have two connections
		conns = append(conns, c)
		b.toRegistry(&actors.Register{Conn: c})
	}
	for i := range 400 {
		src, dst := conns[i%40], conns[(i*7+3)%40]
		b.packet(src, dst.Key, 10+i%50)
		if i%17 == 0 {
			b.packet(src, key(150), 5) // never registered
		}
		if i%9 == 0 {
			b.toRegistry(&actors.Delivered{Receiver: dst, Sources: []actors.DeliveredSource{{Source: src.Key}}})
		}
		if i%13 == 0 {
			b.toRegistry(&actors.Activity{Conn: conns[i%10]})
		}
		if i%50 == 49 {
			b.toRegistry(&actors.Unregister{Conn: conns[i/50]})
		}
	}
	b.toRegistry(&actors.ClosePeer{From: mesh, Target: key(20)})
	for _, c := range conns {
		b.toRegistry(&actors.Unregister{Conn: c})
	}
	return b.bytes()
}

func TestMaxReplaysAgree(t *testing.T) {
	data := churnJournal(t)
	for _, scale := range []int{1, 3} {
		first := run(t, data, Options{Max: true, Scale: scale, Batch: 16}).Counts()
		second := run(t, data, Options{Max: true, Scale: scale, Batch: 16}).Counts()
		if !reflect.DeepEqual(first, second) {
			t.Errorf("scale %d: two -max replays differ:\n%+v\n%+v", scale, first, second)
		}
		if first.PacketsDelivered == 0 || first.PacketsDropped == 0 || first.Produced.Presence == 0 {
			t.Errorf("scale %d: the journal exercises too little: %+v", scale, first)
		}
	}
}

func TestTruncatedJournal(t *testing.T) {
	data := pairJournal(t, 10, 10)
	cut := data[:len(data)-7] // inside the last records
	jr, err := journal.Open(bytes.NewReader(cut))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(jr, Options{Max: true})
	if err == nil || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("replay of a cut journal: %v; want an error naming the offset", err)
	}
	if rep == nil || rep.PacketsDelivered != 10 {
		t.Errorf("report of the records before the cut: %+v; want its 10 packets delivered", rep)
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.observe(time.Duration(i) * time.Microsecond)
	}
	l := h.latency()
	// Buckets are about 9% wide and report their lower bound.
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"p50", l.P50, 500}, {"p90", l.P90, 900}, {"p99", l.P99, 990}, {"max", l.Max, 1000}} {
		if c.got > c.want || c.got < c.want*0.9 {
			t.Errorf("%s = %.1fµs; want within 10%% below %.0f", c.name, c.got, c.want)
		}
	}
}

// A live recording reaches the file buffer by buffer, so its records are
// out of Seq order there; the replay puts them back.
func TestRecordsPutBackInSeqOrder(t *testing.T) {
	ordered := pairJournal(t, 30, 10)
	jr, err := journal.Open(bytes.NewReader(ordered))
	if err != nil {
		t.Fatal(err)
	}
	var recs []*journal.Record
	for {
		r, err := jr.Next()
		if err != nil {
			break
		}
		recs = append(recs, r)
	}
	// The registry's records in a chunk of their own after everyone
	// else's, as when its buffer is flushed last.
	var others, reg []*journal.Record
	for _, r := range recs {
		if r.Kind == journal.KindMessage && r.Target.Kind == actors.ActorRegistry {
			reg = append(reg, r)
		} else {
			others = append(others, r)
		}
	}
	var buf bytes.Buffer
	w, err := journal.NewWriter(&buf, journal.Header{Start: testStart})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range append(others, reg...) {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := run(t, ordered, Options{Max: true}).Counts()
	got := run(t, buf.Bytes(), Options{Max: true}).Counts()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("replay of the records out of order:\n%+v\nin order:\n%+v", got, want)
	}
}

func TestOrdererGap(t *testing.T) {
	o := newOrderer()
	var got []uint64
	feed := func(r *journal.Record) { got = append(got, r.Seq) }
	push := func(seq uint64, at time.Duration) { o.push(&journal.Record{Seq: seq, At: at}, feed) }
	push(1, 0)
	push(3, 0) // 2 is missing
	push(4, time.Millisecond)
	if !reflect.DeepEqual(got, []uint64{1}) {
		t.Fatalf("fed %v before the gap aged; want [1]", got)
	}
	push(5, reorderWindow+2*time.Millisecond) // the gap is older than the window now
	if !reflect.DeepEqual(got, []uint64{1, 3, 4, 5}) {
		t.Fatalf("fed %v; want [1 3 4 5]", got)
	}
	push(2, 0) // too late to go in order
	o.flush(feed)
	if o.late != 1 || !reflect.DeepEqual(got, []uint64{1, 3, 4, 5, 2}) {
		t.Errorf("fed %v, %d late; want [1 3 4 5 2], 1", got, o.late)
	}
}

// A connection hands its flow tally to the flows actor just before it
// registers, so its FlowTallyStarted may come first in the journal.
func TestFlowTallyBeforeRegister(t *testing.T) {
	b := newBuilder(t)
	a, c := conn(1, 1), conn(2, 2)
	toFlows := journal.Target{Kind: actors.ActorFlows}
	for _, x := range []*actors.Conn{a, c} {
		b.write(&journal.Record{Kind: journal.KindMessage, Target: toFlows, Msg: &actors.FlowTallyStarted{Tally: actors.NewFlowTally(x.ID, 0)}})
		b.toRegistry(&actors.Register{Conn: x})
	}
	b.packet(a, c.Key, 10)
	b.write(&journal.Record{Kind: journal.KindMessage, Target: toFlows, Msg: &actors.FlowTallyEnded{Tally: actors.NewFlowTally(a.ID, 0)}})
	rep := run(t, b.bytes(), Options{Max: true})
	if rep.Unknown != 0 {
		t.Errorf("%d inputs named unknown connections; want 0", rep.Unknown)
	}
	// Started, two tallies handed over, one ended.
	if got := rep.PerKind[string(actors.ActorFlows)].Processed; got != 4 {
		t.Errorf("flows actor processed %d messages; want 4", got)
	}
}

// Packets for a key a mesh link announces go to the link; a mesh peer's
// forwarded packet for a key not connected here is unknown_dest_on_fwd
// (a packet crosses at most one mesh hop); after the
// link goes down its keys are unknown. The mesh peer's own connection is
// not cloned at -scale.
func TestMeshRouting(t *testing.T) {
	b := newBuilder(t)
	a := conn(1, 1)
	peer := &actors.Conn{ID: 2, Key: key(200), CanMesh: true, Since: testStart}
	remote := key(50) // connected to the peer server
	b.toRegistry(&actors.Register{Conn: a})
	b.toRegistry(&actors.Register{Conn: peer})
	b.toRegistry(&actors.MeshLinkUp{Link: 7, Peer: "peer.example", PeerKey: key(200)})
	b.toRegistry(&actors.MeshUpdate{Link: 7, Updates: []actors.MeshPeerUpdate{{Key: remote, Present: true}}})
	b.packet(a, remote, 10) // forwarded to the link
	b.write(&journal.Record{Kind: journal.KindPacket, Target: journal.Target{Kind: actors.ActorClient, ID: peer.ID},
		Packet: journal.PacketRecord{SrcConn: peer.ID, Src: remote, Dst: a.Key, Size: 20, Forwarded: true}}) // delivered to a
	b.write(&journal.Record{Kind: journal.KindPacket, Target: journal.Target{Kind: actors.ActorClient, ID: peer.ID},
		Packet: journal.PacketRecord{SrcConn: peer.ID, Src: key(51), Dst: remote, Size: 20, Forwarded: true}}) // never forwarded twice
	b.toRegistry(&actors.MeshLinkDown{Link: 7})
	b.packet(a, remote, 10) // gone with the link
	data := b.bytes()
	for _, scale := range []int{1, 4} {
		rep := run(t, data, Options{Max: true, Scale: scale})
		k := int64(scale)
		if rep.PacketsForwarded != k || rep.PacketsDelivered != k {
			t.Errorf("scale %d: forwarded %d, delivered %d; want %d, %d", scale, rep.PacketsForwarded, rep.PacketsDelivered, k, k)
		}
		if rep.DroppedByReason["unknown_dest_on_fwd"] != k || rep.DroppedByReason["unknown_dest"] != k {
			t.Errorf("scale %d: dropped %v; want %d unknown_dest_on_fwd and %d unknown_dest", scale, rep.DroppedByReason, k, k)
		}
		// a and its clones, and the peer's single connection.
		if rep.Produced.Registered != k+1 {
			t.Errorf("scale %d: %d Registered; want %d", scale, rep.Produced.Registered, k+1)
		}
	}
}

// A paced replay (here 1000x the recorded pace of a journal a few tens
// of milliseconds long) delivers and produces what a -max replay does.
func TestPacedReplay(t *testing.T) {
	data := pairJournal(t, 20, 10)
	paced := run(t, data, Options{Speed: 1000})
	fast := run(t, data, Options{Max: true})
	if paced.Mode != "paced" || paced.Dispatcher != DispatchDefault {
		t.Errorf("paced replay ran as %s on the %s dispatcher", paced.Mode, paced.Dispatcher)
	}
	if paced.PacketsDelivered != fast.PacketsDelivered || !reflect.DeepEqual(paced.Produced, fast.Produced) {
		t.Errorf("paced: delivered %d, produced %+v; -max: %d, %+v", paced.PacketsDelivered, paced.Produced, fast.PacketsDelivered, fast.Produced)
	}
}

func TestConnIndex(t *testing.T) {
	var x connIndex
	a, b, c := []*simConn{{}}, []*simConn{{}, {}}, []*simConn{{}}
	x.set(3, a)
	x.set(denseConnIDs+5, b) // beyond the slice
	x.set(1, c)
	for _, tc := range []struct {
		id   uint64
		want []*simConn
	}{{3, a}, {denseConnIDs + 5, b}, {1, c}, {2, nil}, {4, nil}, {denseConnIDs, nil}} {
		if got := x.get(tc.id); len(got) != len(tc.want) || (len(got) > 0 && got[0] != tc.want[0]) {
			t.Errorf("get(%d) = %v; want %v", tc.id, got, tc.want)
		}
	}
}

// The Reader checks a journal's framing; a packet no connection could
// have carried is the replay's to refuse, with an error, not a panic.
func TestOversizePacketRecord(t *testing.T) {
	b := newBuilder(t)
	a := conn(1, 1)
	b.toRegistry(&actors.Register{Conn: a})
	b.packet(a, a.Key, wire.MaxPacketSize+1)
	jr, err := journal.Open(bytes.NewReader(b.bytes()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(jr, Options{Max: true})
	if err == nil || !strings.Contains(err.Error(), "record 2") {
		t.Errorf("replay of a packet of %d bytes: %v; want an error naming record 2", wire.MaxPacketSize+1, err)
	}
}
