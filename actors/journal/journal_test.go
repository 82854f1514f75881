package journal

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

func testKey(b byte) (k wire.NodePublic) {
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

var testStart = time.Unix(1_700_000_000, 0)

// sampleMessages returns one message of every type the codec encodes, in
// an order a registry could see them, with the connection they name.
func sampleMessages() (*actors.Conn, []any) {
	c := &actors.Conn{
		ID:      7,
		Key:     testKey(1),
		Addr:    netip.MustParseAddrPort("[2001:db8::1]:41641"),
		Flags:   wire.PeerPresentFlags(3),
		CanMesh: true,
		Since:   time.Unix(0, 1_700_000_000_123_456_789),
	}
	tally := actors.NewFlowTally(7, 0)
	return c, []any{
		&actors.Register{Conn: c},
		&actors.Activity{Conn: c},
		&actors.WatchConns{Conn: c},
		&actors.ClosePeer{From: c, Target: testKey(2)},
		&actors.Delivered{Receiver: c, Sources: []actors.DeliveredSource{{Source: testKey(3)}, {Source: testKey(4), Forwarded: true}}},
		&actors.SendPeerGone{Peer: testKey(5), Reason: wire.PeerGoneReason(1)},
		&actors.SendPeerPresence{Updates: []actors.PeerPresence{
			{Peer: testKey(6), Present: true, Addr: netip.MustParseAddrPort("192.0.2.1:3478"), Flags: 1},
			{Peer: testKey(7)},
		}},
		&actors.Registered{},
		&actors.CloseConn{Reason: "server shutting down", Flush: true},
		&actors.SendRestarting{ReconnectIn: 2 * time.Second, TryFor: time.Minute},
		&actors.MeshLinkUp{Link: 9, Peer: "derp2.example:443", PeerKey: testKey(8)},
		&actors.MeshUpdate{Link: 9, Updates: []actors.MeshPeerUpdate{{Key: testKey(9), Present: true}, {Key: testKey(10)}}},
		&actors.MeshUpdateApplied{Link: 9, Keys: 1, Refused: 2, Unknown: true},
		&actors.MeshLinkDown{Link: 9},
		&actors.RegistryRestarted{},
		&actors.CloseAll{Reason: "bye", Flush: true},
		&actors.RestartAll{ReconnectIn: time.Second, TryFor: 3 * time.Second, Spread: -time.Millisecond, Reason: "SIGTERM"},
		&actors.RestartSpreadDone{Closed: 5, Mesh: 1},
		&actors.RejectBatch{Events: []actors.RejectEvent{
			{Dir: 1, Reason: 7, Key: testKey(14), DetailKey: testKey(15), Detail: "no such key", Count: 3},
			{Dir: 0, Reason: 2, Addr: netip.MustParseAddrPort("198.51.100.7:443"), Count: 1},
		}},
		&actors.Disconnected{Conn: 7, Key: testKey(1), Addr: netip.MustParseAddrPort("[2001:db8::1]:41641"),
			Since: time.Unix(0, 1_700_000_000_123_456_789), Mesh: true, Reason: "client hung up", Close: "x", Error: "EOF"},
		&actors.FlowTallyStarted{Tally: tally},
		&actors.FlowTallyEnded{Tally: tally},
		&actors.GetRegistryState{},
		&actors.GetConns{},
		&actors.GetPeer{Key: testKey(11)},
		&actors.GetMeshConns{},
		&actors.CheckConsistency{},
		&actors.GetFlows{Key: testKey(12), Limit: 20},
		&actors.GetRejects{Key: testKey(13)},
		&actor.Started{},
		&actor.Stopping{},
		&actor.Stopped{},
		&actor.Restarting{},
		&actors.Unregister{Conn: c},
	}
}

type unknownMessage struct{ X int }

// writeSample writes every sample message, a packet with and without a
// payload, a note and an opaque message.
func writeSample(t testing.TB, payloads bool) ([]byte, []*Record) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{Start: testStart, Payloads: payloads})
	if err != nil {
		t.Fatal(err)
	}
	_, msgs := sampleMessages()
	var recs []*Record
	seq := uint64(0)
	add := func(r *Record) {
		seq++
		r.Seq = seq
		r.At = time.Duration(seq) * time.Millisecond
		recs = append(recs, r)
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range msgs {
		add(&Record{Kind: KindMessage, Target: Target{Kind: actors.ActorRegistry}, Msg: m})
	}
	add(&Record{Kind: KindMessage, Target: Target{Kind: actors.ActorClient, ID: 7}, Msg: &unknownMessage{}})
	add(&Record{Kind: KindPacket, Target: Target{Kind: actors.ActorClient, ID: 7}, Packet: PacketRecord{
		SrcConn: 7, Src: testKey(1), Dst: testKey(2), Size: 5, Disco: true, Payload: []byte("hello")}})
	add(&Record{Kind: KindPacket, Target: Target{Kind: actors.ActorClient, ID: 8}, Packet: PacketRecord{
		SrcConn: 8, Src: testKey(3), Dst: testKey(1), Size: 1200, Forwarded: true}})
	// Connection 7 again, with the same source (journaled without it),
	// then another (a mesh peer's forwarded packets vary).
	add(&Record{Kind: KindPacket, Target: Target{Kind: actors.ActorClient, ID: 7}, Packet: PacketRecord{
		SrcConn: 7, Src: testKey(1), Dst: testKey(3), Size: 2, Payload: []byte("hi")}})
	add(&Record{Kind: KindPacket, Target: Target{Kind: actors.ActorClient, ID: 7}, Packet: PacketRecord{
		SrcConn: 7, Src: testKey(4), Dst: testKey(3), Size: 3, Payload: []byte("abc")}})
	add(&Record{Kind: KindNote, Note: "recording stopped at the 1 GiB limit"})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), recs
}

