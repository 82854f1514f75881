//go:build unix

package wire

import (
	"io"
	"syscall"
)

// rawSource reads a socket through its file descriptor so that the reader
// can tell "no data yet" apart from a read and hand its buffer back to the
// pool before parking. Go's own Read would hold the buffer for as long as
// the connection is idle: with 10,000 idle clients that is 640 MiB of read
// buffers doing nothing. Connections without a descriptor (TLS,
// WebSocket) get the same result by waiting in a small array (see fill),
// at the cost of a small read each time the buffer runs dry; here the
// socket says when a read would wait, so no read is wasted.
type rawSource struct {
	conn syscall.RawConn
	rd   *Reader // set for the duration of one read call
	dst  []byte  // when non-nil, readFull's destination instead of rd.buf
	n    int
	err  error
	fn   func(fd uintptr) bool // rawSource.attempt, bound once so calls do not allocate
}

type syscallConner interface {
	SyscallConn() (syscall.RawConn, error)
}

func newRawSource(conn io.Reader) *rawSource {
	sc, ok := conn.(syscallConner)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &rawSource{conn: rc}
	s.fn = s.attempt
	return s
}

// read reads into rd.buf[rd.w:]. While the socket has nothing to read and
// the reader has no unread bytes, the buffer is returned to the pool.
func (s *rawSource) read(rd *Reader) (int, error) {
	s.rd, s.n, s.err = rd, 0, nil
	err := s.conn.Read(s.fn)
	s.rd = nil
	if err != nil {
		return s.n, err
	}
	return s.n, s.err
}

// readFull fills dst completely, bypassing the buffer.
func (s *rawSource) readFull(dst []byte) error {
	for len(dst) > 0 {
		s.dst, s.n, s.err = dst, 0, nil
		err := s.conn.Read(s.fn)
		s.dst = nil
		if err != nil {
			return err
		}
		if s.err != nil {
			return s.err
		}
		dst = dst[s.n:]
	}
	return nil
}

// attempt is called by the runtime with the socket's descriptor; returning
// false parks the goroutine until the socket is readable.
func (s *rawSource) attempt(fd uintptr) bool {
	rd := s.rd
	var p []byte
	if s.dst != nil {
		p = s.dst
	} else {
		if rd.bufp == nil {
			bp := readBufPool.Get().(*[]byte)
			rd.bufp, rd.buf = bp, *bp
		}
		p = rd.buf[rd.w:]
	}
	for {
		n, err := syscall.Read(int(fd), p)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			if s.dst == nil && rd.r == rd.w {
				// Nothing buffered and nothing to read: park without
				// holding memory.
				rd.dropBuffer()
				rd.buf, rd.r, rd.w = nil, 0, 0
			}
			return false
		case err != nil:
			s.err = err
		case n == 0:
			s.err = io.EOF
		default:
			s.n = n
		}
		return true
	}
}
