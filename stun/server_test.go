package stun

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// serve runs s.Serve in the background; the returned function closes the
// server and waits for Serve to return, after which every datagram the
// server read has been fully handled and its counters are final.
func serve(t *testing.T, s *Server) (stop func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after Close, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after Close")
		}
	}
	t.Cleanup(stop)
	return stop
}

type counts struct{ success, notSTUN, readErr, writeErr, v4, v6 int64 }

func snapshot(c *Counters) counts {
	return counts{c.Success.Load(), c.NotSTUN.Load(), c.ReadError.Load(), c.WriteError.Load(), c.IPv4.Load(), c.IPv6.Load()}
}

// exchange sends the given junk datagrams and then a valid request from
// one client socket, and checks that the first datagram back is the
// answer to the request, addressed to the client as the server saw it.
func exchange(t *testing.T, server netip.AddrPort, clientIP netip.Addr, tx TxID, junk ...[]byte) {
	t.Helper()
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0)), net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, j := range junk {
		if _, err := c.Write(j); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Write(AppendBindingRequest(nil, tx)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	me := c.LocalAddr().(*net.UDPAddr).AddrPort()
	if want := buildResponse(tx, me); !bytes.Equal(buf[:n], want) {
		t.Fatalf("first datagram back:\n %x\nwant the answer to the request from %v:\n %x", buf[:n], me, want)
	}
}

func junk() [][]byte {
	bad := AppendBindingRequest(nil, goldTx)
	bad[len(bad)-1] ^= 1 // STUN-shaped, but the fingerprint is wrong
	return [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), bad, {0}}
}

