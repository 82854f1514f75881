//go:build unix

package client

import (
	"net"
	"syscall"

	"github.com/derpd/derpd/wire"
)

// directWriter writes to a TCP socket without ever blocking: one write
// system call on the non-blocking descriptor, taking what the kernel
// accepts. It lets a reader deliver a packet itself when the destination
// has no writer running, saving a goroutine hand-off per packet.
type directWriter struct {
	rc  syscall.RawConn
	b   []byte
	n   int
	err error
	fn  func(fd uintptr) bool // attempt, bound once so calls do not allocate
}

func newDirectWriter(c net.Conn) *directWriter {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil // TLS and WebSocket framing need their own writers
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	d := &directWriter{rc: rc}
	d.fn = d.attempt
	return d
}

// write is a wire.Writer.TryFlush write function. Only the holder of the
// outbox's writer slot calls it.
func (d *directWriter) write(b []byte) (int, error) {
	d.b, d.n, d.err = b, 0, nil
	if err := d.rc.Write(d.fn); err != nil {
		return 0, err
	}
	d.b = nil
	return d.n, d.err
}

func (d *directWriter) attempt(fd uintptr) bool {
	for {
		n, err := syscall.Write(int(fd), d.b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			d.err = wire.ErrWouldBlock
		case err != nil:
			d.err = err
		case n < len(d.b):
			d.n, d.err = n, wire.ErrWouldBlock
		default:
			d.n = n
		}
		return true // never park: that is the writer goroutine's job
	}
}
