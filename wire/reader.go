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
// reader that is about to wait for bytes gives its buffer back first. On
// plain TCP (see newRawSource) it learns that a read would wait from the
// socket itself; on other connections (TLS, WebSocket) it cannot know, and
// guesses from the last read instead (see fill): it waits in a small array
// of its own, and reads into a pooled buffer only while bytes are flowing.
type Reader struct {
	src      io.Reader
	raw      *rawSource // nil unless the connection exposes its file descriptor
	bufp     *[]byte    // pooled buffer; nil while waiting, or not yet taken
	buf      []byte     // *bufp, small, or the caller's prefix before the first fill
	r, w     int        // unread bytes are buf[r:w]
	maxFrame uint32
	err      error // sticky

	// pending is an error that came with bytes; it is reported once they
	// are used up, in place of the next read. Sources need not repeat an
	// error, so dropping it would read on past a failure.
	pending error

	// flowing: the last read from a source without a raw socket filled
	// all the room it was given, so more bytes are probably at hand (the
	// rest of a TLS record, say) and the next read goes into a pooled
	// buffer. After a short read the source has probably run dry, and the
	// next read waits in small. See fill.
	flowing bool

	// small holds the unread bytes, and receives the next ones, while a
	// reader without a raw source waits: a frame header, a key, a ping's
	// data, or the first bytes of whatever comes next.
	small [smallLen]byte
}

// waitLen is how much a read into small asks for (at least; more when
// more is needed). It is a SendPacket's header and destination key: from a
// busy sender a wait between frames then comes back full, so the payload
// goes straight to a pooled buffer with nothing left over in small to
// copy, while a client that stops after a header alone, or inside a key,
// is seen to have stopped (the read comes back short) and waits on in
// small.
const waitLen = HeaderLen + KeyLen

// smallLen is the size of a reader's own array for waiting. Every
// fixed-size piece a client connection's reader asks for (a header, then
// a key) fits, so a client that stops inside one holds this and not
// 64 KiB; being larger than a header also means one wait usually picks up
// a SendPacket's header, key and first bytes together.
const smallLen = 64

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
//
// On a source without a raw socket every read may wait, for as long as the
// client likes, and whatever it reads into is held meanwhile. So while a
// wait is likely (the last read came back short: the source had no more at
// hand) and what is asked for fits, fill moves the few unread bytes to
// rd.small, gives the pooled buffer back, and reads at least waitLen bytes
// into small; once a read fills all its room, bytes are flowing and the
// next read goes into a pooled buffer, picking up many frames at once. A
// silent client therefore holds smallLen bytes of the reader and no
// pooled buffer, whether it stopped between frames or inside one: after a
// whole frame, after a header alone, mid-header, mid-key, or mid-payload
// (ReadFull waits with nothing unread, and payloads of half a buffer or
// more are read straight into their destination).
//
// The guess costs a busy sender one small read each time the buffer runs
// dry, about once per TLS record (16 KiB) or WebSocket message, and no
// allocation. It can be wrong in one way: a source that stops exactly
// where a read's room ended (a header and key, say, and then nothing)
// leaves the next read waiting in a pooled buffer. A client can arrange
// that on purpose; it then holds one pooled buffer, the bound this reader
// always had, and no more, since no read waits in a second one. (TLS
// itself lets such a client pin a record's worth of its own buffers.)
func (rd *Reader) fill(n int) error {
	if rd.err != nil {
		return rd.err
	}
	for rd.w-rd.r < n {
		var m int
		var err error
		switch {
		case rd.pending != nil:
			err, rd.pending = rd.pending, nil
		case rd.raw != nil:
			rd.makeRoom(n)
			m, err = rd.raw.read(rd)
		default:
			var room []byte
			if !rd.flowing && n <= smallLen {
				rd.toSmall()
				room = rd.small[rd.w:max(n, waitLen)]
			} else {
				rd.makeRoom(n)
				room = rd.buf[rd.w:]
			}
			m, err = rd.src.Read(room)
			rd.flowing = m == len(room)
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

// makeRoom makes sure the pooled buffer is in use, holding the unread
// bytes, with room after them for at least n in all.
func (rd *Reader) makeRoom(n int) {
	if rd.bufp == nil {
		// First fill after the prefix, or after waiting in small: move
		// what is left of the old bytes into a pooled buffer.
		bp := readBufPool.Get().(*[]byte)
		k := 0
		if rd.w > rd.r {
			k = copy(*bp, rd.buf[rd.r:rd.w])
		}
		rd.bufp, rd.buf, rd.r, rd.w = bp, *bp, 0, k
	} else if rd.r > 0 && len(rd.buf)-rd.r < n {
		k := copy(rd.buf, rd.buf[rd.r:rd.w])
		rd.r, rd.w = 0, k
	}
}

// toSmall moves the unread bytes (fewer than smallLen: fill asks for at
// most smallLen and has fewer) to the front of rd.small, which the next
// read fills, and gives the pooled buffer back.
func (rd *Reader) toSmall() {
	k := 0
	if rd.w > rd.r {
		k = copy(rd.small[:], rd.buf[rd.r:rd.w]) // may overlap: copy moves
	}
	rd.dropBuffer()
	rd.buf, rd.r, rd.w = rd.small[:], 0, k
}

// readDirect reads into p without buffering; the buffer is empty.
func (rd *Reader) readDirect(p []byte) error {
	if rd.err != nil {
		return rd.err
	}
	// Nothing is unread, and filling p may take as long as the client
	// likes: no buffer is needed meanwhile.
	rd.dropBuffer()
	rd.buf, rd.r, rd.w, rd.flowing = nil, 0, 0, false
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