func TestServeLoopback(t *testing.T) {
	for _, tc := range []struct {
		name string
		ip   string
		want counts
	}{
		{"ipv4", "127.0.0.1", counts{success: 1, notSTUN: 3, v4: 1}},
		{"ipv6", "::1", counts{success: 1, notSTUN: 3, v6: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ip := netip.MustParseAddr(tc.ip)
			s, err := Listen(netip.AddrPortFrom(ip, 0).String())
			if err != nil {
				if ip.Is6() {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				t.Fatal(err)
			}
			if la := s.LocalAddr(); la.Addr() != ip || la.Port() == 0 {
				t.Fatalf("LocalAddr = %v, want %v with a real port", la, ip)
			}
			stop := serve(t, s)
			exchange(t, s.LocalAddr(), ip, goldTx, junk()...)
			stop()
			if got := snapshot(&s.Counters); got != tc.want {
				t.Fatalf("counters %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestServeDualStack listens on every interface, as derpd does by
// default, and checks that an IPv4 client, which a dual-stack socket
// reports as ::ffff:a.b.c.d, is answered and counted as IPv4.
func TestServeDualStack(t *testing.T) {
	s, err := Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	stop := serve(t, s)
	port := s.LocalAddr().Port()
	v4 := netip.MustParseAddr("127.0.0.1")
	exchange(t, netip.AddrPortFrom(v4, port), v4, goldTx)
	want := counts{success: 1, v4: 1}
	if s.LocalAddr().Addr().Is6() { // a v4-only system has no [::1] to try
		tx2 := TxID{0xff, 1}
		if c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6loopback}); err == nil {
			c.Close()
			exchange(t, netip.AddrPortFrom(netip.IPv6Loopback(), port), netip.IPv6Loopback(), tx2)
			want.success++
			want.v6++
		}
	}
	stop()
	if got := snapshot(&s.Counters); got != want {
		t.Fatalf("counters %+v, want %+v", got, want)
	}
}

func TestServeAfterCloseAndTwice(t *testing.T) {
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.Serve(); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}

	// Two Serves would share the read buffer; the second must refuse.
	s, err = Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 2)
	for range 2 {
		go func() { results <- s.Serve() }()
	}
	select {
	case err := <-results:
		if err == nil {
			t.Fatal("a second concurrent Serve returned nil, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("neither Serve returned; the second should refuse at once")
	}
	s.Close()
	if err := <-results; err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
}

// fakeConn scripts what reads return, to exercise the error paths a real
// socket will not produce on demand. Once the script runs out, reads
// report a closed socket, as *net.UDPConn does after Close.
type fakeConn struct {
	reads    []fakeRead
	writeErr error
	writes   []fakeWrite
}

type fakeRead struct {
	b    []byte
	from netip.AddrPort
	err  error
}

type fakeWrite struct {
	b  []byte
	to netip.AddrPort
}

func (c *fakeConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	if len(c.reads) == 0 {
		return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Err: net.ErrClosed}
	}
	r := c.reads[0]
	c.reads = c.reads[1:]
	if r.err != nil {
		return 0, netip.AddrPort{}, r.err
	}
	return copy(b, r.b), r.from, nil
}

func (c *fakeConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	if c.writeErr != nil {
		return 0, c.writeErr
	}
	c.writes = append(c.writes, fakeWrite{bytes.Clone(b), to})
	return len(b), nil
}

func (c *fakeConn) LocalAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(192, 0, 2, 53), Port: 3478} }
func (c *fakeConn) Close() error        { return nil }

func TestReadErrorsDoNotStopServing(t *testing.T) {
	transient := errors.New("transient")
	peer := netip.MustParseAddrPort("198.51.100.9:4242")
	peer6 := netip.MustParseAddrPort("[2001:db8::9]:4243")
	fc := &fakeConn{reads: []fakeRead{
		{err: transient},
		{b: AppendBindingRequest(nil, goldTx), from: peer},
		{err: transient},
		{err: transient}, // a second error in a row: a 1ms pause
		{b: []byte("noise"), from: peer},
		{b: AppendBindingRequest(nil, TxID{6}), from: peer6},
	}}
	s := newServer(fc)
	var reported []error
	s.OnError = func(err error) { reported = append(reported, err) }
	var waits []time.Duration
	s.wait = func(d time.Duration) { waits = append(waits, d) }
	if err := s.Serve(); err != nil { // returns once the script says "closed"
		t.Fatalf("Serve = %v, want nil once the socket is closed", err)
	}
	if want := (counts{success: 2, notSTUN: 1, readErr: 3, v4: 1, v6: 1}); snapshot(&s.Counters) != want {
		t.Fatalf("counters %+v, want %+v", snapshot(&s.Counters), want)
	}
	if len(reported) != 3 || !errors.Is(reported[0], transient) || !errors.Is(reported[2], transient) {
		t.Fatalf("OnError saw %v, want the 3 read errors", reported)
	}
	// The lone first error costs nothing; the run of two pauses once, and
	// only briefly because the good read in between reset the count.
	if len(waits) != 1 || waits[0] != time.Millisecond {
		t.Fatalf("paused for %v, want [1ms]", waits)
	}
	want := []fakeWrite{{buildResponse(goldTx, peer), peer}, {buildResponse(TxID{6}, peer6), peer6}}
	if len(fc.writes) != len(want) {
		t.Fatalf("%d datagrams sent, want %d", len(fc.writes), len(want))
	}
	for i := range want {
		if !bytes.Equal(fc.writes[i].b, want[i].b) || fc.writes[i].to != want[i].to {
			t.Errorf("write %d: %x to %v, want %x to %v", i, fc.writes[i].b, fc.writes[i].to, want[i].b, want[i].to)
		}
	}
	if s.LocalAddr() != netip.MustParseAddrPort("192.0.2.53:3478") {
		t.Errorf("LocalAddr = %v", s.LocalAddr())
	}
}

func TestWriteErrorIsCounted(t *testing.T) {
	refused := errors.New("refused")
	peer := netip.MustParseAddrPort("[::ffff:198.51.100.9]:4242")
	fc := &fakeConn{writeErr: refused}
	s := newServer(fc)
	var reported []error
	s.OnError = func(err error) { reported = append(reported, err) }
	s.handle(AppendBindingRequest(nil, goldTx), peer)
	if want := (counts{writeErr: 1, v4: 1}); snapshot(&s.Counters) != want {
		t.Fatalf("counters %+v, want %+v", snapshot(&s.Counters), want)
	}
	if len(reported) != 1 || reported[0] != refused {
		t.Fatalf("OnError saw %v, want [%v]", reported, refused)
	}
}

func TestHandleRepliesToSenderAsSeen(t *testing.T) {
	// On a dual-stack socket the reply must go to the mapped address the
	// kernel gave us, while the address inside the answer is plain IPv4.
	peer := netip.MustParseAddrPort("[::ffff:198.51.100.9]:4242")
	fc := &fakeConn{}
	s := newServer(fc)
	s.handle(AppendBindingRequest(nil, goldTx), peer)
	if len(fc.writes) != 1 || fc.writes[0].to != peer || len(fc.writes[0].b) != 32 {
		t.Fatalf("writes %+v, want one 32-byte answer to %v", fc.writes, peer)
	}
}

func TestReadBackOff(t *testing.T) {
	for n, want := range map[int]time.Duration{
		-1: 0, 0: 0, 1: 0,
		2: time.Millisecond, 3: 2 * time.Millisecond, 11: 512 * time.Millisecond,
		12: time.Second, 13: time.Second, 64: time.Second, 1 << 30: time.Second,
	} {
		if got := readBackOff(n); got != want {
			t.Errorf("readBackOff(%d) = %v, want %v", n, got, want)
		}
	}
	for n := 1; n < 200; n++ {
		if readBackOff(n) < readBackOff(n-1) {
			t.Fatalf("readBackOff(%d) < readBackOff(%d)", n, n-1)
		}
	}
}

func TestCloseCutsBackOffShort(t *testing.T) {
	s := newServer(&fakeConn{})
	s.Close()
	start := time.Now()
	s.backOff(100) // a full second, were it not for Close
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("back-off after Close took %v", d)
	}
	s.Close() // a second Close must not panic on the closed channel
}

func TestListenBadAddress(t *testing.T) {
	for _, addr := range []string{"127.0.0.1", "127.0.0.1:notaport", "[::1:3478"} {
		if s, err := Listen(addr); err == nil {
			s.Close()
			t.Errorf("Listen(%q) succeeded", addr)
		}
	}
}

// sink is a socket the server's answers are sent to and left unread, so
// the allocation checks exercise the real successful write path.
func sink(t testing.TB) netip.AddrPort {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestHandleDoesNotAllocate(t *testing.T) {
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req := AppendBindingRequest(nil, goldTx)
	noise := []byte("noise")
	to := sink(t)
	const runs = 1000
	allocs := testing.AllocsPerRun(runs, func() {
		s.handle(req, to)
		s.handle(noise, to)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per datagram pair", allocs)
	}
	// AllocsPerRun makes one warm-up call besides the measured ones. Had
	// writes failed, we would have measured the error path instead.
	if got := snapshot(&s.Counters); got != (counts{success: runs + 1, notSTUN: runs + 1, v4: runs + 1}) {
		t.Fatalf("counters %+v", got)
	}
}

func BenchmarkHandle(b *testing.B) {
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	req := AppendBindingRequest(nil, goldTx)
	to := sink(b)
	b.ReportAllocs()
	for b.Loop() {
		s.handle(req, to)
	}
	if s.Counters.WriteError.Load() != 0 {
		b.Fatalf("%d write errors", s.Counters.WriteError.Load())
	}
}

// exposition is what WritePrometheus must write for these counter values,
// in order success, not_stun, read_error, write_error, ipv4, ipv6.
func exposition(v ...int) string {
	return fmt.Sprintf(`# TYPE stun_requests counter
stun_requests{disposition="success"} %d
stun_requests{disposition="not_stun"} %d
stun_requests{disposition="read_error"} %d
stun_requests{disposition="write_error"} %d
# TYPE stun_addrfamily counter
stun_addrfamily{family="ipv4"} %d
stun_addrfamily{family="ipv6"} %d
`, v[0], v[1], v[2], v[3], v[4], v[5])
}

func TestWritePrometheus(t *testing.T) {
	var c Counters
	var b strings.Builder
	c.WritePrometheus(&b)
	if zero := exposition(0, 0, 0, 0, 0, 0); b.String() != zero {
		t.Fatalf("fresh counters:\n%s\nwant:\n%s", b.String(), zero)
	}

	// Distinct values catch a series wired to the wrong counter.
	c.Success.Add(1)
	c.NotSTUN.Add(2)
	c.ReadError.Add(3)
	c.WriteError.Add(4)
	c.IPv4.Add(5)
	c.IPv6.Add(6)
	b.Reset()
	c.WritePrometheus(&b)
	if set := exposition(1, 2, 3, 4, 5, 6); b.String() != set {
		t.Fatalf("counters 1..6:\n%s\nwant:\n%s", b.String(), set)
	}
}