func readAll(data []byte) (*Reader, []*Record, error) {
	r, err := Open(bytes.NewReader(data))
	if err != nil {
		return nil, nil, err
	}
	var recs []*Record
	for {
		rec, err := r.Next()
		if err != nil {
			return r, recs, err
		}
		recs = append(recs, rec)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, payloads := range []bool{false, true} {
		data, want := writeSample(t, payloads)
		r, got, err := readAll(data)
		if err != io.EOF {
			t.Fatalf("payloads=%v: read: %v", payloads, err)
		}
		if h := r.Header(); !h.Start.Equal(testStart) || h.Payloads != payloads {
			t.Errorf("header %+v", h)
		}
		if len(got) != len(want) {
			t.Fatalf("payloads=%v: %d records, want %d", payloads, len(got), len(want))
		}
		seen := map[MsgType]bool{}
		for i, g := range got {
			w := *want[i]
			switch w.Kind {
			case KindMessage:
				w.Type = mustType(t, w.Msg)
				if w.Type == TypeOpaque {
					w.Note, w.Msg = "*journal.unknownMessage", nil
				}
			case KindPacket:
				w.Type = TypePacket
				if !payloads {
					w.Packet.Payload = nil
				}
			case KindNote:
				w.Type = TypeNote
			}
			seen[g.Type] = true
			// A FlowTally holds an atomic.Pointer, which DeepEqual compares
			// by address: compare the connection it belongs to instead.
			g := *g
			switch m := g.Msg.(type) {
			case *actors.FlowTallyStarted:
				g.Msg, w.Msg = m.Tally.Conn, w.Msg.(*actors.FlowTallyStarted).Tally.Conn
			case *actors.FlowTallyEnded:
				g.Msg, w.Msg = m.Tally.Conn, w.Msg.(*actors.FlowTallyEnded).Tally.Conn
			}
			if !reflect.DeepEqual(&g, &w) {
				t.Errorf("payloads=%v: record %d:\n got %#v\nwant %#v", payloads, i, g, &w)
			}
		}
		for typ := MsgType(0); typ <= TypeNote; typ++ {
			if knownType(typ) && !seen[typ] {
				t.Errorf("message type %d not covered by the round trip", typ)
			}
		}
		// Every record naming connection 7 decodes to one *Conn, and the
		// tally of connection 7 is one *FlowTally.
		c := r.Conns().Lookup(7)
		if c == nil || r.Conns().Len() != 1 {
			t.Fatalf("conn table: %v, %d entries", c, r.Conns().Len())
		}
		var tallies []*actors.FlowTally
		for _, g := range got {
			var named *actors.Conn
			switch m := g.Msg.(type) {
			case *actors.Register:
				named = m.Conn
			case *actors.Unregister:
				named = m.Conn
			case *actors.Activity:
				named = m.Conn
			case *actors.WatchConns:
				named = m.Conn
			case *actors.ClosePeer:
				named = m.From
			case *actors.Delivered:
				named = m.Receiver
			case *actors.FlowTallyStarted:
				tallies = append(tallies, m.Tally)
			case *actors.FlowTallyEnded:
				tallies = append(tallies, m.Tally)
			}
			if named != nil && named != c {
				t.Errorf("%T names connection %d at %p, want the table's %p", g.Msg, named.ID, named, c)
			}
		}
		if len(tallies) != 2 || tallies[0] != tallies[1] {
			t.Errorf("tallies %v: want one pointer twice", tallies)
		}
	}
}

// knownType reports whether the codec decodes typ as a message.
func knownType(typ MsgType) bool {
	d := &decoder{b: make([]byte, 256)}
	msg, _ := decodeMessage(d, NewConnTable(), typ)
	return msg != nil || typ == TypeRegister
}

func mustType(t *testing.T, msg any) MsgType {
	_, typ := appendMessage(nil, msg)
	return typ
}

func TestConnTableOnNew(t *testing.T) {
	data, _ := writeSample(t, false)
	r, err := Open(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var made []*actors.Conn
	r.Conns().OnNew(func(c *actors.Conn) { made = append(made, c) })
	for {
		if _, err := r.Next(); err != nil {
			break
		}
	}
	if len(made) != 1 || made[0].ID != 7 || made[0].Key != testKey(1) {
		t.Fatalf("OnNew saw %+v, want connection 7 with its Register's key", made)
	}
}

func TestUnknownConn(t *testing.T) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, Header{Start: testStart})
	w.Write(&Record{Kind: KindMessage, Target: Target{Kind: actors.ActorRegistry}, Msg: &actors.Unregister{Conn: &actors.Conn{ID: 42, Key: testKey(1)}}})
	w.Close()
	_, recs, err := readAll(buf.Bytes())
	if err != io.EOF || len(recs) != 1 {
		t.Fatal(err, recs)
	}
	if c := recs[0].Msg.(*actors.Unregister).Conn; c.ID != 42 || !c.Key.IsZero() {
		t.Errorf("unknown connection decoded as %+v, want ID only", c)
	}
}

