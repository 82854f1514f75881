package main

import (
	"context"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// listener is the main TCP listener with derper's socket options and
// connection-rate limit applied to every accepted socket.
type listener struct {
	net.Listener
	userTimeout time.Duration
	limit       *rate.Limiter // nil: unlimited

	accepted atomic.Int64
	rejected atomic.Int64

	// onReject, if set, hears of every socket closed for the limit.
	onReject func(net.Addr)
}

func listen(addr string, keepAliveIdle, userTimeout time.Duration, limit float64, burst int) (*listener, error) {
	lc := net.ListenConfig{
		// Keepalive probes find peers that vanished without a FIN; the
		// idle time is long because DERP already sends its own
		// keepalives every minute.
		KeepAliveConfig: net.KeepAliveConfig{Enable: keepAliveIdle > 0, Idle: keepAliveIdle, Interval: 15 * time.Second, Count: 9},
		// As with upstream: 0 leaves Go's default (probes after 15 s),
		// a negative value turns keepalives off.
		KeepAlive: keepAliveIdle,
	}
	// Multipath TCP gains nothing for a relay and upstream turns it off.
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{Listener: ln, userTimeout: userTimeout}
	if limit > 0 && !isInf(limit) {
		l.limit = rate.NewLimiter(rate.Limit(limit), burst)
	}
	return l, nil
}

func isInf(f float64) bool { return f > 1e300 }

// Accept returns the next connection within the rate limit. Sockets over
// the limit are closed at once and the loop goes on: unlike upstream,
// which reports them to the HTTP server as a fatal accept error, a burst of
// connections must not stop the server.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.limit != nil && !l.limit.Allow() {
			l.rejected.Add(1)
			if l.onReject != nil {
				l.onReject(c.RemoteAddr())
			}
			c.Close()
			continue
		}
		l.accepted.Add(1)
		if tc, ok := c.(*net.TCPConn); ok && l.userTimeout > 0 {
			setUserTimeout(tc, l.userTimeout)
		}
		return c, nil
	}
}
