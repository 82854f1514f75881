package main

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// linkProxy stands between node 1 and node 3 of the slow-peer region:
// node 1's -mesh-with names node 3 at the proxy's port, so node 1's mesh
// link to node 3 (the connection that carries its ForwardPackets to node
// 3 and its watch of node 3's clients) runs through it. The TLS session
// passes through untouched, end to end between the two servers.
//
// It relays both ways at full speed until throttled; then it passes on
// what node 1 sends at most rate bytes a second, as node 3 would if it
// read its link slowly (short of CPU, or behind a congested path). On
// loopback the kernel would otherwise buffer megabytes on the way, so the
// proxy's socket towards node 1 has a small fixed receive buffer: what
// it does not read backs up into node 1 at once.
type linkProxy struct {
	ln      net.Listener
	target  string
	rate    atomic.Int64 // bytes/s from node 1 to node 3; 0: unthrottled
	relayed atomic.Int64 // bytes passed from node 1 to node 3

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

// proxyReadBuffer is the receive buffer of the proxy's sockets towards
// node 1 (the kernel doubles it): a few loopback segments.
const proxyReadBuffer = 64 << 10

func newLinkProxy(target string) (*linkProxy, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		// Set on the listener, so that accepted sockets start with it
		// and the window they announce is small from the first byte.
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, proxyReadBuffer)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &linkProxy{ln: ln, target: target}
	go p.serve()
	return p, nil
}

func (p *linkProxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// throttle sets the rate from node 1 to node 3 (0: full speed).
func (p *linkProxy) throttle(bytesPerSec int64) { p.rate.Store(bytesPerSec) }

func (p *linkProxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", p.target, 10*time.Second)
		if err != nil {
			in.Close()
			continue
		}
		if !p.track(in, out) {
			return
		}
		go func() {
			p.relay(out, in) // node 1 → node 3
			in.Close()
			out.Close()
		}()
		go func() {
			io.Copy(in, out) // node 3 → node 1, never throttled
			in.Close()
			out.Close()
		}()
	}
}

func (p *linkProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	p.conns = append(p.conns, cs...)
	return true
}

// relay copies from to to, pacing to the current rate. Idle time earns
// no credit: a throttled link never passes more than rate in any stretch
// longer than one read.
func (p *linkProxy) relay(to, from net.Conn) {
	buf := make([]byte, 64<<10)
	var next time.Time
	for {
		chunk := buf
		rate := p.rate.Load()
		if rate > 0 {
			// Small reads while throttled, so that each pause is a few
			// milliseconds rather than one long stop.
			chunk = buf[:4<<10]
		}
		n, err := from.Read(chunk)
		if n > 0 {
			if rate > 0 {
				now := time.Now()
				if next.Before(now) {
					next = now
				}
				next = next.Add(time.Duration(int64(n) * int64(time.Second) / rate))
				time.Sleep(time.Until(next))
			}
			if _, werr := to.Write(chunk[:n]); werr != nil {
				return
			}
			p.relayed.Add(int64(n))
		}
		if err != nil {
			return
		}
	}
}

func (p *linkProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
}
