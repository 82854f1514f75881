package stun

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"net/netip"
	"testing"
)

var goldTx = TxID{0xb7, 0x0e, 0x1c, 0x55, 0x90, 0x2a, 0x61, 0xf3, 0x04, 0xd8, 0x3e, 0xa9}

// Golden messages for goldTx, produced once by Tailscale's own net/stun
// (v1.102.5: Request, and Response for the two addresses below). They pin
// us to what real clients send and accept, independently of both this
// package and the field-by-field builders in this file.
const (
	goldRequest    = "000100142112a442b70e1c55902a61f304d83ea9802200087461696c6e6f6465802800043e2b551d"
	goldResponseV4 = "0101000c2112a442b70e1c55902a61f304d83ea900200008000183bbea12d545"
	goldResponseV6 = "010100182112a442b70e1c55902a61f304d83ea900200014000283bb0113a9fa32ad1c55902aebdd07a84d9d"
	goldAddrV4     = "203.0.113.7:41641"
	goldAddrV6     = "[2001:db8:85a3::8a2e:370:7334]:41641"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var cookie = []byte{0x21, 0x12, 0xa4, 0x42}

// header builds a 20-byte STUN header; the length field is filled in by
// the caller when it matters.
func header(msgType uint16, length uint16, tx TxID) []byte {
	b := binary.BigEndian.AppendUint16(nil, msgType)
	b = binary.BigEndian.AppendUint16(b, length)
	b = append(b, cookie...)
	return append(b, tx[:]...)
}

// attr appends a TLV attribute with its value zero-padded to 4 bytes.
func attr(b []byte, typ uint16, val string) []byte {
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(val)))
	b = append(b, val...)
	for len(val)%4 != 0 {
		b = append(b, 0)
		val += "\x00"
	}
	return b
}

// withFingerprint appends a FINGERPRINT attribute that is correct for
// msg, so a test case built with it carries only the defect it names.
func withFingerprint(msg []byte) []byte {
	fp := crc32.ChecksumIEEE(msg) ^ 0x5354554e
	msg = append(msg, 0x80, 0x28, 0x00, 0x04)
	return binary.BigEndian.AppendUint32(msg, fp)
}

// buildRequest assembles Tailscale's request field by field.
func buildRequest(tx TxID) []byte {
	return withFingerprint(attr(header(0x0001, 20, tx), 0x8022, "tailnode"))
}

// buildResponse assembles the expected response field by field.
func buildResponse(tx TxID, ap netip.AddrPort) []byte {
	ip := ap.Addr().Unmap()
	var family byte = 1
	addr := ip.AsSlice()
	if ip.Is6() {
		family = 2
	}
	b := header(0x0101, uint16(8+len(addr)), tx)
	b = append(b, 0x00, 0x20)
	b = binary.BigEndian.AppendUint16(b, uint16(4+len(addr)))
	b = append(b, 0x00, family)
	b = append(b, byte(ap.Port()>>8)^0x21, byte(ap.Port())^0x12)
	key := append(bytes.Clone(cookie), tx[:]...)
	for i := range addr {
		b = append(b, addr[i]^key[i])
	}
	return b
}

