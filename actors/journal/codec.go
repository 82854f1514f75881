package journal

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// MsgType numbers a message type in the journal. The numbers are part of
// the format: stable, never reused; a retired type keeps its number.
type MsgType uint16

// The encodings below use these primitives: conn = uvarint connection id
// (0: nil); key = 32 bytes; str = uvarint length then bytes; bool = u8;
// dur = varint nanoseconds; time = varint unix nanoseconds (0: the zero
// time); addr = uvarint length then netip.AddrPort's binary form.
const (
	// TypeOpaque is a message the codec has no encoding for: its body is
	// its Go type name (str), returned in Record.Note; Msg is nil.
	TypeOpaque MsgType = 0

	TypeRegister   MsgType = 1 // Conn: id key addr u8 flags bool canMesh time since
	TypeUnregister MsgType = 2 // conn
	TypeActivity   MsgType = 3 // conn
	TypeWatchConns MsgType = 4 // conn
	TypeClosePeer  MsgType = 5 // from: conn, target: key
	// TypeDelivered: receiver conn, uvarint count, then per source: key
	// bool forwarded. Encoding calls Delivered.Take first.
	TypeDelivered        MsgType = 6
	TypeSendPeerGone     MsgType = 7  // key, u8 reason
	TypeSendPeerPresence MsgType = 8  // uvarint count, then per update: key bool present addr u8 flags
	TypeRegistered       MsgType = 9  // nothing
	TypeCloseConn        MsgType = 10 // str reason, bool flush
	TypeSendRestarting   MsgType = 11 // dur reconnectIn, dur tryFor
	// TypeMeshLinkUp: uvarint link, str peer, key peerKey. Forward and
	// Owner are not journaled: a replay supplies its own forwarder (and
	// owner) for the session.
	TypeMeshLinkUp        MsgType = 12
	TypeMeshUpdate        MsgType = 13 // uvarint link, uvarint count, then per update: key bool present
	TypeMeshUpdateApplied MsgType = 14 // uvarint link, uvarint keys, uvarint refused, bool unknown
	TypeMeshLinkDown      MsgType = 15 // uvarint link
	TypeRegistryRestarted MsgType = 16 // nothing
	TypeCloseAll          MsgType = 17 // str reason, bool flush
	TypeRestartAll        MsgType = 18 // dur reconnectIn, dur tryFor, dur spread, str reason
	TypeRestartSpreadDone MsgType = 19 // uvarint closed, uvarint mesh
	// TypeFlowTallyStarted and TypeFlowTallyEnded carry the tally's
	// connection id (uvarint). The Reader gives every record naming one
	// connection the same empty *actors.FlowTally (ConnTable.Tally); its
	// counters were the reader's and are not journaled.
	TypeFlowTallyStarted MsgType = 20
	TypeFlowTallyEnded   MsgType = 21
	// TypeRejectBatch: uvarint count, then per event: u8 dir, u8 reason,
	// key, addr, key detailKey, str detail, uvarint count.
	TypeRejectBatch MsgType = 22
	// TypeDisconnected: uvarint conn, key, addr, time since, bool mesh,
	// str reason, str close, str error.
	TypeDisconnected MsgType = 23
	// 24 was ForgetSource for a few commits (it became a call on the
	// sink, actors.SourceForgetter): retired, not to be reused.

	// Queries for the debug views (type only, except where noted).
	TypeGetRegistryState MsgType = 30
	TypeGetConns         MsgType = 31
	TypeGetPeer          MsgType = 32 // key
	TypeGetMeshConns     MsgType = 33
	TypeCheckConsistency MsgType = 34
	TypeGetFlows         MsgType = 35 // key, uvarint limit
	TypeGetRejects       MsgType = 36 // key

	// protoactor's lifecycle messages, type only.
	TypeStarted    MsgType = 40
	TypeStopping   MsgType = 41
	TypeStopped    MsgType = 42
	TypeRestarting MsgType = 43

	// TypePacket is the type of every KindPacket record, TypeNote of every
	// KindNote and TypeEnd of the end record.
	TypePacket MsgType = 64
	TypeNote   MsgType = 65
	TypeEnd    MsgType = 66
)

