// Package stun is derpd's STUN server: it answers the binding requests
// Tailscale clients send to learn their public address and port, and
// ignores everything else. It accepts only Tailscale's own request shape
// (SOFTWARE "tailnode", FINGERPRINT last), as upstream does, so the
// server is not a general-purpose reflector for other STUN users.
package stun

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
)

// Wire constants from RFC 5389, as Tailscale uses them.
const (
	headerLen       = 20
	magicCookie     = 0x2112a442
	typeBindingReq  = 0x0001
	typeBindingResp = 0x0101

	attrSoftware      = 0x8022
	attrFingerprint   = 0x8028
	attrXorMapped     = 0x0020
	fingerprintXOR    = 0x5354554e
	tailscaleSoftware = "tailnode"
)

// TxID is a STUN transaction ID: the client matches our answer to its
// request by it.
type TxID [12]byte

// ParseBindingRequest accepts exactly the requests a Tailscale client
// sends and returns their transaction ID. It never allocates.
func ParseBindingRequest(b []byte) (TxID, bool) {
	var tx TxID
	if len(b) < headerLen || b[0]&0xc0 != 0 ||
		binary.BigEndian.Uint32(b[4:8]) != magicCookie ||
		binary.BigEndian.Uint16(b[0:2]) != typeBindingReq {
		return tx, false
	}
	copy(tx[:], b[8:20])

	// Walk the attributes to the end of the datagram (the header's length
	// field is not trusted). The software attribute must say "tailnode"
	// and the last attribute must be a correct fingerprint.
	sawSoftware, lastWasFingerprint := false, false
	for off := headerLen; off < len(b); {
		if len(b)-off < 4 {
			return tx, false
		}
		typ := binary.BigEndian.Uint16(b[off:])
		n := int(binary.BigEndian.Uint16(b[off+2:]))
		padded := (n + 3) &^ 3
		if len(b)-off-4 < padded {
			return tx, false
		}
		val := b[off+4 : off+4+n]
		lastWasFingerprint = false
		switch typ {
		case attrSoftware:
			sawSoftware = string(val) == tailscaleSoftware
		case attrFingerprint:
			if n != 4 {
				return tx, false
			}
			want := crc32.ChecksumIEEE(b[:off]) ^ fingerprintXOR
			if binary.BigEndian.Uint32(val) != want {
				return tx, false
			}
			lastWasFingerprint = true
		}
		off += 4 + padded
	}
	return tx, sawSoftware && lastWasFingerprint
}

// AppendBindingResponse appends a Binding Success carrying addr as
// XOR-MAPPED-ADDRESS. IPv4-mapped IPv6 addresses (how IPv4 peers appear on
// a dual-stack socket) are answered as IPv4.
func AppendBindingResponse(dst []byte, tx TxID, addr netip.AddrPort) []byte {
	ip := addr.Addr().Unmap()
	family, ipLen := byte(0x01), 4
	if ip.Is6() {
		family, ipLen = 0x02, 16
	}
	attrLen := 4 + ipLen
	dst = binary.BigEndian.AppendUint16(dst, typeBindingResp)
	dst = binary.BigEndian.AppendUint16(dst, uint16(4+attrLen))
	dst = binary.BigEndian.AppendUint32(dst, magicCookie)
	dst = append(dst, tx[:]...)
	dst = binary.BigEndian.AppendUint16(dst, attrXorMapped)
	dst = binary.BigEndian.AppendUint16(dst, uint16(attrLen))
	dst = append(dst, 0, family)
	dst = binary.BigEndian.AppendUint16(dst, addr.Port()^(magicCookie>>16))
	// The address is XORed with the cookie followed by the transaction
	// ID, so NATs that rewrite addresses inside packets leave it alone.
	var key [16]byte
	binary.BigEndian.PutUint32(key[:4], magicCookie)
	copy(key[4:], tx[:])
	raw := ip.As16()
	b := raw[16-ipLen:]
	if ipLen == 4 {
		v4 := ip.As4()
		b = v4[:]
	}
	for i := range ipLen {
		dst = append(dst, b[i]^key[i])
	}
	return dst
}

// AppendBindingRequest appends the 40-byte request a Tailscale client
// sends: header, SOFTWARE "tailnode", FINGERPRINT.
func AppendBindingRequest(dst []byte, tx TxID) []byte {
	start := len(dst)
	dst = binary.BigEndian.AppendUint16(dst, typeBindingReq)
	dst = binary.BigEndian.AppendUint16(dst, 20) // two attributes: 12 + 8 bytes
	dst = binary.BigEndian.AppendUint32(dst, magicCookie)
	dst = append(dst, tx[:]...)
	dst = binary.BigEndian.AppendUint16(dst, attrSoftware)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(tailscaleSoftware)))
	dst = append(dst, tailscaleSoftware...)
	fp := crc32.ChecksumIEEE(dst[start:]) ^ fingerprintXOR
	dst = binary.BigEndian.AppendUint16(dst, attrFingerprint)
	dst = binary.BigEndian.AppendUint16(dst, 4)
	return binary.BigEndian.AppendUint32(dst, fp)
}
