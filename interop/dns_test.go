package interop

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer answers A queries for one name from a set of addresses the
// test changes while it runs; every other question gets an empty answer.
// It stands in for what a Kubernetes headless service or a round-robin
// name gives a -mesh-dns region, on loopback UDP.
type dnsServer struct {
	name string // fully qualified, with the trailing dot
	conn net.PacketConn

	mu    sync.Mutex
	addrs []netip.Addr
}

func startDNS(t *testing.T, name string, addrs ...netip.Addr) *dnsServer {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{name: strings.TrimSuffix(name, ".") + ".", conn: c, addrs: addrs}
	t.Cleanup(func() { c.Close() })
	go s.serve()
	return s
}

func (s *dnsServer) Addr() string { return s.conn.LocalAddr().String() }

func (s *dnsServer) set(addrs ...netip.Addr) {
	s.mu.Lock()
	s.addrs = addrs
	s.mu.Unlock()
}

func (s *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if out := s.answer(buf[:n]); out != nil {
			s.conn.WriteTo(out, from)
		}
	}
}

func (s *dnsServer) answer(req []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired})
	b.EnableCompression()
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	if strings.EqualFold(q.Name.String(), s.name) && q.Type == dnsmessage.TypeA {
		s.mu.Lock()
		for _, a := range s.addrs {
			b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1},
				dnsmessage.AResource{A: a.As4()})
		}
		s.mu.Unlock()
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}