// appendMessage appends msg's encoding and returns its type. A message the
// codec does not know is appended as TypeOpaque with its type name.
func appendMessage(b []byte, msg any) ([]byte, MsgType) {
	switch m := msg.(type) {
	case *actors.Register:
		c := m.Conn
		if c == nil {
			c = &actors.Conn{}
		}
		b = binary.AppendUvarint(b, c.ID)
		b = append(b, c.Key[:]...)
		b = appendAddr(b, c.Addr)
		b = append(b, byte(c.Flags))
		b = appendBool(b, c.CanMesh)
		b = appendTime(b, c.Since)
		return b, TypeRegister
	case *actors.Unregister:
		return appendConn(b, m.Conn), TypeUnregister
	case *actors.Activity:
		return appendConn(b, m.Conn), TypeActivity
	case *actors.WatchConns:
		return appendConn(b, m.Conn), TypeWatchConns
	case *actors.ClosePeer:
		b = appendConn(b, m.From)
		return append(b, m.Target[:]...), TypeClosePeer
	case *actors.Delivered:
		// Take moves the sources the doorbell rang for into the message
		// (see actors.Delivered), so that what is journaled is plain values;
		// the registry, running after this, finds them there.
		srcs := m.Take()
		b = appendConn(b, m.Receiver)
		b = binary.AppendUvarint(b, uint64(len(srcs)))
		for i := range srcs {
			b = append(b, srcs[i].Source[:]...)
			b = appendBool(b, srcs[i].Forwarded)
		}
		return b, TypeDelivered
	case *actors.SendPeerGone:
		b = append(b, m.Peer[:]...)
		return append(b, byte(m.Reason)), TypeSendPeerGone
	case *actors.SendPeerPresence:
		b = binary.AppendUvarint(b, uint64(len(m.Updates)))
		for i := range m.Updates {
			u := &m.Updates[i]
			b = append(b, u.Peer[:]...)
			b = appendBool(b, u.Present)
			b = appendAddr(b, u.Addr)
			b = append(b, byte(u.Flags))
		}
		return b, TypeSendPeerPresence
	case *actors.Registered:
		return b, TypeRegistered
	case *actors.CloseConn:
		b = appendString(b, m.Reason)
		return appendBool(b, m.Flush), TypeCloseConn
	case *actors.SendRestarting:
		b = binary.AppendVarint(b, int64(m.ReconnectIn))
		return binary.AppendVarint(b, int64(m.TryFor)), TypeSendRestarting
	case *actors.MeshLinkUp:
		b = binary.AppendUvarint(b, m.Link)
		b = appendString(b, m.Peer)
		return append(b, m.PeerKey[:]...), TypeMeshLinkUp
	case *actors.MeshUpdate:
		b = binary.AppendUvarint(b, m.Link)
		b = binary.AppendUvarint(b, uint64(len(m.Updates)))
		for i := range m.Updates {
			b = append(b, m.Updates[i].Key[:]...)
			b = appendBool(b, m.Updates[i].Present)
		}
		return b, TypeMeshUpdate
	case *actors.MeshUpdateApplied:
		b = binary.AppendUvarint(b, m.Link)
		b = binary.AppendUvarint(b, uint64(m.Keys))
		b = binary.AppendUvarint(b, uint64(m.Refused))
		return appendBool(b, m.Unknown), TypeMeshUpdateApplied
	case *actors.MeshLinkDown:
		return binary.AppendUvarint(b, m.Link), TypeMeshLinkDown
	case *actors.RegistryRestarted:
		return b, TypeRegistryRestarted
	case *actors.CloseAll:
		b = appendString(b, m.Reason)
		return appendBool(b, m.Flush), TypeCloseAll
	case *actors.RestartAll:
		b = binary.AppendVarint(b, int64(m.ReconnectIn))
		b = binary.AppendVarint(b, int64(m.TryFor))
		b = binary.AppendVarint(b, int64(m.Spread))
		return appendString(b, m.Reason), TypeRestartAll
	case *actors.RestartSpreadDone:
		b = binary.AppendUvarint(b, uint64(m.Closed))
		return binary.AppendUvarint(b, uint64(m.Mesh)), TypeRestartSpreadDone
	case *actors.FlowTallyStarted:
		return binary.AppendUvarint(b, tallyConn(m.Tally)), TypeFlowTallyStarted
	case *actors.FlowTallyEnded:
		return binary.AppendUvarint(b, tallyConn(m.Tally)), TypeFlowTallyEnded
	case *actors.RejectBatch:
		b = binary.AppendUvarint(b, uint64(len(m.Events)))
		for i := range m.Events {
			e := &m.Events[i]
			b = append(b, byte(e.Dir), byte(e.Reason))
			b = append(b, e.Key[:]...)
			b = appendAddr(b, e.Addr)
			b = append(b, e.DetailKey[:]...)
			b = appendString(b, e.Detail)
			b = binary.AppendUvarint(b, uint64(max(e.Count, 0)))
		}
		return b, TypeRejectBatch
	case *actors.Disconnected:
		b = binary.AppendUvarint(b, m.Conn)
		b = append(b, m.Key[:]...)
		b = appendAddr(b, m.Addr)
		b = appendTime(b, m.Since)
		b = appendBool(b, m.Mesh)
		b = appendString(b, m.Reason)
		b = appendString(b, m.Close)
		return appendString(b, m.Error), TypeDisconnected
	case *actors.GetRegistryState:
		return b, TypeGetRegistryState
	case *actors.GetConns:
		return b, TypeGetConns
	case *actors.GetPeer:
		return append(b, m.Key[:]...), TypeGetPeer
	case *actors.GetMeshConns:
		return b, TypeGetMeshConns
	case *actors.CheckConsistency:
		return b, TypeCheckConsistency
	case *actors.GetFlows:
		b = append(b, m.Key[:]...)
		return binary.AppendUvarint(b, uint64(max(m.Limit, 0))), TypeGetFlows
	case *actors.GetRejects:
		return append(b, m.Key[:]...), TypeGetRejects
	case *actor.Started:
		return b, TypeStarted
	case *actor.Stopping:
		return b, TypeStopping
	case *actor.Stopped:
		return b, TypeStopped
	case *actor.Restarting:
		return b, TypeRestarting
	}
	return appendString(b, opaqueName(msg)), TypeOpaque
}

