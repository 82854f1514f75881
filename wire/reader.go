package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
)

// readBufSize is the per-connection read buffer while the connection has
// data to read. Large enough that one read system call picks up dozens of
// 1.3 KiB packets from a busy sender; it goes back to a pool whenever the
// connection runs dry, so idle connections hold none (see fill).
const readBufSize = 64 << 10

var readBufPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// ErrFrameTooLarge is returned by ReadHeader when a frame claims more than
// the reader's limit; the stream cannot be resynchronised after that.
var ErrFrameTooLarge = errors.New("frame length exceeds limit")

// Reader decodes frames from a byte stream. It is owned by one goroutine.
//
// Steady-state reads do not allocate: the buffer comes from a pool, and a
// reader that has consumed everything gives its buffer back before
// waiting for more bytes. On plain TCP (see newRawSource) it learns that
// a read would wait from the socket itself; on other connections (TLS,
// WebSocket) it waits by reading a few bytes into a small array of its
// own.
type Reader struct {
	src      io.Reader
	raw      *rawSource // nil unless the connection exposes its file descriptor
	bufp     *[]byte    // pooled buffer; nil while idle
	buf      []byte     // *bufp, or the caller's prefix before the first fill
	r, w     int        // unread bytes are buf[r:w]
	maxFrame uint32
	err      error // sticky

	// pending is an error that came with bytes; it is reported once they
	// are used up, in place of the next read. Sources need not repeat an
	// error, so dropping it would read on past a failure.
	pending error

	// idle receives the first bytes after the reader ran dry on a
	// connection without a raw source; see fill.
	idle [HeaderLen]byte
}

// NewReader returns a Reader of conn. prefix holds bytes already read from
// the connection (an HTTP server's buffered look-ahead, such as a
// fast-start client's pipelined ClientInfo); they are returned first.
// Frames claiming more than maxFrame bytes make ReadHeader fail.
func NewReader(conn io.Reader, prefix []byte, maxFrame uint32) *Reader {
	rd := &Reader{src: conn, maxFrame: maxFrame}
	if len(prefix) > readBufSize {
		// Never the case for an HTTP server's look-ahead (a few KiB), but
		// the buffer must be able to hold the prefix, so fall back to
		// plain reads rather than truncate it.
		rd.src = io.MultiReader(bytes.NewReader(prefix), conn)
		return rd
	}
	if len(prefix) > 0 {
		rd.buf = prefix
		rd.w = len(prefix)
	}
	rd.raw = newRawSource(conn)
	return rd
}

// SetMaxFrame changes the largest frame ReadHeader accepts, for example
// after the handshake, when frames may no longer be ClientInfo-sized.
func (rd *Reader) SetMaxFrame(n uint32) { rd.maxFrame = n }

// Buffered reports how many bytes are buffered and not yet consumed.
func (rd *Reader) Buffered() int { return rd.w - rd.r }

// FrameBuffered reports whether the next frame, header and body, is whole
// in the buffer, so that reading it will not wait on the connection.
func (rd *Reader) FrameBuffered() bool {
	if rd.w-rd.r < HeaderLen {
		return false
	}
	_, n := ParseHeader(rd.buf[rd.r:])
	return uint64(rd.w-rd.r) >= uint64(HeaderLen)+uint64(n)
}

// ReadHeader reads the next frame header.
func (rd *Reader) ReadHeader() (FrameType, uint32, error) {
	if rd.raw == nil && rd.r == rd.w && rd.err == nil && rd.pending == nil {
		if err := rd.waitIdle(); err != nil {
			return 0, 0, err
		}
	}
	if err := rd.fill(HeaderLen); err != nil {
		return 0, 0, err
	}
	t, n := ParseHeader(rd.buf[rd.r:])
	rd.r += HeaderLen
	if n > rd.maxFrame {
		rd.err = fmt.Errorf("%w: %v frame claims %d bytes, limit %d", ErrFrameTooLarge, t, n, rd.maxFrame)
		return t, n, rd.err
	}
	return t, n, nil
}

// ReadFull fills p from the stream.
func (rd *Reader) ReadFull(p []byte) error {
	for len(p) > 0 {
		if rd.r == rd.w {
			// Large remainders skip the buffer: the bytes go straight
			// into their destination with no extra copy.
			if len(p) >= readBufSize/2 {
				return rd.readDirect(p)
			}
			if err := rd.fill(1); err != nil {
				return midFrame(err)
			}
		}
		n := copy(p, rd.buf[rd.r:rd.w])
		rd.r += n
		p = p[n:]
	}
	return nil
}

