package wire

import "sync"

// Packet is one relayed payload, stored already laid out as the RecvPacket
// frame it will leave as:
//
//	header(5) | source key(32) | payload
//
// so the destination's writer copies it out in one piece, whether it
// arrived as a SendPacket (the reader writes the sender's key in front) or
// as a ForwardPacket (the reader writes the forwarded source). Packets come
// from size-classed pools; whoever drops or writes a packet releases it.
type Packet struct {
	buf   []byte // full capacity of the size class
	n     int    // payload length
	class int8

	// QueuedAt is when the packet entered a destination queue, in the
	// caller's clock units; it lets the writer measure queue residence.
	QueuedAt int64

	// Forwarded marks a packet a mesh peer relayed in (ForwardPacket): its
	// source is connected to another server of the region, not here.
	Forwarded bool
}

// recvPrefix is the part of a RecvPacket frame in front of the payload.
const recvPrefix = HeaderLen + KeyLen

// Size classes. Most relayed traffic is WireGuard packets of at most about
// 1.3 KiB and disco messages of a few hundred bytes, so the small class
// covers nearly everything; the largest covers the protocol maximum.
var packetClasses = [...]int{
	2 << 10,
	16 << 10,
	recvPrefix + MaxPacketSize,
}

var packetPools [len(packetClasses)]sync.Pool

func init() {
	for i := range packetPools {
		size, class := packetClasses[i], int8(i)
		packetPools[i].New = func() any {
			return &Packet{buf: make([]byte, size), class: class}
		}
	}
}

// NewPacket returns a pooled packet with room for payloadLen bytes
// (0 ≤ payloadLen ≤ MaxPacketSize). Its payload bytes are not cleared.
func NewPacket(payloadLen int) *Packet {
	need := recvPrefix + payloadLen
	for i, size := range packetClasses {
		if need <= size {
			p := packetPools[i].Get().(*Packet)
			p.n = payloadLen
			return p
		}
	}
	panic("wire: NewPacket beyond MaxPacketSize")
}

// Release returns the packet to its pool. The packet must not be used
// afterwards.
func (p *Packet) Release() {
	p.QueuedAt, p.Forwarded = 0, false
	packetPools[p.class].Put(p)
}

// Payload is the packet's payload, writable until the packet is queued.
func (p *Packet) Payload() []byte { return p.buf[recvPrefix : recvPrefix+p.n] }

// Len is the payload length.
func (p *Packet) Len() int { return p.n }

// SetSource stamps the RecvPacket header and the source key in front of
// the payload, completing the frame.
func (p *Packet) SetSource(src NodePublic) {
	PutHeader(p.buf, FrameRecvPacket, uint32(KeyLen+p.n))
	copy(p.buf[HeaderLen:recvPrefix], src[:])
}

// Source returns the key stamped by SetSource.
func (p *Packet) Source() NodePublic { return NodePublic(p.buf[HeaderLen:recvPrefix]) }

// RecvFrame is the complete RecvPacket frame: header, source key, payload.
func (p *Packet) RecvFrame() []byte { return p.buf[:recvPrefix+p.n] }

// IsDisco reports whether the payload looks like a disco message.
func (p *Packet) IsDisco() bool { return LooksLikeDisco(p.Payload()) }