func tallyConn(t *actors.FlowTally) uint64 {
	if t == nil {
		return 0
	}
	return t.Conn
}

func appendConn(b []byte, c *actors.Conn) []byte {
	if c == nil {
		return append(b, 0)
	}
	return binary.AppendUvarint(b, c.ID)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	// netip's binary form: the address (0, 4 or 16 bytes, or 16 plus a
	// zone) then the port; its length is written first.
	lenAt := len(b)
	b = append(b, 0)
	b, _ = a.AppendBinary(b)
	n := len(b) - lenAt - 1
	if n < 0x80 {
		b[lenAt] = byte(n)
		return b
	}
	// A zone pushed it past one length byte (never in practice): redo
	// with a full uvarint.
	enc, _ := a.MarshalBinary()
	b = binary.AppendUvarint(b[:lenAt], uint64(len(enc)))
	return append(b, enc...)
}

// decoder reads one record's body. The first error sticks; every read
// after it returns zero values, so a decode function reads on and checks
// err once at the end.
type decoder struct {
	b   []byte
	off int // into b
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = &bodyError{off: d.off, msg: fmt.Sprintf(format, args...)}
	}
}

// bodyError is a decode failure at an offset inside a record's body; the
// Reader turns it into an error naming the file offset.
type bodyError struct {
	off int
	msg string
}

func (e *bodyError) Error() string { return e.msg }

func (d *decoder) left() int { return len(d.b) - d.off }

func (d *decoder) u8(what string) byte {
	if d.err != nil {
		return 0
	}
	if d.left() < 1 {
		d.fail("%s: body cut short", what)
		return 0
	}
	v := d.b[d.off]
	d.off++
	return v
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("%s: bad uvarint", what)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail("%s: bad varint", what)
		return 0
	}
	d.off += n
	return v
}

// count reads a list length and refuses one that the rest of the body
// cannot hold at minSize bytes per element, so a forged count never sizes
// an allocation beyond the record itself.
func (d *decoder) count(what string, minSize int) int {
	n := d.uvarint(what)
	if d.err != nil {
		return 0
	}
	if n > uint64(d.left()/minSize) {
		d.fail("%s: %d elements in %d bytes", what, n, d.left())
		return 0
	}
	return int(n)
}

