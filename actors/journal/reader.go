package journal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// Reader reads a journal record by record.
type Reader struct {
	r     *bufio.Reader
	h     Header
	off   int64 // of the next unread byte
	body  []byte
	conns *ConnTable
	// lastSrc is each connection's last packet source, which a packet
	// record may repeat (packetSameSrc).
	lastSrc map[uint64]wire.NodePublic
	err     error // sticky: after the first error (or the end) Next repeats it
}

// Open reads the header of the journal r.
func Open(r io.Reader) (*Reader, error) {
	jr := &Reader{r: bufio.NewReaderSize(r, 64<<10), conns: NewConnTable(), lastSrc: make(map[uint64]wire.NodePublic)}
	var h [HeaderLen]byte
	if n, err := io.ReadFull(jr.r, h[:]); err != nil {
		return nil, fmt.Errorf("journal: offset %d: header cut short (%d of %d bytes)", n, n, HeaderLen)
	}
	if string(h[:len(Magic)]) != Magic {
		return nil, fmt.Errorf("journal: offset 0: not a derpd journal (magic %q)", h[:len(Magic)])
	}
	if v := h[len(Magic)]; v != Version {
		return nil, fmt.Errorf("journal: offset %d: version %d, this derpd reads version %d", len(Magic), v, Version)
	}
	flags := h[len(Magic)+1]
	if flags&^headerPayloads != 0 {
		return nil, fmt.Errorf("journal: offset %d: unknown header flags %#x", len(Magic)+1, flags)
	}
	jr.h = Header{
		Start:    time.Unix(0, int64(binary.LittleEndian.Uint64(h[len(Magic)+2:]))),
		Payloads: flags&headerPayloads != 0,
	}
	jr.off = int64(HeaderLen)
	return jr, nil
}

// Header returns the journal's header.
func (r *Reader) Header() Header { return r.h }

// Conns returns the table the Reader resolves connection ids through.
func (r *Reader) Conns() *ConnTable { return r.conns }

// Offset returns the byte offset of the next record.
func (r *Reader) Offset() int64 { return r.off }

// Next returns the next record: io.EOF after the end record, an error
// wrapping ErrUnterminated if the journal stops at a record boundary
// without one, and for anything else wrong an error naming the offset of
// the record at fault. After an error every call returns it again. The
// Record is the caller's; it shares no memory with the Reader.
func (r *Reader) Next() (*Record, error) {
	if r.err != nil {
		return nil, r.err
	}
	rec, err := r.next()
	if err != nil {
		r.err = err
		return nil, err
	}
	return rec, nil
}

func (r *Reader) next() (*Record, error) {
	at := r.off
	n, lenBytes, err := r.readLen()
	if err != nil {
		if err == io.EOF && lenBytes == 0 {
			return nil, fmt.Errorf("journal: offset %d: %w", at, ErrUnterminated)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, r.errorf(at, "record length cut short")
		}
		if errors.Is(err, errBadLen) {
			return nil, r.errorf(at, "bad record length")
		}
		return nil, r.errorf(at, "%v", err)
	}
	if n > MaxRecordBytes {
		return nil, r.errorf(at, "record of %d bytes, more than the limit of %d", n, MaxRecordBytes)
	}
	if n == 0 {
		return nil, r.errorf(at, "empty record")
	}
	// n is at most MaxRecordBytes here: the only allocation sized by the
	// input, and reused for every record.
	if cap(r.body) < int(n)+4 {
		r.body = make([]byte, int(n)+4)
	}
	buf := r.body[:int(n)+4]
	if got, err := io.ReadFull(r.r, buf); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, r.errorf(at, "record of %d bytes cut short: %d of %d bytes there", n, got, n+4)
		}
		return nil, r.errorf(at, "%v", err)
	}
	body, sum := buf[:n], binary.LittleEndian.Uint32(buf[n:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, r.errorf(at, "checksum mismatch in a record of %d bytes", n)
	}
	r.off += int64(lenBytes) + int64(n) + 4
	rec, err := r.decode(body)
	if err != nil {
		var be *bodyError
		if errors.As(err, &be) {
			return nil, r.errorf(at, "body byte %d: %s", be.off, be.msg)
		}
		return nil, r.errorf(at, "%v", err)
	}
	if rec == nil {
		// The end record: nothing may follow it.
		if _, err := r.r.ReadByte(); err == nil {
			return nil, r.errorf(r.off, "data after the end record")
		}
		return nil, io.EOF
	}
	return rec, nil
}

var errBadLen = errors.New("bad length")

// readLen reads a record's uvarint length, counting the bytes it took.
func (r *Reader) readLen() (v uint64, n int, err error) {
	var shift uint
	for n = 0; n < binary.MaxVarintLen64; n++ {
		c, err := r.r.ReadByte()
		if err != nil {
			return 0, n, err
		}
		if c < 0x80 {
			if n == binary.MaxVarintLen64-1 && c > 1 {
				return 0, n + 1, errBadLen
			}
			return v | uint64(c)<<shift, n + 1, nil
		}
		v |= uint64(c&0x7f) << shift
		shift += 7
	}
	return 0, n, errBadLen
}

func (r *Reader) errorf(off int64, format string, args ...any) error {
	return fmt.Errorf("journal: offset %d: %s", off, fmt.Sprintf(format, args...))
}

