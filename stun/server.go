package stun

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// readBufLen holds any UDP datagram. Real requests are 40 bytes, but a
// smaller buffer would silently truncate longer datagrams, and a truncated
// prefix could parse as a request its sender never made.
const readBufLen = 64 << 10

// packetConn is the part of *net.UDPConn the server uses. It is an
// interface only so tests can make reads fail on demand.
type packetConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	LocalAddr() net.Addr
	Close() error
}

// Server answers Tailscale STUN Binding Requests on one UDP socket.
// Create it with Listen, run Serve once, stop it with Close.
type Server struct {
	Counters Counters

	// OnError, if set, is called from Serve's goroutine with every read
	// and write error. The server only counts them; logging, and rate
	// limiting the log, is the caller's business. Set it before Serve.
	OnError func(error)

	conn      packetConn
	serving   atomic.Bool
	done      chan struct{} // closed by Close: ends Serve and cuts a read back-off short
	closeOnce sync.Once
	wait      func(time.Duration) // test hook standing in for the back-off timer

	// Owned by the Serve goroutine and reused for every datagram, so that
	// answering a request does not allocate.
	buf  [readBufLen]byte
	resp [MaxResponseLen]byte
}

// Listen binds a UDP socket on addr ("host:port"). An empty host listens
// on every interface, IPv4 and IPv6 alike where the system is dual-stack.
func Listen(addr string) (*Server, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	return newServer(c), nil
}

func newServer(c packetConn) *Server {
	return &Server{conn: c, done: make(chan struct{})}
}

// LocalAddr returns the address the server is bound to, with the port the
// system picked if Listen was given port 0.
func (s *Server) LocalAddr() netip.AddrPort {
	if ua, ok := s.conn.LocalAddr().(*net.UDPAddr); ok {
		// net.IP keeps IPv4 in 16-byte form at times; report it as IPv4.
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// Serve answers requests until Close is called, and then returns nil.
// Read errors do not stop it: on UDP they are transient (an ICMP error
// report surfacing, a momentary buffer shortage), so they are counted,
// passed to OnError, and reading goes on. Serve may be called only once.
func (s *Server) Serve() error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("stun: Serve called more than once")
	}
	failures := 0
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(s.buf[:])
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.Counters.ReadError.Add(1)
			s.report(err)
			failures++
			s.backOff(failures)
			continue
		}
		failures = 0
		s.handle(s.buf[:n], from)
	}
}

// readBackOff is how long to wait after the given number of consecutive
// read errors. A lone error costs nothing, so one bad packet never delays
// the next client; an error that keeps coming back (a socket gone bad)
// would otherwise spin a CPU and flood OnError, so the wait doubles up to
// a second, which is what upstream waits after every error.
func readBackOff(consecutive int) time.Duration {
	const maxWait = time.Second
	if consecutive <= 1 {
		return 0
	}
	if consecutive > 12 { // 1ms<<11 already exceeds maxWait
		return maxWait
	}
	return min(time.Millisecond<<(consecutive-2), maxWait)
}

func (s *Server) backOff(consecutive int) {
	d := readBackOff(consecutive)
	if d == 0 {
		return
	}
	if s.wait != nil {
		s.wait(d)
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
	}
}

// handle deals with one datagram from the given peer. It must not
// allocate: it runs once per datagram, and anyone on the Internet can
// send those at line rate.
func (s *Server) handle(b []byte, from netip.AddrPort) {
	txID, ok := ParseBindingRequest(b)
	if !ok {
		s.Counters.NotSTUN.Add(1)
		return
	}
	if from.Addr().Unmap().Is4() {
		s.Counters.IPv4.Add(1)
	} else {
		s.Counters.IPv6.Add(1)
	}
	// Reply to from exactly as the kernel reported it: on a dual-stack
	// socket an IPv4 peer must be addressed in its mapped form. Only the
	// address inside the answer is un-mapped.
	resp := AppendBindingResponse(s.resp[:0], txID, from)
	if _, err := s.conn.WriteToUDPAddrPort(resp, from); err != nil {
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

func (s *Server) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Close closes the socket, which makes Serve return nil. Calling it
// again returns the socket's error for a repeated close.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	return s.conn.Close()
}
