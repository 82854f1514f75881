package fuzztest

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"
)

// Conn is one end of an in-memory connection. Unlike net.Pipe, writes
// never wait for the reader (each direction buffers without bound, as a
// socket buffer large enough for any fuzz input would), and an end can
// half-close with CloseWrite: the other end reads what was written, then
// io.EOF. That is what a fuzz target needs to hand a server a whole input
// and be sure the server finishes, with an error or without, instead of
// waiting for bytes that will never come.
type Conn struct {
	in, out       *halfPipe
	local, remote net.Addr
	closeOnce     sync.Once
	closed        chan struct{}
}

// Pipe returns the two ends of a connection; addrs are what LocalAddr and
// RemoteAddr report (client is a's local address).
func Pipe(client, server netip.AddrPort) (a, b *Conn) {
	ab, ba := newHalfPipe(), newHalfPipe()
	ca, cb := net.TCPAddrFromAddrPort(client), net.TCPAddrFromAddrPort(server)
	a = &Conn{in: ba, out: ab, local: ca, remote: cb, closed: make(chan struct{})}
	b = &Conn{in: ab, out: ba, local: cb, remote: ca, closed: make(chan struct{})}
	return a, b
}

// SetReadSizes makes each Read return at most the next of sizes bytes
// (cycling; a size below 1 counts as 1), so a target can split its input
// at places the fuzzer chooses. Call it before the first Read.
func (c *Conn) SetReadSizes(sizes []int) {
	c.in.mu.Lock()
	c.in.sizes = append([]int(nil), sizes...)
	c.in.mu.Unlock()
}

// Read reads what the other end wrote; io.EOF once it closed or
// half-closed and everything is read.
func (c *Conn) Read(p []byte) (int, error) { return c.in.read(p) }

// Write buffers p for the other end. It fails once either end closed.
func (c *Conn) Write(p []byte) (int, error) { return c.out.write(p) }

// CloseWrite ends the stream towards the other end, which reads io.EOF
// after the bytes already written.
func (c *Conn) CloseWrite() error {
	c.out.closeWrite()
	return nil
}

// Close closes both directions: reads here fail with net.ErrClosed, the
// other end reads io.EOF after what was written, and writes from either
// end fail.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.in.closeRead()
		c.out.closeWrite()
		close(c.closed)
	})
	return nil
}

// Closed is closed once Close has been called on this end: a target
// waits on it to know the server is done with the connection.
func (c *Conn) Closed() <-chan struct{} { return c.closed }

func (c *Conn) LocalAddr() net.Addr  { return c.local }
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

func (c *Conn) SetDeadline(t time.Time) error {
	c.in.setDeadline(t)
	c.out.setDeadline(t)
	return nil
}
func (c *Conn) SetReadDeadline(t time.Time) error  { c.in.setDeadline(t); return nil }
func (c *Conn) SetWriteDeadline(t time.Time) error { c.out.setDeadline(t); return nil }

// halfPipe is one direction: bytes one end wrote and the other has not
// yet read. The deadline is the reading end's for reads and the writing
// end's for writes; a write never waits, so it only checks it.
type halfPipe struct {
	mu          sync.Mutex
	cond        sync.Cond
	buf         []byte
	eof         bool // the writer is done: reads drain, then io.EOF
	readClosed  bool // the reader closed its end
	sizes       []int
	next        int
	deadline    time.Time
	timer       *time.Timer
	deadlineGen int
}

func newHalfPipe() *halfPipe {
	p := &halfPipe{}
	p.cond.L = &p.mu
	return p
}

func (p *halfPipe) expired() bool {
	return !p.deadline.IsZero() && !time.Now().Before(p.deadline)
}

func (p *halfPipe) read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case p.readClosed:
			return 0, net.ErrClosed
		case p.expired():
			return 0, os.ErrDeadlineExceeded
		case len(b) == 0:
			return 0, nil
		case len(p.buf) > 0:
			n := len(b)
			if len(p.sizes) > 0 {
				n = min(n, max(1, p.sizes[p.next%len(p.sizes)]))
				p.next++
			}
			n = copy(b[:n], p.buf)
			p.buf = p.buf[n:]
			return n, nil
		case p.eof:
			return 0, io.EOF
		}
		p.cond.Wait()
	}
}

func (p *halfPipe) write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.eof || p.readClosed:
		return 0, io.ErrClosedPipe
	case p.expired():
		return 0, os.ErrDeadlineExceeded
	}
	p.buf = append(p.buf, b...)
	p.cond.Broadcast()
	return len(b), nil
}

func (p *halfPipe) closeWrite() {
	p.mu.Lock()
	p.eof = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *halfPipe) closeRead() {
	p.mu.Lock()
	p.readClosed = true
	p.buf = nil
	p.cond.Broadcast()
	p.mu.Unlock()
}

// setDeadline wakes readers when t passes, at once if it has: net/http
// ends its background read of a connection it hands over (Hijack) by
// setting a deadline in the past.
func (p *halfPipe) setDeadline(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deadline = t
	p.deadlineGen++
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	p.cond.Broadcast()
	if !t.IsZero() {
		gen := p.deadlineGen
		p.timer = time.AfterFunc(time.Until(t), func() {
			p.mu.Lock()
			if p.deadlineGen == gen {
				p.cond.Broadcast()
			}
			p.mu.Unlock()
		})
	}
}

// Listener hands the server ends of in-memory connections to Accept, for
// an http.Server to serve them exactly as it serves sockets.
type Listener struct {
	addr      netip.AddrPort
	conns     chan *Conn
	done      chan struct{}
	closeOnce sync.Once
}

// NewListener returns a listener whose connections report addr as their
// local address.
func NewListener(addr netip.AddrPort) *Listener {
	return &Listener{addr: addr, conns: make(chan *Conn), done: make(chan struct{})}
}

// Dial connects from the client address and returns the client's end
// once the server's end is accepted. The server's end reads in pieces of
// readSizes (see SetReadSizes; none means whole).
func (l *Listener) Dial(from netip.AddrPort, readSizes []int) (*Conn, error) {
	client, server := Pipe(from, l.addr)
	server.SetReadSizes(readSizes)
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Accept returns the server's end of the next Dial. It offers no
// CloseWrite: net/http half-closes a connection that has one before
// closing it after some errors, then waits half a second for the client
// to read the reply, which would make every such input cost that long.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return serverEnd{c}, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// serverEnd has a Conn's methods but CloseWrite.
type serverEnd struct{ net.Conn }

func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *Listener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.addr) }

// hangLimit is how long Within lets a call run: far longer than any
// input takes even on a loaded machine under the race detector, so
// reaching it means the call waits for something that will never come.
const hangLimit = 2 * time.Minute

// Within runs f on a goroutine and fails t if f has not returned by
// hangLimit, so that a target's hang is reported as a failure of the
// input that caused it rather than as a fuzzing process gone quiet.
func Within(t testing.TB, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(hangLimit):
		t.Fatalf("%s did not return within %v: it hangs", what, hangLimit)
	}
}

// ReadSizes turns fuzz bytes into the read sizes of SetReadSizes: each
// byte plus one.
func ReadSizes(b []byte) []int {
	sizes := make([]int, len(b))
	for i, c := range b {
		sizes[i] = int(c) + 1
	}
	return sizes
}
