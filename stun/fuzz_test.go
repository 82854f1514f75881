package stun

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/derpd/derpd/internal/fuzztest"
)

// FuzzServeDatagram is one datagram from anyone on the Internet, through
// the server's own handling (Server.handle, as Serve calls it), from an
// address the fuzzer picks. Junk gets no answer and counts as not STUN; a
// request that ParseBindingRequest accepts gets exactly one datagram, to
// the sender, that decodes (without this package's code) as a Binding
// Success Response for the request's transaction carrying the sender's
// address and port, and counts once by address family.
func FuzzServeDatagram(f *testing.F) {
	f.Fuzz(func(t *testing.T, b, addr []byte, port uint16) {
		from := fuzzAddr(addr, port)
		fc := &fakeConn{}
		s := newServer(fc)
		s.handle(b, from)
		got := snapshot(&s.Counters)
		tx, ok := ParseBindingRequest(b)
		if !ok {
			if len(fc.writes) != 0 || got != (counts{notSTUN: 1}) {
				t.Fatalf("junk from %v: %d datagrams back, counters %+v", from, len(fc.writes), got)
			}
			return
		}
		if len(fc.writes) != 1 || fc.writes[0].to != from {
			t.Fatalf("request from %v: answered with %d datagrams (%+v)", from, len(fc.writes), fc.writes)
		}
		ip := from.Addr().Unmap().WithZone("")
		want := counts{success: 1, v6: 1}
		if ip.Is4() {
			want = counts{success: 1, v4: 1}
		}
		if got != want {
			t.Fatalf("request from %v: counters %+v, want %+v", from, got, want)
		}
		checkResponse(t, fc.writes[0].b, tx, netip.AddrPortFrom(ip, from.Port()))
	})
}

// fuzzAddr turns fuzz bytes into an address the kernel could report: 16
// bytes are IPv6 (perhaps IPv4-mapped, as a dual-stack socket reports
// IPv4 peers), fewer are IPv4 padded with zeros; a 17th odd byte adds a
// zone, as link-local peers have.
func fuzzAddr(b []byte, port uint16) netip.AddrPort {
	if len(b) < 16 {
		var a4 [4]byte
		copy(a4[:], b)
		return netip.AddrPortFrom(netip.AddrFrom4(a4), port)
	}
	ip := netip.AddrFrom16([16]byte(b[:16]))
	if len(b) > 16 && b[16]&1 == 1 && !ip.Is4In6() {
		ip = ip.WithZone("eth0")
	}
	return netip.AddrPortFrom(ip, port)
}

// checkResponse decodes a Binding Success Response field by field, as a
// client would, and requires it to answer tx with the address want.
func checkResponse(t *testing.T, resp []byte, tx TxID, want netip.AddrPort) {
	t.Helper()
	if len(resp) < 20 || len(resp) > MaxResponseLen {
		t.Fatalf("response of %d bytes: %x", len(resp), resp)
	}
	if typ := binary.BigEndian.Uint16(resp); typ != 0x0101 {
		t.Fatalf("response type %#04x, want Binding Success 0x0101", typ)
	}
	if n := int(binary.BigEndian.Uint16(resp[2:])); n != len(resp)-20 || n%4 != 0 {
		t.Fatalf("header length %d for %d bytes of attributes", n, len(resp)-20)
	}
	if !bytes.Equal(resp[4:8], cookie) || TxID(resp[8:20]) != tx {
		t.Fatalf("response cookie %x and transaction %x, want %x and %x", resp[4:8], resp[8:20], cookie, tx)
	}
	attrs := resp[20:]
	if len(attrs) < 4 || binary.BigEndian.Uint16(attrs) != 0x0020 {
		t.Fatalf("first attribute is not XOR-MAPPED-ADDRESS: %x", attrs)
	}
	n := int(binary.BigEndian.Uint16(attrs[2:]))
	if 4+n != len(attrs) || (n != 8 && n != 20) {
		t.Fatalf("XOR-MAPPED-ADDRESS of %d bytes in %d", n, len(attrs))
	}
	v := attrs[4:]
	port := binary.BigEndian.Uint16(v[2:]) ^ 0x2112
	xor := append(bytes.Clone(cookie), tx[:]...)
	ipBytes := bytes.Clone(v[4:])
	for i := range ipBytes {
		ipBytes[i] ^= xor[i]
	}
	var ip netip.Addr
	switch {
	case v[1] == 1 && len(ipBytes) == 4:
		ip = netip.AddrFrom4([4]byte(ipBytes))
	case v[1] == 2 && len(ipBytes) == 16:
		ip = netip.AddrFrom16([16]byte(ipBytes))
	default:
		t.Fatalf("family %d with %d address bytes", v[1], len(ipBytes))
	}
	if v[0] != 0 {
		t.Fatalf("reserved byte %#x", v[0])
	}
	if got := netip.AddrPortFrom(ip, port); got != want {
		t.Fatalf("response says %v, the request came from %v", got, want)
	}
}

// stunSeeds are the named cases of stun_test.go and the edges of the
// address space; FuzzParseBindingRequest adds every one-byte change and
// cut of the canonical request itself (f.Add), which are mechanical.
func stunSeeds() map[string]map[string][]any {
	named := map[string][]byte{"canonical": buildRequest(goldTx)}
	for name, b := range rejectCases() {
		named["reject-"+name] = b
	}
	named["accept-padded-attribute-first"] = withFingerprint(attr(attr(header(0x0001, 0, goldTx), 0x0006, "alice"), 0x8022, "tailnode"))
	named["accept-length-huge"] = withFingerprint(attr(header(0x0001, 0xffff, goldTx), 0x8022, "tailnode"))
	named["accept-earlier-bogus-fingerprint"] = withFingerprint(attr(attr(header(0x0001, 32, goldTx), 0x8028, "xyzzy"), 0x8022, "tailnode"))
	parse, serve := map[string][]any{}, map[string][]any{}
	for name, b := range named {
		file := fileName(name)
		if parse[file] != nil {
			panic("two cases make the seed file " + file)
		}
		parse[file] = []any{b}
		serve[file+"-v4"] = []any{b, []byte{203, 0, 113, 7}, uint16(41641)}
	}
	req := buildRequest(goldTx)
	v6 := netip.MustParseAddr("2001:db8:85a3::8a2e:370:7334").As16()
	mapped := netip.MustParseAddr("::ffff:203.0.113.7").As16()
	ll := netip.MustParseAddr("fe80::1").As16()
	ones := bytes.Repeat([]byte{0xff}, 16)
	serve["canonical-v6"] = []any{req, v6[:], uint16(41641)}
	serve["canonical-v4-mapped"] = []any{req, mapped[:], uint16(3478)}
	serve["canonical-link-local-zone"] = []any{req, append(ll[:], 1), uint16(3478)}
	serve["canonical-all-ones"] = []any{req, ones, uint16(65535)}
	serve["canonical-port-zero"] = []any{req, []byte{}, uint16(0)}
	return map[string]map[string][]any{"FuzzParseBindingRequest": parse, "FuzzServeDatagram": serve}
}

// fileName makes a case's description a file name.
func fileName(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	return string(b)
}

// TestFuzzSeeds keeps the committed corpus files equal to stunSeeds;
// DERPD_WRITE_CORPUS=1 writes them.
func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range stunSeeds() {
		fuzztest.CheckSeeds(t, target, seeds)
	}
}
