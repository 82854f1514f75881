// Package stun is derpd's STUN server. Tailscale clients send it a Binding
// Request to learn the public address and port their NAT gives them; the
// server answers with that address and ignores everything else.
//
// Only the exact request shape Tailscale sends is accepted (a SOFTWARE
// attribute saying "tailnode" and a correct FINGERPRINT as the last
// attribute), as upstream's derper does. Being this picky keeps the relay
// from becoming a free public STUN service, and the fingerprint check
// drops stray UDP noise that happens to start like a STUN header.
package stun

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
)

// Wire constants (RFC 5389) and the values Tailscale puts in them.
const (
	headerLen     = 20 // type(2) length(2) cookie(4) transaction ID(12)
	attrHeaderLen = 4  // type(2) length(2)
	magicCookie   = 0x2112a442

	typeBindingRequest  = 0x0001
	typeBindingResponse = 0x0101

	attrXorMappedAddress = 0x0020
	attrSoftware         = 0x8022
	attrFingerprint      = 0x8028

	// The FINGERPRINT is a CRC-32 XORed with this constant ("STUN"), so it
	// cannot be confused with a CRC that some other protocol carried in
	// the same datagram would have.
	fingerprintXOR = 0x5354554e

	// tailscaleSoftware is what every Tailscale client puts in SOFTWARE. It
	// is 8 bytes long, so the attribute needs no padding.
	tailscaleSoftware = "tailnode"

	familyIPv4 = 0x01
	familyIPv6 = 0x02
)

// Message sizes, for callers sizing buffers.
const (
	// RequestLen is the size of the request AppendBindingRequest builds.
	RequestLen = headerLen + attrHeaderLen + len(tailscaleSoftware) + attrHeaderLen + 4
	// MaxResponseLen is the size of the largest (IPv6) response.
	MaxResponseLen = headerLen + attrHeaderLen + 4 + 16
)

// TxID is a STUN transaction ID, chosen at random by the client; it is how
// the client matches our response to its request.
type TxID [12]byte

// ParseBindingRequest reports whether b is a Binding Request from a
// Tailscale client and, if so, returns its transaction ID. It accepts any
// well-formed message meeting upstream's rules, not only the canonical
// 40-byte one, so a future client that adds an attribute keeps working.
// It never allocates.
func ParseBindingRequest(b []byte) (txID TxID, ok bool) {
	if len(b) < headerLen ||
		b[0]&0xc0 != 0 || // STUN leaves these bits zero to tell itself apart when multiplexed
		binary.BigEndian.Uint32(b[4:8]) != magicCookie ||
		binary.BigEndian.Uint16(b[0:2]) != typeBindingRequest {
		return TxID{}, false
	}

	// Walk the attributes to the end of the datagram. The header's length
	// field is deliberately not consulted (upstream does not either); the
	// datagram boundary is what the kernel vouches for.
	sawSoftware := false
	var lastType uint16
	lastOff, lastLen := -1, 0
	for off := headerLen; off < len(b); {
		if len(b)-off < attrHeaderLen {
			return TxID{}, false
		}
		typ := binary.BigEndian.Uint16(b[off:])
		n := int(binary.BigEndian.Uint16(b[off+2:]))
		val := off + attrHeaderLen
		next := val + ((n + 3) &^ 3) // values are padded to a 4-byte boundary
		if next > len(b) {
			return TxID{}, false
		}
		if typ == attrSoftware && string(b[val:val+n]) == tailscaleSoftware {
			sawSoftware = true
		}
		lastType, lastOff, lastLen = typ, off, n
		off = next
	}
	if !sawSoftware || lastOff < 0 || lastType != attrFingerprint || lastLen != 4 {
		return TxID{}, false
	}
	// The fingerprint covers everything before its own attribute.
	got := binary.BigEndian.Uint32(b[lastOff+attrHeaderLen:])
	if got != crc32.ChecksumIEEE(b[:lastOff])^fingerprintXOR {
		return TxID{}, false
	}
	copy(txID[:], b[8:headerLen])
	return txID, true
}

// AppendBindingResponse appends a Binding Success Response telling the
// client that its request came from addr, and returns the extended
// slice. The response carries XOR-MAPPED-ADDRESS only, which is all
// Tailscale clients read.
//
// An IPv4 peer on a dual-stack socket shows up as an IPv4-mapped IPv6
// address; it is answered as IPv4, since that is the address its NAT
// actually gave it. An invalid addr appends nothing.
func AppendBindingResponse(dst []byte, txID TxID, addr netip.AddrPort) []byte {
	ip := addr.Addr().Unmap()
	var family byte
	var ipLen int
	switch {
	case ip.Is4():
		family, ipLen = familyIPv4, 4
	case ip.Is6():
		family, ipLen = familyIPv6, 16
	default:
		return dst
	}
	valueLen := 4 + ipLen // reserved(1) family(1) port(2) address

	dst = binary.BigEndian.AppendUint16(dst, typeBindingResponse)
	dst = binary.BigEndian.AppendUint16(dst, uint16(attrHeaderLen+valueLen))
	dst = binary.BigEndian.AppendUint32(dst, magicCookie)
	dst = append(dst, txID[:]...)

	dst = binary.BigEndian.AppendUint16(dst, attrXorMappedAddress)
	dst = binary.BigEndian.AppendUint16(dst, uint16(valueLen))
	dst = append(dst, 0, family)
	// Port and address are XORed so that NATs which "helpfully" rewrite
	// any copy of the public address they find in a payload leave ours
	// alone. The port uses the cookie's top half, the address the cookie
	// followed by the transaction ID (IPv4 only reaches the cookie).
	dst = binary.BigEndian.AppendUint16(dst, addr.Port()^uint16(magicCookie>>16))
	var key [16]byte
	binary.BigEndian.PutUint32(key[:4], magicCookie)
	copy(key[4:], txID[:])
	a16 := ip.As16() // an IPv4 address sits in the last four bytes
	for i, v := range a16[16-ipLen:] {
		dst = append(dst, v^key[i])
	}
	return dst
}

// AppendBindingRequest appends the 40-byte Binding Request a Tailscale
// client sends (header, SOFTWARE "tailnode", FINGERPRINT) and returns the
// extended slice. derpd itself only answers requests; this exists for
// tests and probing tools.
func AppendBindingRequest(dst []byte, txID TxID) []byte {
	start := len(dst)
	dst = binary.BigEndian.AppendUint16(dst, typeBindingRequest)
	dst = binary.BigEndian.AppendUint16(dst, uint16(RequestLen-headerLen))
	dst = binary.BigEndian.AppendUint32(dst, magicCookie)
	dst = append(dst, txID[:]...)

	dst = binary.BigEndian.AppendUint16(dst, attrSoftware)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(tailscaleSoftware)))
	dst = append(dst, tailscaleSoftware...)

	// Only this message's bytes count, not whatever dst held before.
	fp := crc32.ChecksumIEEE(dst[start:]) ^ fingerprintXOR
	dst = binary.BigEndian.AppendUint16(dst, attrFingerprint)
	dst = binary.BigEndian.AppendUint16(dst, 4)
	return binary.BigEndian.AppendUint32(dst, fp)
}
