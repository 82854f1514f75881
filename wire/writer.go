package wire

import (
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net/netip"
	"sync"
	"time"
)

// writeBufSize is the batch a writer collects before a system call: about
// fifty 1.3 KiB packets, and always room for one largest frame, so that
// even a 64 KiB packet leaves in one write with its header. It is taken
// from a pool when there is something to write and returned when the
// writer goes idle.
const writeBufSize = HeaderLen + MaxForwardFrameBody

var writeBufPool = sync.Pool{New: func() any { b := make([]byte, 0, writeBufSize); return &b }}

// Writer batches frames into one buffer and writes them with as few system
// calls as the caller's flushing allows. It is owned by one goroutine.
// Errors are sticky: after the first failed write every call returns it.
type Writer struct {
	dst      io.Writer
	bufp     *[]byte // pooled; nil while idle
	buf      []byte
	maxWrite int // largest single Write; 0 means unlimited
	frames   int // frames buffered since the last Flush
	err      error
}

// NewWriter returns a Writer to dst. maxWrite, if positive, caps the bytes
// handed to dst in one Write call: WebSocket carries each Write as one
// message and peers only accept messages up to 32 KiB.
func NewWriter(dst io.Writer, maxWrite int) *Writer {
	return &Writer{dst: dst, maxWrite: maxWrite}
}

// Buffered reports how many bytes await Flush.
func (w *Writer) Buffered() int { return len(w.buf) }

// Frames reports how many frames were buffered since the last Flush; the
// caller reads it before flushing to measure batch sizes.
func (w *Writer) Frames() int { return w.frames }

// Err returns the sticky write error, if any.
func (w *Writer) Err() error { return w.err }

// grab returns a slice of n bytes at the end of the buffer, flushing first
// if they do not fit. Callers fill the slice completely.
func (w *Writer) grab(n int) []byte {
	if w.bufp == nil {
		w.bufp = writeBufPool.Get().(*[]byte)
		w.buf = (*w.bufp)[:0]
	}
	if len(w.buf)+n > cap(w.buf) {
		w.flushBuf()
	}
	l := len(w.buf)
	w.buf = w.buf[:l+n]
	return w.buf[l : l+n]
}

// WriteFrame appends a complete frame made of a header and the body parts
// (usually a key and a payload). Bodies too big for the buffer have part2
// written through without copying.
//
// part1 is always copied, never handed to the destination: a slice passed
// to an io.Writer escapes, and the helpers below build their part1 (keys,
// ping data, PeerGone bodies) in stack arrays that would then be moved to
// the heap on every call.
func (w *Writer) WriteFrame(t FrameType, part1, part2 []byte) error {
	if w.err != nil {
		return w.err
	}
	n := len(part1) + len(part2)
	w.frames++
	if HeaderLen+n > writeBufSize {
		PutHeader(w.grab(HeaderLen), t, uint32(n))
		w.copyIn(part1)
		w.flushBuf()
		w.writeThrough(part2)
		return w.err
	}
	b := w.grab(HeaderLen + n)
	PutHeader(b, t, uint32(n))
	copy(b[HeaderLen+copy(b[HeaderLen:], part1):], part2)
	return w.err
}

// copyIn copies p into the buffer, flushing as it fills; p may be larger
// than the buffer.
func (w *Writer) copyIn(p []byte) {
	for len(p) > 0 && w.err == nil {
		p = p[copy(w.grab(min(len(p), writeBufSize)), p):]
	}
}

// WriteRaw appends bytes that are already one or more complete frames,
// such as Packet.RecvFrame.
func (w *Writer) WriteRaw(frame []byte) error {
	if w.err != nil {
		return w.err
	}
	w.frames++
	if len(frame) > writeBufSize {
		w.flushBuf()
		w.writeThrough(frame)
		return w.err
	}
	copy(w.grab(len(frame)), frame)
	return w.err
}

// Flush writes everything buffered.
func (w *Writer) Flush() error {
	w.flushBuf()
	w.frames = 0
	return w.err
}

// ErrWouldBlock is what a non-blocking write function returns when the
// socket takes no more for now.
var ErrWouldBlock = errors.New("write would block")

// TryFlush writes what is buffered with write, a non-blocking write that
// may take only part of it (returning ErrWouldBlock). What it does not take
// stays buffered for a later Flush. It reports whether everything went.
// write is offered at most maxWrite bytes at a time, as dst would be.
func (w *Writer) TryFlush(write func([]byte) (int, error)) (bool, error) {
	if w.err != nil {
		return false, w.err
	}
	for len(w.buf) > 0 {
		chunk := w.buf
		if w.maxWrite > 0 && len(chunk) > w.maxWrite {
			chunk = chunk[:w.maxWrite]
		}
		n, err := write(chunk)
		if n > 0 {
			w.buf = w.buf[:copy(w.buf, w.buf[n:])]
		}
		if errors.Is(err, ErrWouldBlock) {
			return false, nil
		}
		if err != nil {
			w.err = err
			return false, err
		}
	}
	w.frames = 0
	return true, nil
}

// Release returns the buffer to the pool once nothing is buffered, so an
// idle connection holds no write memory.
func (w *Writer) Release() {
	if w.bufp != nil && len(w.buf) == 0 {
		*w.bufp = w.buf[:0]
		writeBufPool.Put(w.bufp)
		w.bufp, w.buf = nil, nil
	}
}

