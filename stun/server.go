package stun

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
)

// Counters count requests by disposition and family, with upstream's
// metric names so existing dashboards keep working.
type Counters struct {
	Success, NotSTUN, ReadError, WriteError atomic.Int64
	IPv4, IPv6                              atomic.Int64
}

// WritePrometheus writes the counters in the Prometheus text format.
func (c *Counters) WritePrometheus(w io.Writer) {
	fmt.Fprintf(w, "# TYPE stun_requests counter\n")
	for _, d := range []struct {
		name string
		v    *atomic.Int64
	}{{"success", &c.Success}, {"not_stun", &c.NotSTUN}, {"read_error", &c.ReadError}, {"write_error", &c.WriteError}} {
		fmt.Fprintf(w, "stun_requests{disposition=%q} %d\n", d.name, d.v.Load())
	}
	fmt.Fprintf(w, "# TYPE stun_addrfamily counter\n")
	fmt.Fprintf(w, "stun_addrfamily{family=\"ipv4\"} %d\n", c.IPv4.Load())
	fmt.Fprintf(w, "stun_addrfamily{family=\"ipv6\"} %d\n", c.IPv6.Load())
}

// Server answers STUN on one UDP socket.
type Server struct {
	Counters Counters

	// OnError, if set, hears read and write errors; the caller decides
	// how loudly (and how often) to log them.
	OnError func(error)

	conn   *net.UDPConn
	closed atomic.Bool
	buf    [64 << 10]byte // the largest datagram; owned by Serve
	resp   []byte         // reused response buffer; owned by Serve
}

// Listen binds addr ("host:port"; an empty host listens on every
// interface, IPv4 and IPv6).
func Listen(addr string) (*Server, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	return &Server{conn: c, resp: make([]byte, 0, 64)}, nil
}

// LocalAddr is the bound address.
func (s *Server) LocalAddr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Serve answers requests until Close.
func (s *Server) Serve() error {
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(s.buf[:])
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// UDP read errors are transient (an ICMP error surfacing,
			// say); keep serving.
			s.Counters.ReadError.Add(1)
			s.report(err)
			continue
		}
		s.handle(s.buf[:n], from)
	}
}

// handle answers one datagram; it does not allocate.
func (s *Server) handle(b []byte, from netip.AddrPort) {
	tx, ok := ParseBindingRequest(b)
	if !ok {
		s.Counters.NotSTUN.Add(1)
		return
	}
	if from.Addr().Unmap().Is4() {
		s.Counters.IPv4.Add(1)
	} else {
		s.Counters.IPv6.Add(1)
	}
	s.resp = AppendBindingResponse(s.resp[:0], tx, from)
	if _, err := s.conn.WriteToUDPAddrPort(s.resp, from); err != nil {
		s.Counters.WriteError.Add(1)
		s.report(err)
		return
	}
	s.Counters.Success.Add(1)
}

func (s *Server) report(err error) {
	if s.OnError != nil {
		s.OnError(err)
	}
}

// Close stops Serve.
func (s *Server) Close() error {
	s.closed.Store(true)
	return s.conn.Close()
}