// int reads a uvarint that must fit an int.
func (d *decoder) int(what string) int {
	v := d.uvarint(what)
	if v > 1<<31-1 {
		d.fail("%s: %d out of range", what, v)
		return 0
	}
	return int(v)
}

func (d *decoder) bool(what string) bool {
	switch v := d.u8(what); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("%s: bool byte %d", what, v)
		return false
	}
}

func (d *decoder) key(what string) (k wire.NodePublic) {
	if d.err != nil {
		return k
	}
	if d.left() < len(k) {
		d.fail("%s: key cut short", what)
		return k
	}
	copy(k[:], d.b[d.off:])
	d.off += len(k)
	return k
}

func (d *decoder) bytes(what string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > d.left() {
		d.fail("%s: %d bytes, %d left", what, n, d.left())
		return nil
	}
	v := d.b[d.off : d.off+n]
	d.off += n
	return v
}

func (d *decoder) string(what string) string {
	n := d.uvarint(what)
	if d.err == nil && n > uint64(d.left()) {
		d.fail("%s: string of %d bytes, %d left", what, n, d.left())
	}
	return string(d.bytes(what, int(n)))
}

func (d *decoder) dur(what string) time.Duration { return time.Duration(d.varint(what)) }

func (d *decoder) time(what string) time.Time {
	ns := d.varint(what)
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func (d *decoder) addr(what string) netip.AddrPort {
	n := d.uvarint(what)
	if d.err == nil && n > uint64(d.left()) {
		d.fail("%s: address of %d bytes, %d left", what, n, d.left())
	}
	raw := d.bytes(what, int(n))
	var a netip.AddrPort
	if d.err == nil {
		if err := a.UnmarshalBinary(raw); err != nil {
			d.fail("%s: %v", what, err)
		}
	}
	return a
}

func (d *decoder) conn(t *ConnTable, what string) *actors.Conn {
	id := d.uvarint(what)
	if d.err != nil || id == 0 {
		return nil
	}
	return t.Conn(id)
}

// Smallest encodings of list elements, for decoder.count.
const (
	minPresenceBytes    = wire.KeyLen + 1 + 1 + 1
	minMeshUpdateBytes  = wire.KeyLen + 1
	minRejectEventBytes = 2 + 2*wire.KeyLen + 1 + 1 + 1
)

// decodeMessage decodes the message of type typ; for TypeOpaque it returns
// a nil message and the type name.
func decodeMessage(d *decoder, t *ConnTable, typ MsgType) (msg any, note string) {
	switch typ {
	case TypeOpaque:
		return nil, d.string("opaque type name")
	case TypeRegister:
		id := d.uvarint("conn id")
		key := d.key("conn key")
		addr := d.addr("conn addr")
		flags := wire.PeerPresentFlags(d.u8("conn flags"))
		canMesh := d.bool("conn canMesh")
		since := d.time("conn since")
		if d.err != nil {
			return nil, ""
		}
		if id == 0 {
			d.fail("Register of connection id 0")
			return nil, ""
		}
		return &actors.Register{Conn: t.register(id, key, addr, flags, canMesh, since)}, ""
	case TypeUnregister:
		return &actors.Unregister{Conn: d.conn(t, "conn")}, ""
	case TypeActivity:
		return &actors.Activity{Conn: d.conn(t, "conn")}, ""
	case TypeWatchConns:
		return &actors.WatchConns{Conn: d.conn(t, "conn")}, ""
	case TypeClosePeer:
		return &actors.ClosePeer{From: d.conn(t, "from"), Target: d.key("target")}, ""
	case TypeDelivered:
		m := &actors.Delivered{Receiver: d.conn(t, "receiver")}
		if n := d.count("sources", minMeshUpdateBytes); n > 0 {
			m.Sources = make([]actors.DeliveredSource, n)
			for i := range m.Sources {
				m.Sources[i] = actors.DeliveredSource{Source: d.key("source"), Forwarded: d.bool("forwarded")}
			}
		}
		return m, ""
	case TypeSendPeerGone:
		return &actors.SendPeerGone{Peer: d.key("peer"), Reason: wire.PeerGoneReason(d.u8("reason"))}, ""
	case TypeSendPeerPresence:
		n := d.count("updates", minPresenceBytes)
		m := &actors.SendPeerPresence{Updates: make([]actors.PeerPresence, n)}
		for i := range m.Updates {
			u := &m.Updates[i]
			u.Peer = d.key("peer")
			u.Present = d.bool("present")
			u.Addr = d.addr("addr")
			u.Flags = wire.PeerPresentFlags(d.u8("flags"))
		}
		return m, ""
	case TypeRegistered:
		return &actors.Registered{}, ""
	case TypeCloseConn:
		return &actors.CloseConn{Reason: d.string("reason"), Flush: d.bool("flush")}, ""
	case TypeSendRestarting:
		return &actors.SendRestarting{ReconnectIn: d.dur("reconnectIn"), TryFor: d.dur("tryFor")}, ""
	case TypeMeshLinkUp:
		return &actors.MeshLinkUp{Link: d.uvarint("link"), Peer: d.string("peer"), PeerKey: d.key("peerKey")}, ""
	case TypeMeshUpdate:
		m := &actors.MeshUpdate{Link: d.uvarint("link")}
		m.Updates = make([]actors.MeshPeerUpdate, d.count("updates", minMeshUpdateBytes))
		for i := range m.Updates {
			m.Updates[i] = actors.MeshPeerUpdate{Key: d.key("key"), Present: d.bool("present")}
		}
		return m, ""
	case TypeMeshUpdateApplied:
		return &actors.MeshUpdateApplied{Link: d.uvarint("link"), Keys: d.int("keys"), Refused: d.int("refused"), Unknown: d.bool("unknown")}, ""
	case TypeMeshLinkDown:
		return &actors.MeshLinkDown{Link: d.uvarint("link")}, ""
	case TypeRegistryRestarted:
		return &actors.RegistryRestarted{}, ""
	case TypeCloseAll:
		return &actors.CloseAll{Reason: d.string("reason"), Flush: d.bool("flush")}, ""
	case TypeRestartAll:
		return &actors.RestartAll{ReconnectIn: d.dur("reconnectIn"), TryFor: d.dur("tryFor"), Spread: d.dur("spread"), Reason: d.string("reason")}, ""
	case TypeRestartSpreadDone:
		return &actors.RestartSpreadDone{Closed: d.int("closed"), Mesh: d.int("mesh")}, ""
	case TypeFlowTallyStarted:
		return &actors.FlowTallyStarted{Tally: t.Tally(d.uvarint("tally conn"))}, ""
	case TypeFlowTallyEnded:
		return &actors.FlowTallyEnded{Tally: t.Tally(d.uvarint("tally conn"))}, ""
	case TypeRejectBatch:
		m := &actors.RejectBatch{Events: make([]actors.RejectEvent, d.count("events", minRejectEventBytes))}
		for i := range m.Events {
			e := &m.Events[i]
			e.Dir = actors.RejectDirection(d.u8("dir"))
			e.Reason = actors.RejectReason(d.u8("reason"))
			e.Key = d.key("key")
			e.Addr = d.addr("addr")
			e.DetailKey = d.key("detail key")
			e.Detail = d.string("detail")
			e.Count = int64(d.int("count"))
		}
		return m, ""
	case TypeDisconnected:
		return &actors.Disconnected{Conn: d.uvarint("conn"), Key: d.key("key"), Addr: d.addr("addr"), Since: d.time("since"),
			Mesh: d.bool("mesh"), Reason: d.string("reason"), Close: d.string("close"), Error: d.string("error")}, ""
	case TypeGetRegistryState:
		return &actors.GetRegistryState{}, ""
	case TypeGetConns:
		return &actors.GetConns{}, ""
	case TypeGetPeer:
		return &actors.GetPeer{Key: d.key("key")}, ""
	case TypeGetMeshConns:
		return &actors.GetMeshConns{}, ""
	case TypeCheckConsistency:
		return &actors.CheckConsistency{}, ""
	case TypeGetFlows:
		return &actors.GetFlows{Key: d.key("key"), Limit: d.int("limit")}, ""
	case TypeGetRejects:
		return &actors.GetRejects{Key: d.key("key")}, ""
	case TypeStarted:
		return &actor.Started{}, ""
	case TypeStopping:
		return &actor.Stopping{}, ""
	case TypeStopped:
		return &actor.Stopped{}, ""
	case TypeRestarting:
		return &actor.Restarting{}, ""
	}
	d.fail("unknown message type %d", typ)
	return nil, ""
}