// Next returns the next n bytes (n ≤ 64 KiB) as a slice of the reader's
// buffer, valid until the next call on the reader. Reading keys this way,
// rather than into a caller's array with ReadFull, keeps the array from
// escaping to the heap on every packet.
func (rd *Reader) Next(n int) ([]byte, error) {
	if n < 0 || n > readBufSize {
		return nil, fmt.Errorf("wire: Next(%d) outside [0, %d]", n, readBufSize)
	}
	if err := rd.fill(n); err != nil {
		return nil, midFrame(err)
	}
	b := rd.buf[rd.r : rd.r+n]
	rd.r += n
	return b, nil
}

// ReadKey reads a 32-byte key.
func (rd *Reader) ReadKey() (NodePublic, error) {
	b, err := rd.Next(KeyLen)
	if err != nil {
		return NodePublic{}, err
	}
	return NodePublic(b), nil
}

// midFrame reports a clean end of stream inside a frame as unexpected.
func midFrame(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Discard skips n bytes, such as the body of a frame type nobody handles.
func (rd *Reader) Discard(n int) error {
	for n > 0 {
		if rd.r == rd.w {
			if err := rd.fill(1); err != nil {
				return midFrame(err)
			}
		}
		k := min(n, rd.w-rd.r)
		rd.r += k
		n -= k
	}
	return nil
}

// Release gives the buffer back to the pool; call it when the connection
// is done. Buffered bytes are lost.
func (rd *Reader) Release() {
	rd.dropBuffer()
	rd.buf, rd.r, rd.w = nil, 0, 0
}

func (rd *Reader) dropBuffer() {
	if rd.bufp != nil {
		readBufPool.Put(rd.bufp)
		rd.bufp = nil
	}
}

// fill makes at least n (≤ readBufSize) unread bytes available.
func (rd *Reader) fill(n int) error {
	if rd.err != nil {
		return rd.err
	}
	for rd.w-rd.r < n {
		if rd.bufp == nil {
			// First fill after the prefix, or after going idle: move
			// what is left of the old bytes into a pooled buffer.
			bp := readBufPool.Get().(*[]byte)
			k := copy(*bp, rd.buf[rd.r:rd.w])
			rd.bufp, rd.buf, rd.r, rd.w = bp, *bp, 0, k
		} else if rd.r > 0 && len(rd.buf)-rd.r < n {
			k := copy(rd.buf, rd.buf[rd.r:rd.w])
			rd.r, rd.w = 0, k
		}
		var m int
		var err error
		switch {
		case rd.pending != nil:
			err, rd.pending = rd.pending, nil
		case rd.raw != nil:
			m, err = rd.raw.read(rd)
		default:
			m, err = rd.src.Read(rd.buf[rd.w:])
		}
		rd.w += m
		if err != nil {
			if rd.w-rd.r >= n {
				rd.pending = err // for when these bytes run out
				break
			}
			if err == io.EOF && rd.w > rd.r {
				err = io.ErrUnexpectedEOF
			}
			rd.err = err
			return err
		}
	}
	return nil
}

// waitIdle waits for the next frame on a connection without a raw source,
// with nothing unread. The wait may last as long as the client stays
// quiet, so it holds no pooled buffer: it reads the first bytes into
// rd.idle, and fill takes a buffer from the pool once they are in. (For
// TLS the rest of the record is decrypted by then, so the next read costs
// no system call.) Only frame boundaries wait this way; inside a frame
// the bytes are already on their way.
func (rd *Reader) waitIdle() error {
	rd.dropBuffer()
	rd.buf, rd.r, rd.w = rd.idle[:], 0, 0
	for rd.w == 0 {
		m, err := rd.src.Read(rd.buf)
		rd.w = m
		if err != nil {
			if m > 0 {
				rd.pending = err // fill reports it after these bytes
				return nil
			}
			rd.err = err
			return err
		}
	}
	return nil
}

// readDirect reads into p without buffering; the buffer is empty.
func (rd *Reader) readDirect(p []byte) error {
	if rd.err != nil {
		return rd.err
	}
	var err error
	switch {
	case rd.pending != nil:
		err, rd.pending = rd.pending, nil
	case rd.raw != nil:
		err = rd.raw.readFull(p)
	default:
		_, err = io.ReadFull(rd.src, p)
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	rd.err = err
	return err
}
