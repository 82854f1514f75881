package journal

import (
	"errors"
	"hash/crc32"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// Magic opens every journal.
const Magic = "DERPDJNL"

// Version is the format this package writes and reads.
const Version = 1

// HeaderLen is the size of the header: magic, version, flags, start.
const HeaderLen = len(Magic) + 1 + 1 + 8

// MaxRecordBytes bounds one record's body. The largest honest record is a
// packet with its payload (64 KiB) or a big SendPeerPresence; a length
// above this is corruption, refused before anything is allocated for it.
const MaxRecordBytes = 1 << 20

// headerPayloads is the header's flag bit for recorded payloads.
const headerPayloads = 1 << 0

// noTargetKind stands for Target{} (a note has no target).
const noTargetKind = 0xff

// castagnoli is CRC-32C's table: hardware-accelerated on amd64 and arm64.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Kind says what a record holds.
type Kind uint8

const (
	KindMessage Kind = 1 // a message an actor received (recorded as its mailbox handed it over)
	KindPacket  Kind = 2 // a packet a reader routed toward a destination key (the data plane's mailbox)
	KindNote    Kind = 3 // text from the recorder, e.g. "recording stopped at the 1 GiB limit"
	// KindEnd closes a complete journal (Writer.Close). The Reader never
	// returns it: it answers io.EOF.
	KindEnd Kind = 4
)

func (k Kind) String() string {
	switch k {
	case KindMessage:
		return "message"
	case KindPacket:
		return "packet"
	case KindNote:
		return "note"
	case KindEnd:
		return "end"
	}
	return "kind(" + itoa(uint64(k)) + ")"
}

// Target is the actor a record is about: for KindMessage the actor that
// received the message; for KindPacket the client actor of the connection
// the packet was read from (the same as PacketRecord.SrcConn).
type Target struct {
	Kind actors.ActorKind
	// ID: the connection id for client actors, the link's session/actor
	// number for mesh links, 0 for singletons (registry, flows, mesh
	// manager, rejects, verify).
	ID uint64
}

// PacketRecord is one packet a reader routed.
type PacketRecord struct {
	SrcConn   uint64          // connection it was read from
	Src, Dst  wire.NodePublic // true source key, destination key
	Size      int             // payload bytes
	Disco     bool
	Forwarded bool   // came in as ForwardPacket from a mesh peer
	Payload   []byte // only when the journal records payloads
}

// Record is one entry of a journal.
type Record struct {
	Kind   Kind
	Seq    uint64        // order of recording across the whole process (one atomic counter)
	At     time.Duration // since the journal's start
	Target Target
	Type   MsgType
	Msg    any          // KindMessage: the decoded message, as the actors' own message type (e.g. *actors.Register)
	Packet PacketRecord // KindPacket
	Note   string       // KindNote; for TypeOpaque the Go type name
}

// Header is what the file says about the whole journal.
type Header struct {
	Start    time.Time
	Payloads bool // packet records carry their payloads
}

// ErrUnterminated is wrapped by the error the Reader returns when the
// journal stops at a record boundary without its end record: everything
// before is intact, but the recording did not end cleanly (the process
// was killed) or the file was cut.
var ErrUnterminated = errors.New("journal ends without its end record (cut short, or the recorder was not closed)")

func kindIndex(k actors.ActorKind) byte {
	if k == "" {
		return noTargetKind
	}
	for i, x := range actors.ActorKinds {
		if x == k {
			return byte(i)
		}
	}
	return noTargetKind
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return string(b[i:])
}
