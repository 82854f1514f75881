package stun

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var tx = TxID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

// tailscaleRequest is the 40-byte request, assembled field by field here
// rather than with AppendBindingRequest, so the two check each other.
func tailscaleRequest() []byte {
	b := []byte{0x00, 0x01, 0x00, 0x14, 0x21, 0x12, 0xa4, 0x42}
	b = append(b, tx[:]...)
	b = append(b, 0x80, 0x22, 0x00, 0x08)
	b = append(b, "tailnode"...)
	fp := crc32.ChecksumIEEE(b) ^ 0x5354554e
	b = append(b, 0x80, 0x28, 0x00, 0x04)
	return binary.BigEndian.AppendUint32(b, fp)
}

func TestRequestBytes(t *testing.T) {
	want := tailscaleRequest()
	if got := AppendBindingRequest(nil, tx); !bytes.Equal(got, want) || len(got) != 40 {
		t.Fatalf("AppendBindingRequest = %x\nwant %x", got, want)
	}
	got, ok := ParseBindingRequest(want)
	if !ok || got != tx {
		t.Fatalf("ParseBindingRequest = %x %v", got, ok)
	}
}

func TestRejections(t *testing.T) {
	req := tailscaleRequest()
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(req)) }
	refit := func(b []byte) []byte { // recompute the fingerprint after a change
		fp := crc32.ChecksumIEEE(b[:len(b)-8]) ^ 0x5354554e
		binary.BigEndian.PutUint32(b[len(b)-4:], fp)
		return b
	}
	cases := map[string][]byte{
		"short":             req[:19],
		"wrong cookie":      mutate(func(b []byte) []byte { b[4] ^= 1; return refit(b) }),
		"top bits":          mutate(func(b []byte) []byte { b[0] |= 0x40; return refit(b) }),
		"not a request":     mutate(func(b []byte) []byte { b[1] = 0x02; return refit(b) }),
		"other software":    mutate(func(b []byte) []byte { copy(b[24:], "tailnodX"); return refit(b) }),
		"bad fingerprint":   mutate(func(b []byte) []byte { b[39] ^= 1; return b }),
		"truncated attr":    req[:38],
		"no software":       AppendFP(append(bytes.Clone(req[:20]), 0x80, 0x23, 0, 0)),
		"fingerprint 1st":   append(bytes.Clone(req[:20]), append(bytes.Clone(req[32:40]), req[20:32]...)...),
		"fingerprint !last": append(bytes.Clone(req), 0x00, 0x06, 0x00, 0x00),
		"empty":             nil,
	}
	for name, b := range cases {
		if _, ok := ParseBindingRequest(b); ok {
			t.Errorf("%s: accepted %x", name, b)
		}
	}
}

// AppendFP appends a correct fingerprint to a header plus attributes.
func AppendFP(b []byte) []byte {
	fp := crc32.ChecksumIEEE(b) ^ 0x5354554e
	b = append(b, 0x80, 0x28, 0x00, 0x04)
	return binary.BigEndian.AppendUint32(b, fp)
}

func TestResponseBytes(t *testing.T) {
	got := AppendBindingResponse(nil, tx, netip.MustParseAddrPort("1.2.3.4:5678"))
	want := []byte{0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42}
	want = append(want, tx[:]...)
	want = append(want, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01)
	want = binary.BigEndian.AppendUint16(want, 5678^0x2112)
	want = append(want, 1^0x21, 2^0x12, 3^0xa4, 4^0x42)
	if !bytes.Equal(got, want) || len(got) != 32 {
		t.Fatalf("IPv4 response %x\nwant %x", got, want)
	}
	// The same peer seen on a dual-stack socket is answered as IPv4.
	if mapped := AppendBindingResponse(nil, tx, netip.MustParseAddrPort("[::ffff:1.2.3.4]:5678")); !bytes.Equal(mapped, want) {
		t.Fatalf("4in6 response %x", mapped)
	}

	ip6 := netip.MustParseAddr("2001:db8::1")
	got = AppendBindingResponse(nil, tx, netip.AddrPortFrom(ip6, 443))
	key := append([]byte{0x21, 0x12, 0xa4, 0x42}, tx[:]...)
	raw := ip6.As16()
	want = []byte{0x01, 0x01, 0x00, 0x18, 0x21, 0x12, 0xa4, 0x42}
	want = append(want, tx[:]...)
	want = append(want, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02)
	want = binary.BigEndian.AppendUint16(want, 443^0x2112)
	for i := range raw {
		want = append(want, raw[i]^key[i])
	}
	if !bytes.Equal(got, want) || len(got) != 44 {
		t.Fatalf("IPv6 response %x\nwant %x", got, want)
	}
}

