package actors

import (
	"net"
	"sync/atomic"
	"time"
)

// StampedConn is a socket marked with the time the write under way
// began. Under TLS it is the raw socket, so that an outbox tells a
// receiver that takes no data (the socket write blocks) from a busy core
// that is still encrypting the batch: only the first is a stall.
type StampedConn struct {
	net.Conn
	WriteStart atomic.Int64 // Unix nanoseconds; 0 between writes
}

// Write implements net.Conn.
func (c *StampedConn) Write(b []byte) (int, error) {
	c.WriteStart.Store(time.Now().UnixNano())
	n, err := c.Conn.Write(b)
	c.WriteStart.Store(0)
	return n, err
}

// StampedUnder returns the StampedConn that c runs over (through TLS),
// or nil if there is none.
func StampedUnder(c net.Conn) *StampedConn {
	for c != nil {
		if s, ok := c.(*StampedConn); ok {
			return s
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}
