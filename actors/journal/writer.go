package journal

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"reflect"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// Writer writes a journal to an io.Writer. It is not safe for concurrent
// use: the Recorder gives it whole chunks from one goroutine at a time.
type Writer struct {
	w        io.Writer
	payloads bool
	start    time.Time
	scratch  []byte
	lastSrc  map[uint64]wire.NodePublic // of each connection's last packet record
	err      error
	closed   bool
}

// NewWriter writes the header to w and returns a Writer for the records.
// Callers wanting fewer syscalls pass a buffered w, or hand the Writer
// chunks of many records (WriteEncoded).
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	jw := &Writer{w: w, payloads: h.Payloads, start: h.Start}
	if _, err := w.Write(AppendHeader(nil, h)); err != nil {
		return nil, err
	}
	return jw, nil
}

// AppendHeader appends the encoding of h.
func AppendHeader(b []byte, h Header) []byte {
	b = append(b, Magic...)
	b = append(b, Version)
	var flags byte
	if h.Payloads {
		flags |= headerPayloads
	}
	b = append(b, flags)
	return binary.LittleEndian.AppendUint64(b, uint64(h.Start.UnixNano()))
}

// Write encodes r (its Msg with the codec, or its Packet or Note) and
// writes it. Packet payloads are written only when the header says
// payloads are recorded.
func (w *Writer) Write(r *Record) error {
	if w.err != nil {
		return w.err
	}
	if r.Kind == KindPacket {
		// A source repeated from the connection's previous packet is left
		// out, as the Recorder does.
		p := &r.Packet
		if w.lastSrc == nil {
			w.lastSrc = make(map[uint64]wire.NodePublic)
		}
		last, ok := w.lastSrc[p.SrcConn]
		same := ok && last == p.Src
		if !same {
			w.lastSrc[p.SrcConn] = p.Src
		}
		w.scratch = appendPacketRecord(w.scratch[:0], r.Seq, r.At, p.SrcConn, &p.Src, &p.Dst, p.Size, p.Disco, p.Forwarded, same, p.Payload, w.payloads)
	} else {
		w.scratch = AppendRecord(w.scratch[:0], r, w.payloads)
	}
	return w.WriteEncoded(w.scratch)
}

// WriteEncoded writes records already encoded (AppendRecord,
// AppendMessage, AppendPacket, AppendNote), as one write.
func (w *Writer) WriteEncoded(p []byte) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("journal: write after Close")
	}
	if _, err := w.w.Write(p); err != nil {
		w.err = err
	}
	return w.err
}

// Flush flushes the underlying writer if it has a Flush method.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if f, ok := w.w.(interface{ Flush() error }); ok {
		w.err = f.Flush()
	}
	return w.err
}

// Close writes the end record, which marks the journal complete, and
// flushes. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if err := w.WriteEncoded(AppendEnd(nil)); err != nil {
		return err
	}
	w.closed = true
	return w.Flush()
}

// beginRecord reserves one byte for the length, which is all most
// records need (a packet without its payload is about 80 bytes), and
// writes the body's common part; endRecord fills in the length, moving
// the body right if the length takes more, and appends the checksum.
func beginRecord(b []byte, kind Kind, seq uint64, at time.Duration, target byte, id uint64, typ MsgType) ([]byte, int) {
	start := len(b)
	b = append(b, 0, byte(kind))
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendUvarint(b, uint64(max(at, 0)))
	b = append(b, target)
	b = binary.AppendUvarint(b, id)
	b = binary.AppendUvarint(b, uint64(typ))
	return b, start
}

func endRecord(b []byte, start int) []byte {
	body := len(b) - start - 1
	if body < 0x80 {
		b[start] = byte(body)
	} else {
		var lb [binary.MaxVarintLen64]byte
		n := binary.PutUvarint(lb[:], uint64(body))
		b = append(b, lb[:n-1]...) // room for the extra length bytes
		copy(b[start+n:], b[start+1:start+1+body])
		copy(b[start:], lb[:n])
	}
	n := len(b) - start - body
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start+n:], castagnoli))
}

// AppendMessage appends a KindMessage record of msg delivered to target.
// A body that would exceed MaxRecordBytes (a SendPeerPresence of tens of
// thousands of updates) is recorded as TypeOpaque instead, so the journal
// stays readable.
func AppendMessage(b []byte, seq uint64, at time.Duration, target Target, msg any) []byte {
	return appendMessageRecord(b, seq, at, kindIndex(target.Kind), target.ID, msg)
}