func (w *Writer) flushBuf() {
	if len(w.buf) == 0 {
		return
	}
	w.writeThrough(w.buf)
	w.buf = w.buf[:0]
}

func (w *Writer) writeThrough(p []byte) {
	for len(p) > 0 && w.err == nil {
		chunk := p
		if w.maxWrite > 0 && len(chunk) > w.maxWrite {
			chunk = chunk[:w.maxWrite]
		}
		var n int
		n, w.err = w.dst.Write(chunk)
		p = p[n:]
	}
}

// The methods below write one frame each, in the layouts of frame.go.

// WriteServerKey writes the server's first frame.
func (w *Writer) WriteServerKey(server NodePublic) error {
	return w.WriteFrame(FrameServerKey, serverKeyMagic[:], server[:])
}

// WriteKeepAlive writes an empty KeepAlive.
func (w *Writer) WriteKeepAlive() error { return w.WriteFrame(FrameKeepAlive, nil, nil) }

// WritePing writes a Ping with 8 bytes of data.
func (w *Writer) WritePing(data [PingDataLen]byte) error {
	return w.WriteFrame(FramePing, data[:], nil)
}

// WritePong answers a Ping with its data.
func (w *Writer) WritePong(data [PingDataLen]byte) error {
	return w.WriteFrame(FramePong, data[:], nil)
}

// WritePeerGone tells a client that peer is gone for the given reason.
func (w *Writer) WritePeerGone(peer NodePublic, reason PeerGoneReason) error {
	var b [PeerGoneLen]byte
	copy(b[:], peer[:])
	b[KeyLen] = byte(reason)
	return w.WriteFrame(FramePeerGone, b[:], nil)
}

// RestartingLen is the body of a Restarting frame: two big-endian uint32
// millisecond counts.
const RestartingLen = 8

// WriteRestarting tells a client that the server is restarting: wait
// reconnectIn before reconnecting, and keep trying for tryFor before
// treating the server as failed. Both are advisory; they are sent in whole
// milliseconds, negative ones as 0 and ones beyond the field's 49 days as
// its largest value.
func (w *Writer) WriteRestarting(reconnectIn, tryFor time.Duration) error {
	var b [RestartingLen]byte
	binary.BigEndian.PutUint32(b[0:4], durationMillis32(reconnectIn))
	binary.BigEndian.PutUint32(b[4:8], durationMillis32(tryFor))
	return w.WriteFrame(FrameRestarting, b[:], nil)
}

func durationMillis32(d time.Duration) uint32 {
	return uint32(min(max(d.Milliseconds(), 0), math.MaxUint32))
}

// WritePeerPresent tells a watcher that peer is connected from addr.
func (w *Writer) WritePeerPresent(peer NodePublic, addr netip.AddrPort, flags PeerPresentFlags) error {
	var b [PeerPresentLen]byte
	AppendPeerPresent(b[:0], peer, addr, flags)
	return w.WriteFrame(FramePeerPresent, b[:], nil)
}

// AppendPeerPresent appends a PeerPresent body. IPv4 addresses are
// written in their IPv4-mapped IPv6 form; an invalid address is all zeros.
func AppendPeerPresent(dst []byte, peer NodePublic, addr netip.AddrPort, flags PeerPresentFlags) []byte {
	dst = append(dst, peer[:]...)
	var ip [16]byte
	if a := addr.Addr(); a.IsValid() {
		ip = a.As16()
	}
	dst = append(dst, ip[:]...)
	dst = binary.BigEndian.AppendUint16(dst, addr.Port())
	return append(dst, byte(flags))
}

// WriteSendPacket writes a client's SendPacket.
func (w *Writer) WriteSendPacket(dst NodePublic, payload []byte) error {
	return w.WriteFrame(FrameSendPacket, dst[:], payload)
}

// WriteRecvPacket writes a RecvPacket from src. Servers normally use
// WriteRaw(Packet.RecvFrame()) instead, which needs no assembly.
func (w *Writer) WriteRecvPacket(src NodePublic, payload []byte) error {
	return w.WriteFrame(FrameRecvPacket, src[:], payload)
}

// WriteForwardPacket writes a mesh ForwardPacket of payload from src to dst.
func (w *Writer) WriteForwardPacket(src, dst NodePublic, payload []byte) error {
	var keys [2 * KeyLen]byte
	copy(keys[:], src[:])
	copy(keys[KeyLen:], dst[:])
	return w.WriteFrame(FrameForwardPacket, keys[:], payload)
}

// WriteNotePreferred tells the server whether it is the client's home.
func (w *Writer) WriteNotePreferred(preferred bool) error {
	b := [1]byte{0}
	if preferred {
		b[0] = 1
	}
	return w.WriteFrame(FrameNotePreferred, b[:], nil)
}

// WriteWatchConns subscribes a mesh peer to connection changes.
func (w *Writer) WriteWatchConns() error { return w.WriteFrame(FrameWatchConns, nil, nil) }

// WriteClosePeer asks the server to close every connection of peer.
func (w *Writer) WriteClosePeer(peer NodePublic) error {
	return w.WriteFrame(FrameClosePeer, peer[:], nil)
}