// Every cut of a journal short of its end is an error naming an offset,
// never a panic and never a clean end.
func TestTruncatedEverywhere(t *testing.T) {
	data, want := writeSample(t, true)
	for cut := 0; cut < len(data); cut++ {
		_, recs, err := readAll(data[:cut])
		if err == nil || err == io.EOF {
			t.Fatalf("cut at %d: err %v after %d records", cut, err, len(recs))
		}
		if !strings.HasPrefix(err.Error(), "journal: offset ") {
			t.Fatalf("cut at %d: error %q names no offset", cut, err)
		}
		if len(recs) > len(want) {
			t.Fatalf("cut at %d: %d records", cut, len(recs))
		}
	}
	// A cut exactly at a record boundary is the one a killed recorder
	// leaves: everything before it reads, then ErrUnterminated.
	_, recs, err := readAll(data[:len(data)-len(AppendEnd(nil))])
	if !errors.Is(err, ErrUnterminated) || len(recs) != len(want) {
		t.Fatalf("journal without its end: %v after %d records", err, len(recs))
	}
}

// A flipped bit anywhere but in the header's start time (which nothing
// checks: any instant is a valid start) is caught.
func TestFlippedByte(t *testing.T) {
	data, _ := writeSample(t, true)
	startAt := len(Magic) + 2
	for i := range data {
		if i >= startAt && i < HeaderLen {
			continue
		}
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(data)
			bad[i] ^= bit
			_, _, err := readAll(bad)
			if err == nil || err == io.EOF {
				t.Fatalf("byte %d ^ %#x: not caught", i, bit)
			}
			if !strings.HasPrefix(err.Error(), "journal: offset ") {
				t.Fatalf("byte %d: error %q names no offset", i, err)
			}
		}
	}
}

