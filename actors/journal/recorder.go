package journal

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Tuning of the recorder.
const (
	// ChunkBytes is how much a buffer collects before it hands its records
	// to the file writer: large enough that the hand-over (a channel send)
	// is rare, small enough that ten thousand busy connections hold a
	// bounded amount each.
	ChunkBytes = 64 << 10
	// DefaultFlushEvery is how often every buffer is emptied even if not
	// full, so a quiet actor's records reach the file within about this
	// long (and records of different actors are at most about this far
	// out of order in the file), and idle buffers give their memory back.
	DefaultFlushEvery = time.Second
	// chunkQueue is how many full chunks may wait for the file writer
	// (4 MiB): a disk slower than that for long makes recorders wait.
	chunkQueue = 64
)

// RecorderConfig configures a Recorder.
type RecorderConfig struct {
	// MaxBytes bounds the records written; at the limit recording stops,
	// says so once in the log and in a KindNote record, and the journal
	// stays readable. 0: no limit.
	MaxBytes int64
	// Payloads records packet payloads, not only their sizes.
	Payloads bool
	// Clock stamps records and paces the periodic flush: the System's
	// clock, so a test with a FakeClock records fake time. nil: the wall
	// clock.
	Clock actors.Clock
	Log   zerolog.Logger
	// FlushEvery overrides DefaultFlushEvery.
	FlushEvery time.Duration
}

// Recorder journals what derpd's actors receive and what its readers
// route. Each actor and each reader records into a Buffer of its own,
// without a lock shared with anyone; full buffers are handed as chunks to
// one goroutine that writes the file. In a file, the records of one
// buffer are in order; records of different buffers interleave by chunk,
// so a replay orders them by Seq (see Ordered).
//
// Recorder implements actors.Recorder.
type Recorder struct {
	// Set once.
	cfg   RecorderConfig
	clock actors.Clock
	start time.Time
	// startNs is start in unix ns, the origin of packets' read stamps.
	startNs int64
	out     io.Writer
	file    io.Closer // nil when the caller owns the writer
	w       *Writer

	seq     atomic.Uint64
	queued  atomic.Int64 // bytes of records handed to the writer
	stopped atomic.Bool  // records are no longer kept: at the limit, after a write error, or closed
	atLimit atomic.Bool  // stopped because the journal reached MaxBytes

	// mu guards buffers, closed and the chunks channel's closing: it is
	// taken per chunk and per buffer made, never per record.
	mu      sync.RWMutex
	buffers map[*Buffer]struct{}
	closed  bool
	chunks  chan *chunk
	done    chan struct{} // closed when the writer goroutine ends
	timer   actors.Timer
	werr    error // the writer goroutine's first error; read after done
	// flushMu serializes Flush; flushList is its reused list of buffers.
	flushMu   sync.Mutex
	flushList []*Buffer
	pool      sync.Pool
}

type chunk struct{ b []byte }

// Create makes the journal file path (truncating one that exists) and
// returns a Recorder writing to it.
func Create(path string, cfg RecorderConfig) (*Recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	r, err := NewRecorder(f, cfg)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.file = f
	return r, nil
}

// NewRecorder returns a Recorder writing the journal to w, which it does
// not close.
func NewRecorder(w io.Writer, cfg RecorderConfig) (*Recorder, error) {
	if cfg.Clock == nil {
		cfg.Clock = actors.RealClock
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = DefaultFlushEvery
	}
	r := &Recorder{
		cfg:     cfg,
		clock:   cfg.Clock,
		start:   cfg.Clock.Now(),
		out:     bufio.NewWriterSize(w, ChunkBytes),
		buffers: make(map[*Buffer]struct{}),
		chunks:  make(chan *chunk, chunkQueue),
		done:    make(chan struct{}),
	}
	jw, err := NewWriter(r.out, Header{Start: r.start, Payloads: cfg.Payloads})
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	r.w = jw
	r.startNs = r.start.UnixNano()
	go r.writeLoop()
	r.timer = r.clock.AfterFunc(cfg.FlushEvery, r.tick)
	return r, nil
}

// Start is the journal's start time, the origin of every record's At.
func (r *Recorder) Start() time.Time { return r.start }

// Stopped reports whether recording stopped at the byte limit (not
// merely because it was closed).
func (r *Recorder) Stopped() bool { return r.atLimit.Load() }

func (r *Recorder) writeLoop() {
	defer close(r.done)
	for c := range r.chunks {
		if r.werr == nil {
			if err := r.w.WriteEncoded(c.b); err != nil {
				r.werr = err
				r.cfg.Log.Error().Err(err).Msg("recording: write failed; recording stops")
				r.stopped.Store(true)
			}
		}
		if cap(c.b) >= ChunkBytes && cap(c.b) <= 2*ChunkBytes {
			c.b = c.b[:0]
			r.pool.Put(c)
		}
	}
}

// tick empties every buffer and sets the next tick.
func (r *Recorder) tick() {
	r.Flush()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.timer = r.clock.AfterFunc(r.cfg.FlushEvery, r.tick)
	}
}

// Flush hands every buffer's records to the file writer.
func (r *Recorder) Flush() {
	// One flush at a time, reusing one list of the buffers: with 100,000
	// connections it is 200,000 pointers long, once a second.
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.RLock()
	bufs := r.flushList[:0]
	for b := range r.buffers {
		bufs = append(bufs, b)
	}
	r.mu.RUnlock()
	for _, b := range bufs {
		b.flush()
	}
	clear(bufs) // let closed buffers go
	r.flushList = bufs
}

