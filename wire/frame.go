package wire

import "encoding/binary"

// FrameType is the first byte of every frame header.
type FrameType byte

// Frame types of protocol version 2. Each comment gives the body layout.
// Types 0x0b–0x0f are unassigned; receivers skip frame types they do not
// know, so new types can be added without breaking old peers.
const (
	FrameServerKey     FrameType = 0x01 // magic(8) | server public key(32) | ignored future bytes
	FrameClientInfo    FrameType = 0x02 // client public key(32) | nonce(24) | tag(16) | sealed JSON
	FrameServerInfo    FrameType = 0x03 // nonce(24) | tag(16) | sealed JSON
	FrameSendPacket    FrameType = 0x04 // destination key(32) | payload(0..65536)
	FrameRecvPacket    FrameType = 0x05 // source key(32) | payload(0..65536)
	FrameKeepAlive     FrameType = 0x06 // empty; server to client, no reply expected
	FrameNotePreferred FrameType = 0x07 // 1 byte: non-zero means "this is my home DERP"
	FramePeerGone      FrameType = 0x08 // peer key(32) | reason(1)
	FramePeerPresent   FrameType = 0x09 // key(32) | IPv6 or 4in6 address(16) | port(2) | flags(1)
	FrameForwardPacket FrameType = 0x0a // source key(32) | destination key(32) | payload(0..65536)
	FrameWatchConns    FrameType = 0x10 // empty; mesh peers only
	FrameClosePeer     FrameType = 0x11 // target key(32); mesh peers only
	FramePing          FrameType = 0x12 // 8 opaque bytes (server accepts 8..1000, answers the first 8)
	FramePong          FrameType = 0x13 // the 8 bytes of the ping being answered
	FrameHealth        FrameType = 0x14 // UTF-8 problem text; empty means healthy again
	FrameRestarting    FrameType = 0x15 // reconnect-in ms(4) | try-for ms(4)
)

var frameTypeNames = [...]string{
	FrameServerKey:     "ServerKey",
	FrameClientInfo:    "ClientInfo",
	FrameServerInfo:    "ServerInfo",
	FrameSendPacket:    "SendPacket",
	FrameRecvPacket:    "RecvPacket",
	FrameKeepAlive:     "KeepAlive",
	FrameNotePreferred: "NotePreferred",
	FramePeerGone:      "PeerGone",
	FramePeerPresent:   "PeerPresent",
	FrameForwardPacket: "ForwardPacket",
	FrameWatchConns:    "WatchConns",
	FrameClosePeer:     "ClosePeer",
	FramePing:          "Ping",
	FramePong:          "Pong",
	FrameHealth:        "Health",
	FrameRestarting:    "Restarting",
}

// String returns the frame type's name, or Unknown(0x..) for a type
// this package does not define.
func (t FrameType) String() string {
	if int(t) < len(frameTypeNames) && frameTypeNames[t] != "" {
		return frameTypeNames[t]
	}
	return "Unknown(0x" + hexByte(byte(t)) + ")"
}

func hexByte(b byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[b>>4], digits[b&0x0f]})
}

// Sizes and limits of the protocol. Each is a wire-compatibility fact, not
// a tuning knob: changing one breaks interoperation with Tailscale clients.
const (
	// ProtocolVersion is the only framing this package speaks: RecvPacket
	// always carries the source key.
	ProtocolVersion = 2

	// HeaderLen is the size of a frame header: type(1) + length(4).
	HeaderLen = 5

	// KeyLen is the size of a node public or private key.
	KeyLen = 32

	// MaxPacketSize is the largest payload a SendPacket, ForwardPacket or
	// RecvPacket may carry.
	MaxPacketSize = 64 << 10

	// MaxRecvFrameBody is the largest RecvPacket body: source key plus the
	// largest payload.
	MaxRecvFrameBody = KeyLen + MaxPacketSize

	// MaxForwardFrameBody is the largest ForwardPacket body.
	MaxForwardFrameBody = 2*KeyLen + MaxPacketSize

	// MinClientInfoLen is the smallest ClientInfo body that can hold a key
	// and an (empty) box; MaxClientInfoLen bounds what a client can make
	// the server buffer before it has proven anything.
	MinClientInfoLen = KeyLen + BoxOverhead
	MaxClientInfoLen = 256 << 10

	// MinPingLen and MaxPingLen bound the Ping bodies a server accepts:
	// it answers with the first PingDataLen bytes and ignores the rest.
	PingDataLen = 8
	MinPingLen  = PingDataLen
	MaxPingLen  = 1000

	// ServerKeyBodyLen is what the server sends: magic plus its key.
	ServerKeyBodyLen = len(serverKeyMagic) + KeyLen

	// PeerGoneLen and PeerPresentLen are the body sizes this server writes.
	PeerGoneLen    = KeyLen + 1
	PeerPresentLen = KeyLen + 16 + 2 + 1
)