// decode decodes one checked body; it returns nil, nil for the end record.
func (r *Reader) decode(body []byte) (*Record, error) {
	d := &decoder{b: body}
	rec := &Record{Kind: Kind(d.u8("kind"))}
	rec.Seq = d.uvarint("seq")
	at := d.uvarint("at")
	if at > 1<<63-1 {
		d.fail("at %d out of range", at)
	}
	rec.At = time.Duration(at)
	ti := d.u8("target kind")
	rec.Target.ID = d.uvarint("target id")
	typ := d.uvarint("message type")
	if d.err != nil {
		return nil, d.err
	}
	switch {
	case ti == noTargetKind:
	case int(ti) < len(actors.ActorKinds):
		rec.Target.Kind = actors.ActorKinds[ti]
	default:
		d.fail("target kind %d", ti)
		return nil, d.err
	}
	if typ > 0xffff {
		d.fail("message type %d", typ)
		return nil, d.err
	}
	rec.Type = MsgType(typ)
	switch rec.Kind {
	case KindMessage:
		rec.Msg, rec.Note = decodeMessage(d, r.conns, rec.Type)
	case KindPacket:
		if rec.Type != TypePacket {
			d.fail("packet record of message type %d", rec.Type)
			break
		}
		p := &rec.Packet
		p.SrcConn = d.uvarint("src conn")
		flags := d.u8("packet flags")
		if flags&^(packetDisco|packetForwarded|packetPayload|packetSameSrc) != 0 {
			d.fail("packet flags %#x", flags)
		}
		if flags&packetSameSrc == 0 {
			p.Src = d.key("src")
		} else if last, ok := r.lastSrc[p.SrcConn]; ok {
			p.Src = last
		} else if d.err == nil {
			d.fail("packet repeats the source of connection %d, which has none yet", p.SrcConn)
		}
		p.Dst = d.key("dst")
		p.Size = d.int("size")

		p.Disco = flags&packetDisco != 0
		p.Forwarded = flags&packetForwarded != 0
		if flags&packetPayload != 0 && d.err == nil {
			if !r.h.Payloads {
				d.fail("payload in a journal recorded without payloads")
			} else if raw := d.bytes("payload", p.Size); d.err == nil {
				p.Payload = append([]byte(nil), raw...)
			}
		}
	case KindNote:
		rec.Note = d.string("note")
	case KindEnd:
		if d.err == nil && d.left() == 0 {
			return nil, nil
		}
	default:
		d.fail("record kind %d", rec.Kind)
	}
	if d.err == nil && d.left() != 0 {
		d.fail("%d bytes left over after a %s record", d.left(), rec.Kind)
	}
	if d.err != nil {
		return nil, d.err
	}
	if rec.Kind == KindPacket {
		// Only a record that is whole sets the source the connection's
		// next packet records may repeat.
		r.lastSrc[rec.Packet.SrcConn] = rec.Packet.Src
	}
	return rec, nil
}

// ConnTable resolves the connection ids of a journal to connections: one
// *actors.Conn per id, made on first sight. A connection that registered
// before recording began is known only by its id.
type ConnTable struct {
	conns   map[uint64]*actors.Conn
	tallies map[uint64]*actors.FlowTally
	onNew   func(*actors.Conn)
}

// NewConnTable returns an empty table.
func NewConnTable() *ConnTable {
	return &ConnTable{conns: make(map[uint64]*actors.Conn), tallies: make(map[uint64]*actors.FlowTally)}
}

// OnNew sets f to be called with every connection the table makes, as it
// makes it: for a connection first seen in its Register, with the
// Register's fields already filled in. A replay sets the Conn's PID and
// Sink there.
func (t *ConnTable) OnNew(f func(*actors.Conn)) { t.onNew = f }

// Conn returns the connection with id, making it if it is new.
func (t *ConnTable) Conn(id uint64) *actors.Conn {
	if c := t.conns[id]; c != nil {
		return c
	}
	c := &actors.Conn{ID: id}
	t.conns[id] = c
	if t.onNew != nil {
		t.onNew(c)
	}
	return c
}

// Lookup returns the connection with id, or nil if the journal has not
// named it.
func (t *ConnTable) Lookup(id uint64) *actors.Conn { return t.conns[id] }

// Len reports how many connections the table holds.
func (t *ConnTable) Len() int { return len(t.conns) }

// Tally returns the flow tally of connection id, the same one for every
// record naming it.
func (t *ConnTable) Tally(id uint64) *actors.FlowTally {
	if f := t.tallies[id]; f != nil {
		return f
	}
	f := actors.NewFlowTally(id, 0)
	t.tallies[id] = f
	return f
}

func (t *ConnTable) register(id uint64, key wire.NodePublic, addr netip.AddrPort, flags wire.PeerPresentFlags, canMesh bool, since time.Time) *actors.Conn {
	c := t.conns[id]
	isNew := c == nil
	if isNew {
		c = &actors.Conn{ID: id}
		t.conns[id] = c
	}
	c.Key, c.Addr, c.Flags, c.CanMesh, c.Since = key, addr, flags, canMesh, since
	if isNew && t.onNew != nil {
		t.onNew(c)
	}
	return c
}