func TestOversizedLength(t *testing.T) {
	data := AppendHeader(nil, Header{Start: testStart})
	data = append(data, 0xff, 0xff, 0xff, 0x7f) // a length of 256 MiB
	_, _, err := readAll(data)
	if err == nil || !strings.Contains(err.Error(), "offset 18: record of") {
		t.Fatalf("err %v", err)
	}
}

// A message too big for one record is journaled by type name alone.
func TestOversizedMessage(t *testing.T) {
	m := &actors.SendPeerPresence{Updates: make([]actors.PeerPresence, MaxRecordBytes/30)}
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, Header{Start: testStart})
	w.Write(&Record{Kind: KindMessage, Msg: m})
	w.Close()
	_, recs, err := readAll(buf.Bytes())
	if err != io.EOF || len(recs) != 1 || recs[0].Type != TypeOpaque || recs[0].Note != "oversized *actors.SendPeerPresence" {
		t.Fatalf("%v %+v", err, recs)
	}
}

// Records of every length class (one, two and three length bytes) read
// back whole.
func TestRecordLengths(t *testing.T) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, Header{Start: testStart})
	var want []*actors.SendPeerPresence
	for _, n := range []int{0, 1, 2, 3, 200, 500, 2000} {
		m := &actors.SendPeerPresence{Updates: make([]actors.PeerPresence, n)}
		for i := range m.Updates {
			m.Updates[i] = actors.PeerPresence{Peer: testKey(byte(i)), Flags: wire.PeerPresentFlags(i % 3)}
		}
		w.Write(&Record{Kind: KindMessage, Msg: m})
		want = append(want, m)
	}
	w.Close()
	_, recs, err := readAll(buf.Bytes())
	if err != io.EOF || len(recs) != len(want) {
		t.Fatalf("%v after %d records", err, len(recs))
	}
	for i, r := range recs {
		if !reflect.DeepEqual(r.Msg, want[i]) {
			t.Errorf("record %d of %d updates differs", i, len(want[i].Updates))
		}
	}
}

// A packet record repeats its connection's previous source instead of
// writing it again, and a repeat with nothing before it is refused.
func TestPacketSourceRepeated(t *testing.T) {
	one := func(n int) int {
		var buf bytes.Buffer
		w, _ := NewWriter(&buf, Header{Start: testStart})
		for range n {
			w.Write(&Record{Kind: KindPacket, Packet: PacketRecord{SrcConn: 5, Src: testKey(1), Dst: testKey(2), Size: 100}})
		}
		w.Close()
		return buf.Len()
	}
	first, next := one(1), one(2)-one(1)
	if next > first-wire.KeyLen {
		t.Errorf("a repeated source costs %d bytes, the first %d", next, first)
	}
	orphan := AppendHeader(nil, Header{Start: testStart})
	orphan = appendPacketRecord(orphan, 1, 0, 5, new(wire.NodePublic), new(wire.NodePublic), 0, false, false, true, nil, false)
	if _, _, err := readAll(orphan); err == nil || !strings.Contains(err.Error(), "offset 18: body byte") {
		t.Errorf("a repeat with no source before it: %v", err)
	}
}

func TestBadHeader(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":   nil,
		"short":   []byte("DERPD"),
		"magic":   []byte("NOTAJRNL\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
		"version": []byte("DERPDJNL\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
		"flags":   []byte("DERPDJNL\x01\x80\x00\x00\x00\x00\x00\x00\x00\x00"),
	} {
		if _, err := Open(bytes.NewReader(data)); err == nil || !strings.HasPrefix(err.Error(), "journal: offset ") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