// serverKeyMagic opens the ServerKey frame: "DERP" followed by the UTF-8
// encoding of U+1F511 (a key).
var serverKeyMagic = [8]byte{'D', 'E', 'R', 'P', 0xf0, 0x9f, 0x94, 0x91}

// PeerGoneReason says why a PeerGone frame was sent.
type PeerGoneReason byte

const (
	// PeerGoneDisconnected: the peer sent to you and has since left the
	// region (no local connection, no mesh peer announces it).
	PeerGoneDisconnected PeerGoneReason = 0x00
	// PeerGoneNotHere: you sent a disco packet to a key this region does
	// not have.
	PeerGoneNotHere PeerGoneReason = 0x01
)

// String returns the reason as logs show it, or unknown(0x..) for a
// value this package does not define.
func (r PeerGoneReason) String() string {
	switch r {
	case PeerGoneDisconnected:
		return "disconnected"
	case PeerGoneNotHere:
		return "not-here"
	}
	return "unknown(0x" + hexByte(byte(r)) + ")"
}

// PeerPresentFlags describe a connection announced to watchers.
type PeerPresentFlags byte

// PeerPresent flags, the last byte of a PeerPresent body. A flags byte of
// 0 comes from an old server that sends no flags.
const (
	PeerPresentIsRegular  PeerPresentFlags = 0x01 // set only when no other bit applies
	PeerPresentIsMeshPeer PeerPresentFlags = 0x02 // presented the mesh key
	PeerPresentIsProber   PeerPresentFlags = 0x04 // said IsProber in ClientInfo
	PeerPresentNotIdeal   PeerPresentFlags = 0x08 // sent a non-empty Ideal-Node header
)

// PutHeader writes a frame header into b[:HeaderLen].
func PutHeader(b []byte, t FrameType, bodyLen uint32) {
	_ = b[4]
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:5], bodyLen)
}

// AppendHeader appends a frame header to b.
func AppendHeader(b []byte, t FrameType, bodyLen uint32) []byte {
	return append(b, byte(t), byte(bodyLen>>24), byte(bodyLen>>16), byte(bodyLen>>8), byte(bodyLen))
}

// ParseHeader reads a frame header from b[:HeaderLen].
func ParseHeader(b []byte) (FrameType, uint32) {
	_ = b[4]
	return FrameType(b[0]), binary.BigEndian.Uint32(b[1:5])
}

// discoMagic starts every Tailscale disco message: "TS" followed by the
// UTF-8 encoding of U+1F4AC (a speech balloon).
var discoMagic = [6]byte{'T', 'S', 0xf0, 0x9f, 0x92, 0xac}

// minDiscoLen is the disco magic, the sender's disco key and a nonce: the
// shortest payload that can be a disco message.
const minDiscoLen = len(discoMagic) + KeyLen + 24

// LooksLikeDisco reports whether a payload is shaped like a Tailscale disco
// message. Disco packets get their own queue so bulk data cannot starve
// path discovery, and only they earn a PeerGone(NotHere) reply.
func LooksLikeDisco(payload []byte) bool {
	return len(payload) >= minDiscoLen && [6]byte(payload[:6]) == discoMagic
}