func appendMessageRecord(b []byte, seq uint64, at time.Duration, target byte, id uint64, msg any) []byte {
	b, start := beginRecord(b, KindMessage, seq, at, target, id, 0)
	typeAt := len(b) - 1 // TypeOpaque's uvarint is one byte: patched below
	b, typ := appendMessage(b, msg)
	if len(b)-start-1 > MaxRecordBytes {
		b = appendString(b[:typeAt+1], "oversized "+opaqueName(msg))
		typ = TypeOpaque
	}
	if typ >= 0x80 {
		// Two uvarint bytes for the type: make room for the second.
		b = append(b, 0)
		copy(b[typeAt+2:], b[typeAt+1:])
		b[typeAt], b[typeAt+1] = byte(typ)|0x80, byte(typ>>7)
	} else {
		b[typeAt] = byte(typ)
	}
	return endRecord(b, start)
}

// AppendPacket appends a KindPacket record for p, read by connection
// p.SrcConn. The payload is written only when payloads is set (and must
// then be p.Size bytes).
func AppendPacket(b []byte, seq uint64, at time.Duration, p *PacketRecord, payloads bool) []byte {
	return appendPacketRecord(b, seq, at, p.SrcConn, &p.Src, &p.Dst, p.Size, p.Disco, p.Forwarded, false, p.Payload, payloads)
}

// clientIndex is ActorClient's index in actors.ActorKinds.
var clientIndex = kindIndex(actors.ActorClient)

func appendPacketRecord(b []byte, seq uint64, at time.Duration, conn uint64, src, dst *wire.NodePublic, size int, disco, forwarded, sameSrc bool, payload []byte, payloads bool) []byte {
	b, start := beginRecord(b, KindPacket, seq, at, clientIndex, conn, TypePacket)
	b = binary.AppendUvarint(b, conn)
	var flags byte
	if disco {
		flags |= packetDisco
	}
	if forwarded {
		flags |= packetForwarded
	}
	withPayload := payloads && len(payload) == size
	if withPayload {
		flags |= packetPayload
	}
	if sameSrc {
		flags |= packetSameSrc
	}
	b = append(b, flags)
	if !sameSrc {
		b = append(b, src[:]...)
	}
	b = append(b, dst[:]...)
	b = binary.AppendUvarint(b, uint64(size))
	if withPayload {
		b = append(b, payload...)
	}
	return endRecord(b, start)
}

// Packet record flags.
const (
	packetDisco     = 1 << 0
	packetForwarded = 1 << 1
	packetPayload   = 1 << 2
	// packetSameSrc: the source is the one of the previous packet record
	// of the same connection, and is left out (32 of a record's 50 bytes
	// or so: a client's packets all have its own key as source).
	packetSameSrc = 1 << 3
)

// AppendNote appends a KindNote record.
func AppendNote(b []byte, seq uint64, at time.Duration, text string) []byte {
	if len(text) > MaxRecordBytes/2 {
		text = text[:MaxRecordBytes/2]
	}
	b, start := beginRecord(b, KindNote, seq, at, noTargetKind, 0, TypeNote)
	b = appendString(b, text)
	return endRecord(b, start)
}

// AppendEnd appends the end record.
func AppendEnd(b []byte) []byte {
	b, start := beginRecord(b, KindEnd, 0, 0, noTargetKind, 0, TypeEnd)
	return endRecord(b, start)
}

// AppendRecord appends r in full. Type is taken from the encoding, not
// from r.Type.
func AppendRecord(b []byte, r *Record, payloads bool) []byte {
	switch r.Kind {
	case KindPacket:
		p := &r.Packet
		return appendPacketRecord(b, r.Seq, r.At, p.SrcConn, &p.Src, &p.Dst, p.Size, p.Disco, p.Forwarded, false, p.Payload, payloads)
	case KindNote:
		return AppendNote(b, r.Seq, r.At, r.Note)
	case KindEnd:
		return AppendEnd(b)
	default:
		return appendMessageRecord(b, r.Seq, r.At, kindIndex(r.Target.Kind), r.Target.ID, r.Msg)
	}
}

func opaqueName(msg any) string {
	if msg == nil {
		return "<nil>"
	}
	// reflect.Type.String does not allocate: the name is in the binary.
	return reflect.TypeOf(msg).String()
}