func TestHandleDoesNotAllocate(t *testing.T) {
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req := tailscaleRequest()
	to := s.LocalAddr() // answering ourselves is harmless
	allocs := testing.AllocsPerRun(1000, func() { s.handle(req, to) })
	if allocs != 0 {
		t.Fatalf("%v allocations per request", allocs)
	}
}

func BenchmarkHandle(b *testing.B) {
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	req := tailscaleRequest()
	to := s.LocalAddr()
	b.ReportAllocs()
	for b.Loop() {
		s.handle(req, to)
	}
}

func TestServeOverLoopback(t *testing.T) {
	for _, network := range []string{"127.0.0.1", "::1"} {
		t.Run(network, func(t *testing.T) {
			s, err := Listen(net.JoinHostPort(network, "0"))
			if err != nil {
				t.Skipf("cannot listen on %s: %v", network, err)
			}
			go s.Serve()
			defer s.Close()
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.LocalAddr()))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("not stun at all, just noise"))
			c.Write(tailscaleRequest())
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 1500)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			me := c.LocalAddr().(*net.UDPAddr).AddrPort()
			if want := AppendBindingResponse(nil, tx, me); !bytes.Equal(buf[:n], want) {
				t.Fatalf("response %x\nwant %x (the noise must not be answered)", buf[:n], want)
			}
			if s.Counters.NotSTUN.Load() != 1 || s.Counters.Success.Load() != 1 {
				t.Fatalf("counters not_stun=%d success=%d", s.Counters.NotSTUN.Load(), s.Counters.Success.Load())
			}
			fam := &s.Counters.IPv4
			if network == "::1" {
				fam = &s.Counters.IPv6
			}
			if fam.Load() != 1 {
				t.Fatalf("family counter = %d", fam.Load())
			}
		})
	}
}

func TestPrometheusSeries(t *testing.T) {
	var c Counters
	c.Success.Add(3)
	var b strings.Builder
	c.WritePrometheus(&b)
	for _, want := range []string{
		`stun_requests{disposition="success"} 3`, `stun_requests{disposition="not_stun"} 0`,
		`stun_requests{disposition="read_error"} 0`, `stun_requests{disposition="write_error"} 0`,
		`stun_addrfamily{family="ipv4"} 0`, `stun_addrfamily{family="ipv6"} 0`,
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
}

func FuzzParseBindingRequest(f *testing.F) {
	f.Add(tailscaleRequest())
	f.Add(tailscaleRequest()[:30])
	f.Add(append(tailscaleRequest(), 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := ParseBindingRequest(b)
		if !ok {
			return
		}
		// Check independently: the last 8 bytes are a fingerprint of the
		// rest, and "tailnode" appears as a SOFTWARE attribute.
		if len(b) < 28 || binary.BigEndian.Uint16(b[len(b)-8:]) != 0x8028 {
			t.Fatalf("accepted without a trailing fingerprint: %x", b)
		}
		if binary.BigEndian.Uint32(b[len(b)-4:]) != crc32.ChecksumIEEE(b[:len(b)-8])^0x5354554e {
			t.Fatalf("accepted with a wrong fingerprint: %x", b)
		}
		if !bytes.Contains(b, []byte("\x80\x22\x00\x08tailnode")) {
			t.Fatalf("accepted without the tailnode software attribute: %x", b)
		}
		if [12]byte(b[8:20]) != got {
			t.Fatal("wrong transaction ID")
		}
	})
}
