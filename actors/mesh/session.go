package mesh

import (
	"encoding/binary"
	"errors"
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

// maxUpdateBatch is the most announcements a session hands the registry
// in one message. The reader waits for the registry to take one batch
// before it sends the next, so however fast a peer announces, at most one
// batch per link waits in the registry's mailbox.
const maxUpdateBatch = 512

// linkReadTimeout is how long a link may hear nothing from its peer
// before it counts as dead. The link pings every pingInterval and any
// server answers at once, so silence this long means the peer or the
// path is gone; waiting for TCP to notice can take many minutes.
const (
	pingInterval    = 5 * time.Second
	linkReadTimeout = 3 * pingInterval
)

// session is one connection of a link, from a completed handshake until
// the connection ends. It owns two goroutines: the reader, which turns
// the peer's PeerPresent and PeerGone frames into registry updates, and
// the outbox's writer, which carries ForwardPackets out.
type session struct {
	id    uint64
	sys   *actors.System
	link  *actor.PID
	pc    *peerConn
	out   *outbox
	clock actors.Clock
	log   zerolog.Logger

	credit    chan struct{} // one token: the registry took the last batch
	done      chan struct{} // closed by close
	closeOnce sync.Once
	readDone  chan struct{} // closed when the reader has exited

	rtt    atomic.Int64 // nanoseconds, from the last Pong; 0 until one came
	health string       // reader only: the peer's last Health text
}

func newSession(sys *actors.System, link *actor.PID, name string, pc *peerConn, depth int, log zerolog.Logger) *session {
	s := &session{
		id:       sys.NextConnID(),
		sys:      sys,
		link:     link,
		pc:       pc,
		out:      newOutbox(sys, pc.conn, pc.sock, depth),
		clock:    sys.Clock,
		log:      log,
		credit:   make(chan struct{}, 1),
		done:     make(chan struct{}),
		readDone: make(chan struct{}),
	}
	s.out.name = name
	s.credit <- struct{}{}
	return s
}

func (s *session) start() {
	go s.out.run()
	go s.read()
}

// close ends the session: the connection closes, both goroutines exit.
func (s *session) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.out.close()
		s.pc.conn.Close()
	})
}

// returnCredit lets the reader send its next batch.
func (s *session) returnCredit() {
	select {
	case s.credit <- struct{}{}:
	default:
	}
}

// ping asks the writer to send a Ping stamped with the time.
func (s *session) ping() { s.out.queuePing(pingData(s.clock.Now())) }

func (s *session) read() {
	err := s.readLoop()
	s.pc.rd.Release()
	if werr := s.out.err(); werr != nil {
		err = fmt.Errorf("writing to the peer: %w", werr)
	}
	close(s.readDone)
	s.sys.Send(s.link, &sessionEnded{session: s.id, err: err})
}

// readLoop reads the peer's frames until the connection ends.
func (s *session) readLoop() error {
	rd, conn := s.pc.rd, s.pc.conn
	var batch []actors.MeshPeerUpdate
	heard := 0 // updates in this session, for a better error
	for {
		if rd.Buffered() == 0 {
			// About to wait on the socket: what the peer said so far
			// goes to the registry first.
			if len(batch) > 0 {
				if err := s.deliver(batch); err != nil {
					return err
				}
				batch = nil
			}
			// The wall clock: the kernel enforces the deadline.
			conn.SetReadDeadline(time.Now().Add(linkReadTimeout))
		}
		t, n, err := rd.ReadHeader()
		if err != nil {
			return s.explain(err, heard)
		}
		u, ok, err := s.readFrame(rd, t, n)
		if err != nil {
			return s.explain(err, heard)
		}
		if !ok {
			continue
		}
		batch = append(batch, u)
		heard++
		if len(batch) >= maxUpdateBatch {
			if err := s.deliver(batch); err != nil {
				return err
			}
			batch = nil
		}
	}
}

// readFrame reads the body of one frame of type t and length n from the
// peer. A PeerPresent or PeerGone is returned as an update (ok); a Pong
// updates the round trip; everything else is read and dropped.
func (s *session) readFrame(rd *wire.Reader, t wire.FrameType, n uint32) (u actors.MeshPeerUpdate, ok bool, err error) {
	switch t {
	case wire.FramePeerPresent, wire.FramePeerGone:
		if n < wire.KeyLen {
			// Receivers drop such bodies (spec 2.4.8 and 2.4.9).
			return u, false, rd.Discard(int(n))
		}
		k, err := rd.ReadKey()
		if err != nil {
			return u, false, err
		}
		rest := int(n) - wire.KeyLen
		if t == wire.FramePeerGone && rest > 0 {
			b, err := rd.Next(1)
			if err != nil {
				return u, false, err
			}
			rest--
			if wire.PeerGoneReason(b[0]) == wire.PeerGoneNotHere {
				// We forwarded a disco packet for k and the peer does not
				// have it: forget the stale forwarder, as upstream does.
				s.log.Debug().Str("key", k.ShortString()).Msg("peer says a key we forwarded to is not there")
			}
		}
		if err := rd.Discard(rest); err != nil {
			return u, false, err
		}
		return actors.MeshPeerUpdate{Key: k, Present: t == wire.FramePeerPresent}, true, nil
	case wire.FramePong:
		if n < wire.PingDataLen {
			return u, false, rd.Discard(int(n))
		}
		b, err := rd.Next(wire.PingDataLen)
		if err != nil {
			return u, false, err
		}
		if sent := int64(binary.BigEndian.Uint64(b)); sent > 0 {
			if d := s.clock.Now().UnixNano() - sent; d >= 0 {
				s.rtt.Store(d)
			}
		}
		return u, false, rd.Discard(int(n) - wire.PingDataLen)
	case wire.FrameHealth:
		b, err := rd.Next(min(int(n), 256))
		if err != nil {
			return u, false, err
		}
		msg := string(b)
		if err := rd.Discard(int(n) - len(b)); err != nil {
			return u, false, err
		}
		if msg == s.health {
			return u, false, nil // said already: a peer cannot flood the log
		}
		s.health = msg
		if msg == "" {
			s.log.Info().Msg("peer reports it is healthy again")
		} else {
			s.log.Warn().Str("problem", msg).Msg("peer reports a health problem")
		}
		return u, false, nil
	default:
		// KeepAlive, Ping (we do not claim to ack pings), packets sent
		// to this server's key, and types we do not know.
		return u, false, rd.Discard(int(n))
	}
}

// deliver hands a batch to the link actor once the registry has taken
// the previous one.
func (s *session) deliver(batch []actors.MeshPeerUpdate) error {
	select {
	case <-s.credit:
	case <-s.done:
		return errLinkClosed
	}
	s.sys.Send(s.link, &sessionUpdates{session: s.id, updates: batch})
	return nil
}

// explain adds what an operator needs to know to an ending that says
// little on its own.
func (s *session) explain(err error, heard int) error {
	select {
	case <-s.done:
		return errLinkClosed
	default:
	}
	if heard == 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
		// A server lists at least our own connection right after
		// WatchConns; one that closes first refused WatchConns, which is
		// what a server with a different mesh key does.
		return fmt.Errorf("%w: the peer closed the link before announcing anyone; does it have the same mesh key?", err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the peer sent nothing for %v, not even a Pong: %w", linkReadTimeout, err)
	}
	if errors.Is(err, wire.ErrFrameTooLarge) {
		return fmt.Errorf("peer broke the protocol: %w", err)
	}
	return err
}