func TestBindingRequest(t *testing.T) {
	want := unhex(t, goldRequest)
	if built := buildRequest(goldTx); !bytes.Equal(built, want) {
		t.Fatalf("test's own builder disagrees with upstream:\n got %x\nwant %x", built, want)
	}
	got := AppendBindingRequest(nil, goldTx)
	if !bytes.Equal(got, want) || len(got) != 40 || RequestLen != 40 {
		t.Fatalf("AppendBindingRequest = %x (len %d, RequestLen %d)\nwant %x", got, len(got), RequestLen, want)
	}
	// Earlier bytes in dst must not leak into the fingerprint.
	got = AppendBindingRequest([]byte("pre"), goldTx)
	if string(got[:3]) != "pre" || !bytes.Equal(got[3:], want) {
		t.Fatalf("AppendBindingRequest after a prefix = %x", got)
	}

	tx, ok := ParseBindingRequest(want)
	if !ok || tx != goldTx {
		t.Fatalf("ParseBindingRequest(Tailscale request) = %x, %v; want %x, true", tx, ok, goldTx)
	}
	other := TxID{12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	if tx, ok := ParseBindingRequest(AppendBindingRequest(nil, other)); !ok || tx != other {
		t.Fatalf("round trip of %x gave %x, %v", other, tx, ok)
	}
}

// TestParseAcceptsVariants pins the rules as rules, not as one byte
// string: well-formed requests that differ from the canonical one in ways
// upstream tolerates must still be answered.
func TestParseAcceptsVariants(t *testing.T) {
	cases := map[string][]byte{
		"header length zero": withFingerprint(attr(header(0x0001, 0, goldTx), 0x8022, "tailnode")),
		"header length huge": withFingerprint(attr(header(0x0001, 0xffff, goldTx), 0x8022, "tailnode")),
		"padded attribute first": withFingerprint(attr(
			attr(header(0x0001, 32, goldTx), 0x0006, "alice"), 0x8022, "tailnode")),
		"padded attribute after software": withFingerprint(attr(
			attr(header(0x0001, 32, goldTx), 0x8022, "tailnode"), 0x0006, "ab")),
		"second software differs": withFingerprint(attr(
			attr(header(0x0001, 32, goldTx), 0x8022, "tailnode"), 0x8022, "other")),
		"earlier bogus fingerprint": withFingerprint(attr(
			attr(header(0x0001, 32, goldTx), 0x8028, "xyzzy"), 0x8022, "tailnode")),
	}
	for name, b := range cases {
		if tx, ok := ParseBindingRequest(b); !ok || tx != goldTx {
			t.Errorf("%s: ParseBindingRequest(%x) = %x, %v; want accepted", name, b, tx, ok)
		}
	}
}

// rejectCases are messages that must be ignored, each with one defect.
// Where it makes sense they carry a fingerprint that is correct for
// their bytes, so the fingerprint check cannot be what rejects them.
func rejectCases() map[string][]byte {
	good := buildRequest(goldTx)
	body := good[:32] // header and SOFTWARE, without the fingerprint
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(body)
		f(b)
		return withFingerprint(b)
	}
	badFP := bytes.Clone(good)
	badFP[39] ^= 0x01
	plainCRC := bytes.Clone(good)
	binary.BigEndian.PutUint32(plainCRC[36:], crc32.ChecksumIEEE(body))
	bodyOnlyCRC := bytes.Clone(good) // fingerprint leaving out the header
	binary.BigEndian.PutUint32(bodyOnlyCRC[36:], crc32.ChecksumIEEE(body[20:])^0x5354554e)
	longFP := append(bytes.Clone(body), 0x80, 0x28, 0x00, 0x08)
	longFP = binary.BigEndian.AppendUint32(longFP, crc32.ChecksumIEEE(body)^0x5354554e)
	longFP = append(longFP, 0, 0, 0, 0)

	return map[string][]byte{
		"nil":                    nil,
		"19 bytes":               good[:19],
		"header only":            good[:20],
		"header and fingerprint": withFingerprint(header(0x0001, 8, goldTx)),

		"wrong cookie":       edit(func(b []byte) { b[7] ^= 0x01 }),
		"top bit set":        edit(func(b []byte) { b[0] |= 0x80 }),
		"second bit set":     edit(func(b []byte) { b[0] |= 0x40 }),
		"binding response":   edit(func(b []byte) { b[0], b[1] = 0x01, 0x01 }),
		"binding indication": edit(func(b []byte) { b[0], b[1] = 0x00, 0x11 }),
		"other method":       edit(func(b []byte) { b[0], b[1] = 0x00, 0x02 }),

		"no software":           withFingerprint(attr(header(0x0001, 20, goldTx), 0x0006, "tailnode")),
		"software type 0x8023":  edit(func(b []byte) { b[21] = 0x23 }),
		"software tailnodX":     edit(func(b []byte) { b[31] = 'X' }),
		"software Tailnode":     edit(func(b []byte) { b[24] = 'T' }),
		"software tailnod":      withFingerprint(attr(header(0x0001, 20, goldTx), 0x8022, "tailnod")),
		"software tailnode NUL": withFingerprint(attr(header(0x0001, 24, goldTx), 0x8022, "tailnode\x00")),
		"software empty":        withFingerprint(attr(header(0x0001, 12, goldTx), 0x8022, "")),

		"bad fingerprint":              badFP,
		"fingerprint without XOR":      plainCRC,
		"fingerprint without header":   bodyOnlyCRC,
		"fingerprint of length 8":      longFP,
		"no fingerprint":               bytes.Clone(body),
		"fingerprint first":            attr(withFingerprint(header(0x0001, 20, goldTx)), 0x8022, "tailnode"),
		"attribute after fingerprint":  attr(bytes.Clone(good), 0x0006, ""),
		"software after fingerprint":   attr(bytes.Clone(good), 0x8022, "tailnode"),
		"fingerprint value truncated":  good[:38],
		"fingerprint header truncated": good[:34],
		"stray bytes after":            append(bytes.Clone(good), 0x00, 0x00),
		"attribute overruns datagram":  edit(func(b []byte) { b[23] = 0x30 }),
		// A 3-byte value with its pad byte cut off, and the fingerprint
		// right behind it: correct for these bytes, and found at the
		// right place by a parser that forgets to skip padding.
		"padding missing": withFingerprint(attr(bytes.Clone(body), 0x0006, "abc")[:39]),
	}
}