// Close flushes every buffer, writes the end record and closes the file
// (if the Recorder made it). Records made after Close are dropped. Call
// it after the connections are closed, so their last records are in.
func (r *Recorder) Close() error {
	r.Flush()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		<-r.done
		return r.werr
	}
	r.closed = true
	r.stopped.Store(true)
	if r.timer != nil {
		r.timer.Stop()
	}
	close(r.chunks)
	r.mu.Unlock()
	<-r.done
	err := r.werr
	if err == nil {
		err = r.w.Close()
	}
	if r.file != nil {
		if cerr := r.file.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// hand gives the file writer a chunk of records, unless the byte limit is
// reached: then recording stops, once, with a log line and a note.
func (r *Recorder) hand(b []byte) {
	if len(b) == 0 {
		return
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed || r.stopped.Load() {
		return
	}
	if max := r.cfg.MaxBytes; max > 0 && r.queued.Add(int64(len(b))) > max {
		if r.stopped.CompareAndSwap(false, true) {
			r.atLimit.Store(true)
			text := fmt.Sprintf("recording stopped at the limit of %d bytes (-record-max-bytes)", max)
			r.cfg.Log.Warn().Int64("max_bytes", max).Msg("recording stopped: the journal reached -record-max-bytes")
			r.chunks <- &chunk{b: AppendNote(nil, r.seq.Add(1), r.since(), text)}
		}
		return
	}
	r.chunks <- &chunk{b: b}
}

func (r *Recorder) since() time.Duration { return r.clock.Now().Sub(r.start) }

// newChunk returns an empty byte slice for a buffer that just handed one
// over full: taken from the writer's returns when it can be.
func (r *Recorder) newChunk() []byte {
	if c, ok := r.pool.Get().(*chunk); ok {
		return c.b[:0]
	}
	return make([]byte, 0, ChunkBytes+ChunkBytes/4)
}

// NewBuffer returns a buffer recording for target.
func (r *Recorder) NewBuffer(target Target) *Buffer {
	b := &Buffer{rec: r, target: kindIndex(target.Kind), id: target.ID}
	r.mu.Lock()
	if !r.closed {
		r.buffers[b] = struct{}{}
		b.listed = true
	}
	r.mu.Unlock()
	return b
}

// Middleware implements actors.Recorder: the receiver middleware of one
// actor, recording every message its mailbox hands it into a buffer of
// its own, before the actor sees it.
func (r *Recorder) Middleware(kind actors.ActorKind, id uint64) actor.ReceiverMiddleware {
	b := r.NewBuffer(Target{Kind: kind, ID: id})
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
			b.Message(env.Message)
			next(c, env)
			if _, ok := env.Message.(*actor.Stopped); ok {
				b.Close()
			}
		}
	}
}

// Packets implements actors.Recorder: the buffer a reader records the
// packets of connection conn into.
func (r *Recorder) Packets(conn uint64) actors.PacketRecorder {
	return r.NewBuffer(Target{Kind: actors.ActorClient, ID: conn})
}

// Buffer collects the records of one actor or one reader. Its owner
// records from one goroutine at a time; the lock is taken by it and, once
// a FlushEvery, by the flush, so it is practically never contended.
type Buffer struct {
	rec    *Recorder
	target byte
	id     uint64

	mu     sync.Mutex
	buf    []byte
	listed bool // in rec.buffers
	// The source of the last packet recorded, which the next leaves out
	// if it is the same. A buffer's records reach the file in order, so
	// the Reader always has it.
	lastSrc wire.NodePublic
	hasSrc  bool
}

// Message records msg, received by the buffer's actor.
func (b *Buffer) Message(msg any) {
	r := b.rec
	if r.stopped.Load() {
		return
	}
	b.mu.Lock()
	b.buf = appendMessageRecord(b.buf, r.seq.Add(1), r.since(), b.target, b.id, msg)
	b.filled()
	b.mu.Unlock()
}

// RecordPacket implements actors.PacketRecorder: a packet the reader of
// connection conn read at (unix ns) and routes toward dst. The payload is
// recorded only when the Recorder records payloads.
func (b *Buffer) RecordPacket(at int64, conn uint64, src, dst wire.NodePublic, payload []byte, disco, forwarded bool) {
	r := b.rec
	if r.stopped.Load() {
		return
	}
	b.mu.Lock()
	same := b.hasSrc && b.lastSrc == src
	b.lastSrc, b.hasSrc = src, true
	b.buf = appendPacketRecord(b.buf, r.seq.Add(1), time.Duration(at-r.startNs), conn, &src, &dst, len(payload), disco, forwarded, same, payload, r.cfg.Payloads)
	b.filled()
	b.mu.Unlock()
}

// filled hands the buffer over if it is full; b.mu is held.
func (b *Buffer) filled() {
	if len(b.buf) < ChunkBytes {
		return
	}
	if !b.listed {
		// Closed before (an actor restarted after Stopped): list it again
		// so the final flush finds it.
		b.rec.mu.Lock()
		if !b.rec.closed {
			b.rec.buffers[b] = struct{}{}
			b.listed = true
		}
		b.rec.mu.Unlock()
	}
	full := b.buf
	b.buf = b.rec.newChunk()
	b.rec.hand(full)
}

// flush hands over whatever the buffer holds and lets its memory go: an
// idle actor keeps nothing.
func (b *Buffer) flush() {
	b.mu.Lock()
	full := b.buf
	b.buf = nil
	b.mu.Unlock()
	b.rec.hand(full)
}

// Close hands over the buffer's last records and forgets it: its actor
// stopped, or its reader ended.
func (b *Buffer) Close() {
	b.flush()
	b.mu.Lock()
	b.rec.mu.Lock()
	delete(b.rec.buffers, b)
	b.listed = false
	b.rec.mu.Unlock()
	b.mu.Unlock()
}