func TestParseRejects(t *testing.T) {
	// The helpers that build the cases must produce an acceptable message
	// when there is no defect, or every case below would pass vacuously.
	if _, ok := ParseBindingRequest(withFingerprint(bytes.Clone(buildRequest(goldTx)[:32]))); !ok {
		t.Fatal("control message rejected; the cases below prove nothing")
	}
	for name, b := range rejectCases() {
		if tx, ok := ParseBindingRequest(b); ok || tx != (TxID{}) {
			t.Errorf("%s: ParseBindingRequest(%x) = %x, %v; want rejected with zero TxID", name, b, tx, ok)
		}
	}
}

func TestBindingResponse(t *testing.T) {
	cases := []struct {
		name string
		addr string
		gold string // upstream's bytes, where we have them
		size int
	}{
		{"ipv4", goldAddrV4, goldResponseV4, 32},
		{"ipv6", goldAddrV6, goldResponseV6, 44},
		// A dual-stack socket reports IPv4 peers in mapped form; they get
		// the plain IPv4 answer.
		{"ipv4 mapped", "[::ffff:203.0.113.7]:41641", goldResponseV4, 32},
		// The zone is local to us and has no place on the wire.
		{"ipv6 zone", "[fe80::1%eth0]:3478", "", 44},
		{"ipv4 port 0", "0.0.0.0:0", "", 32},
		{"ipv6 all ones", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "", 44},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ap := netip.MustParseAddrPort(tc.addr)
			want := buildResponse(goldTx, ap)
			if tc.gold != "" && !bytes.Equal(want, unhex(t, tc.gold)) {
				t.Fatalf("test's own builder disagrees with upstream:\n got %x\nwant %s", want, tc.gold)
			}
			got := AppendBindingResponse(nil, goldTx, ap)
			if !bytes.Equal(got, want) || len(got) != tc.size {
				t.Fatalf("AppendBindingResponse(%v) =\n %x (%d bytes)\nwant %x (%d bytes)", ap, got, len(got), want, tc.size)
			}
			got = AppendBindingResponse([]byte{0xaa}, goldTx, ap)
			if got[0] != 0xaa || !bytes.Equal(got[1:], want) {
				t.Fatalf("AppendBindingResponse after a prefix = %x", got)
			}
		})
	}
	if got := AppendBindingResponse([]byte{1, 2}, goldTx, netip.AddrPort{}); !bytes.Equal(got, []byte{1, 2}) {
		t.Fatalf("invalid address: got %x, want dst unchanged", got)
	}
	if MaxResponseLen != 44 {
		t.Fatalf("MaxResponseLen = %d", MaxResponseLen)
	}
}

func TestCodecDoesNotAllocate(t *testing.T) {
	req := buildRequest(goldTx)
	junk := rejectCases()["software tailnodX"]
	buf := make([]byte, 0, MaxResponseLen)
	ap := netip.MustParseAddrPort(goldAddrV6)
	allocs := testing.AllocsPerRun(100, func() {
		tx, ok := ParseBindingRequest(req)
		if !ok {
			t.Fatal("rejected")
		}
		ParseBindingRequest(junk)
		buf = AppendBindingResponse(buf[:0], tx, ap)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per parse and response", allocs)
	}
}

// checkAccepted verifies, without the parser's code, that b meets the
// rules the parser claims it does.
func checkAccepted(t *testing.T, b []byte, tx TxID) {
	t.Helper()
	if len(b) < 28 || b[0] != 0x00 || b[1] != 0x01 || !bytes.Equal(b[4:8], cookie) {
		t.Fatalf("accepted a message that is not a Binding Request: %x", b)
	}
	if TxID(b[8:20]) != tx {
		t.Fatalf("accepted %x but returned TxID %x", b, tx)
	}
	// Rule 5: a correct 4-byte fingerprint is the last attribute, so it
	// must be exactly the last 8 bytes.
	fp := b[len(b)-8:]
	if !bytes.Equal(fp[:4], []byte{0x80, 0x28, 0x00, 0x04}) {
		t.Fatalf("accepted without a trailing FINGERPRINT: %x", b)
	}
	if want := crc32.ChecksumIEEE(b[:len(b)-8]) ^ 0x5354554e; binary.BigEndian.Uint32(fp[4:]) != want {
		t.Fatalf("accepted with fingerprint %x, want %08x: %x", fp[4:], want, b)
	}
	// Rule 4, and rule 3 for what precedes the fingerprint: the other
	// attributes tile the space exactly and one is SOFTWARE "tailnode".
	software := false
	for rest := b[20 : len(b)-8]; len(rest) > 0; {
		if len(rest) < 4 {
			t.Fatalf("accepted with a partial attribute header: %x", b)
		}
		n := int(rest[2])<<8 | int(rest[3])
		pad := (4 - n%4) % 4
		if 4+n+pad > len(rest) {
			t.Fatalf("accepted with an attribute running past the end: %x", b)
		}
		if rest[0] == 0x80 && rest[1] == 0x22 && string(rest[4:4+n]) == "tailnode" {
			software = true
		}
		rest = rest[4+n+pad:]
	}
	if !software {
		t.Fatalf("accepted without SOFTWARE \"tailnode\": %x", b)
	}
	// CRC-32 catches every single-bit error, so no one-bit change of an
	// accepted message may be accepted. Sample the bits on long inputs
	// to keep each fuzz iteration cheap.
	step := max(1, len(b)*8/256)
	c := bytes.Clone(b)
	for i := 0; i < len(c)*8; i += step {
		c[i/8] ^= 1 << (i % 8)
		if _, ok := ParseBindingRequest(c); ok {
			t.Fatalf("accepted %x and also its bit-%d flip %x", b, i, c)
		}
		c[i/8] ^= 1 << (i % 8)
	}
}

func FuzzParseBindingRequest(f *testing.F) {
	good := buildRequest(goldTx)
	f.Add(good)
	for i := range good {
		c := bytes.Clone(good)
		c[i] ^= 0x5a
		f.Add(c)
		f.Add(good[:i])
	}
	// The named cases are the committed corpus (fuzz_test.go).
	f.Fuzz(func(t *testing.T, b []byte) {
		tx, ok := ParseBindingRequest(b)
		if !ok {
			if tx != (TxID{}) {
				t.Fatalf("rejected but returned TxID %x", tx)
			}
			return
		}
		checkAccepted(t, b, tx)
	})
}
