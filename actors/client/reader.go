package client

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"golang.org/x/time/rate"
)

// protocolError is a client breaking the protocol: the connection is
// closed and the reason logged, and recorded among the rejects.
type protocolError struct {
	msg    string
	reason actors.RejectReason
}

func (e *protocolError) Error() string { return e.msg }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...), reason: actors.RejectProtocolViolation}
}

// privilegeErrorf is a client without the mesh key using what only mesh
// peers may.
func privilegeErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...), reason: actors.RejectNonMeshPrivilege}
}

func isProtocolError(err error) bool {
	_, ok := protocolReason(err)
	return ok
}

// protocolReason says which breach of the protocol err is, if it is one.
func protocolReason(err error) (actors.RejectReason, bool) {
	var pe *protocolError
	switch {
	case errors.As(err, &pe):
		return pe.reason, true
	case errors.Is(err, wire.ErrFrameTooLarge):
		return actors.RejectOversizeFrame, true
	}
	return 0, false
}

// reader is a connection's read loop. It owns the socket's read half, the
// frame decoder and its local counters; Serve starts it on a goroutine of
// its own once the handshake is done.
type reader struct {
	sys    *actors.System
	conn   *actors.Conn
	outbox *Outbox
	rd     *wire.Reader
	routes *actors.RouteTable

	recv    actors.ReceiveCounts
	waiter  actors.Waiter      // for bounded waits on full destination queues
	flows   *actors.FlowTally  // nil when flows are not counted
	rejects actors.RejectTally // packets it could not route or deliver, until the next fold
	via     string             // for a mesh peer's link: the peer, for the flows it forwards in
	now     int64              // time of the last socket read, stamped on queued packets
	notHere *rate.Limiter      // created on first use: most clients never need it
	greeted bool               // ServerInfo is out: frames may be handled
	// lastClaim is when this duplicate connection last claimed the
	// receiving role for its key (see claimReceiver).
	lastClaim   time.Time
	claimWindow time.Time // start of the current dupFightWindow
	claims      int       // claims made in it
	// The receive rate limit (see rateLimit): the config it was built
	// from, to notice a new one, and the bucket; nil when off.
	rateCfg *actors.RecvRate
	limiter *rate.Limiter
	// packets journals every packet routed (-record); nil when off.
	packets actors.PacketRecorder
	// greetWait bounds the wait for the registry's Registered: the
	// handshake's deadline (Serve sets Config.HandshakeTimeout's).
	greetWait time.Duration
}

func newReader(sys *actors.System, c *actors.Conn, ob *Outbox, rd *wire.Reader, flows *actors.FlowTally) *reader {
	r := &reader{sys: sys, conn: c, outbox: ob, rd: rd, routes: sys.Routes, flows: flows, greetWait: HandshakeTimeout}
	r.waiter.Rejects = &r.rejects
	if c.CanMesh {
		r.via = c.Key.String()
	}
	if sys.Recorder != nil {
		r.packets = sys.Recorder.Packets(c.ID)
	}
	return r
}

// run reads frames until the connection fails or the client breaks the
// protocol, and returns why.
func (r *reader) run() error {
	defer r.fold()
	defer r.waiter.WakeDeferred()
	if r.packets != nil {
		defer r.packets.Close()
	}
	for {
		idle := r.rd.Buffered() == 0
		if idle {
			// About to read from the socket, and perhaps wait: publish
			// counts so they are never stale for an idle connection.
			r.fold()
		}
		t, n, err := r.rd.ReadHeader()
		if err != nil {
			return err
		}
		if !r.greeted {
			if err := r.awaitGreeting(); err != nil {
				return err
			}
		}
		if !r.conn.CanMesh {
			if err := r.rateLimit(n); err != nil {
				return err
			}
		}
		if idle {
			r.now = r.sys.Clock.Now().UnixNano()
		}
		if r.conn.NoteActivity.Load() {
			r.claimReceiver()
		}
		if t != wire.FrameSendPacket && t != wire.FrameForwardPacket {
			r.waiter.WakeDeferred()
		}
		if err := r.handle(t, n); err != nil {
			return err
		}
		if r.waiter.HasDeferred() && !r.rd.FrameBuffered() {
			// The next read may wait on the socket: nothing may stay
			// queued unwoken meanwhile.
			r.waiter.WakeDeferred()
		}
	}
}

// rateLimit applies the per-client receive rate limit, upstream's
// -rate-config: each frame costs its body length (clamped to one largest
// frame) from a token bucket, and a reader short of tokens waits before
// handling the frame and reading on, so TCP pushes back on the sender.
// Nothing is dropped. Mesh peers are never limited. Off, it costs one
// atomic load per frame.
func (r *reader) rateLimit(n uint32) error {
	if cfg := r.sys.RecvRate.Load(); cfg != r.rateCfg {
		// A new limit (or none) since the last frame: start a fresh
		// bucket, as upstream does when the config is reloaded.
		r.rateCfg, r.limiter = cfg, nil
		if cfg != nil {
			r.limiter = rate.NewLimiter(rate.Limit(cfg.BytesPerSec), int(cfg.Burst))
		}
	}
	if r.limiter == nil {
		return nil
	}
	now := r.sys.Clock.Now()
	delay := r.limiter.ReserveN(now, int(min(n, actors.MinRecvBurst))).DelayFrom(now)
	if delay <= 0 {
		return nil
	}
	r.sys.Stats.RateLimitWaits.Add(1)
	r.fold()
	r.waiter.WakeDeferred() // nothing this reader queued may wait on it
	done := make(chan struct{})
	t := r.sys.Clock.AfterFunc(delay, func() { close(done) })
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-r.outbox.Aborted():
		return net.ErrClosed
	}
}

// errNotGreeted ends a connection whose ServerInfo was never written.
var errNotGreeted = errors.New("connection ended before ServerInfo was written")

// awaitGreeting holds the first frame until ServerInfo has been written,
// which happens once the registry has confirmed the registration: as with
// upstream, nothing a client pipelines behind its ClientInfo is answered
// (or refused) ahead of ServerInfo. Usually it is out already.
func (r *reader) awaitGreeting() error {
	select {
	case <-r.outbox.Greeted():
		r.greeted = true
		return nil
	default:
	}
	expired := make(chan struct{})
	t := r.sys.Clock.AfterFunc(r.greetWait, func() { close(expired) })
	defer t.Stop()
	select {
	case <-r.outbox.Greeted():
		r.greeted = true
		return nil
	case <-r.outbox.Finished():
		return errNotGreeted
	case <-expired:
		// The registry has not answered in a handshake's time: it is
		// overloaded, and this connection is better closed than served.
		return fmt.Errorf("registration not confirmed within %v", r.greetWait)
	}
}

// fold publishes the reader's local counts.
func (r *reader) fold() {
	if n := r.recv.ForwardedIn; n > 0 {
		r.conn.ForwardedIn.Add(n)
	}
	if n := r.recv.Packets; n > 0 {
		r.conn.PacketsRecv.Add(n)
		r.conn.BytesRecv.Add(r.recv.Bytes)
	}
	r.sys.Stats.AddReceived(&r.recv)
	r.sys.Stats.AddWaits(&r.waiter)
	if ev := r.rejects.Take(); ev != nil && r.sys.Rejects != nil {
		r.sys.Send(r.sys.Rejects, &actors.RejectBatch{Events: ev})
	}
}

// A duplicate connection that claims the receiving role more than
// dupFreeClaims times within dupFightWindow is fighting another for its
// key (two devices with one key, or a client reconnecting in a loop): it
// then claims at most once per dupClaimInterval, and without waiting for
// the registry, so a fight costs each fighter a few registry messages a
// second and never stalls its reader. The first claims of a window are
// upstream's: at once, and waited for, so an ordinary switch (a client
// moving back to an older connection) takes effect before its next frame.
const (
	dupFightWindow   = 5 * time.Second
	dupFreeClaims    = 4
	dupClaimInterval = 250 * time.Millisecond
)

// claimReceiver makes this connection, one of several for its key, the
// one that receives: the last writer is active, as with upstream. Only
// duplicate connections get here, when another has the role. A claim
// waits for the registry to apply the switch, so that everything the
// client sees after this frame (the pong to a ping, say) already
// reflects it, as with upstream; claims in a fight do not (see
// dupFightWindow).
func (r *reader) claimReceiver() {
	now := r.sys.Clock.Now()
	if r.claimWindow.IsZero() || now.Sub(r.claimWindow) >= dupFightWindow {
		r.claimWindow, r.claims = now, 0
	}
	fighting := r.claims >= dupFreeClaims
	if fighting && now.Sub(r.lastClaim) < dupClaimInterval {
		return // the flag stays up: a frame after the interval claims
	}
	if !r.conn.NoteActivity.CompareAndSwap(true, false) {
		return
	}
	r.lastClaim = now
	r.claims++
	r.waiter.WakeDeferred() // the registry round trip below may wait
	if fighting {
		r.sys.Stats.DupFightClaims.Add(1)
		r.sys.Send(r.sys.Registry, &actors.Activity{Conn: r.conn})
		return
	}
	f := r.sys.Root.RequestFuture(r.sys.Registry, &actors.Activity{Conn: r.conn}, activityWait)
	f.Wait() // a timeout only means the registry is overloaded; go on
}

func (r *reader) handle(t wire.FrameType, n uint32) error {
	switch t {
	case wire.FrameSendPacket:
		return r.sendPacket(n)
	case wire.FrameForwardPacket:
		return r.forwardPacket(n)
	case wire.FrameNotePreferred:
		if n != 1 {
			return protoErrorf("NotePreferred of %d bytes, want 1", n)
		}
		b, err := r.rd.Next(1)
		if err != nil {
			return err
		}
		r.sys.Send(r.conn.PID, &notePreferred{preferred: b[0] != 0})
	case wire.FramePing:
		if n < wire.MinPingLen || n > wire.MaxPingLen {
			return protoErrorf("Ping of %d bytes, want %d to %d", n, wire.MinPingLen, wire.MaxPingLen)
		}
		b, err := r.rd.Next(wire.PingDataLen)
		if err != nil {
			return err
		}
		data := [wire.PingDataLen]byte(b)
		if err := r.rd.Discard(int(n) - wire.PingDataLen); err != nil {
			return err
		}
		r.sys.Stats.GotPing.Add(1)
		r.outbox.QueuePong(data)
	case wire.FrameWatchConns:
		if !r.conn.CanMesh {
			return privilegeErrorf("WatchConns from a client without the mesh key")
		}
		if n != 0 {
			return protoErrorf("WatchConns of %d bytes, want 0", n)
		}
		r.sys.Send(r.sys.Registry, &actors.WatchConns{Conn: r.conn})
	case wire.FrameClosePeer:
		if !r.conn.CanMesh {
			return privilegeErrorf("ClosePeer from a client without the mesh key")
		}
		if n != wire.KeyLen {
			return protoErrorf("ClosePeer of %d bytes, want %d", n, wire.KeyLen)
		}
		target, err := r.rd.ReadKey()
		if err != nil {
			return err
		}
		r.sys.Send(r.sys.Registry, &actors.ClosePeer{From: r.conn, Target: target})
	default:
		// Unknown types, and types only a server sends (KeepAlive, Pong,
		// a second ClientInfo), are skipped so that newer clients keep
		// working with this server.
		return r.rd.Discard(int(n))
	}
	return nil
}

// sendPacket reads a SendPacket and routes it: the hot path.
func (r *reader) sendPacket(n uint32) error {
	if n < wire.KeyLen || n > wire.MaxRecvFrameBody {
		return protoErrorf("SendPacket of %d bytes, want %d to %d", n, wire.KeyLen, wire.MaxRecvFrameBody)
	}
	dst, err := r.rd.ReadKey()
	if err != nil {
		return err
	}
	p := wire.NewPacket(int(n) - wire.KeyLen)
	if err := r.rd.ReadFull(p.Payload()); err != nil {
		p.Release()
		return err
	}
	p.SetSource(r.conn.Key)
	disco := p.IsDisco()
	r.recv.Packets++
	r.recv.Bytes += int64(p.Len())
	if disco {
		r.recv.Disco++
	}
	r.route(dst, p, disco, false)
	return nil
}

// forwardPacket reads a mesh peer's ForwardPacket: delivered only to local
// clients, never forwarded again, so a packet crosses at most one mesh hop
// and cannot loop.
func (r *reader) forwardPacket(n uint32) error {
	if !r.conn.CanMesh {
		return privilegeErrorf("ForwardPacket from a client without the mesh key")
	}
	if n < 2*wire.KeyLen || n > wire.MaxForwardFrameBody {
		return protoErrorf("ForwardPacket of %d bytes, want %d to %d", n, 2*wire.KeyLen, wire.MaxForwardFrameBody)
	}
	src, err := r.rd.ReadKey()
	if err != nil {
		return err
	}
	dst, err := r.rd.ReadKey()
	if err != nil {
		return err
	}
	p := wire.NewPacket(int(n) - 2*wire.KeyLen)
	if err := r.rd.ReadFull(p.Payload()); err != nil {
		p.Release()
		return err
	}
	p.SetSource(src)
	p.Forwarded = true
	r.recv.ForwardedIn++
	r.route(dst, p, p.IsDisco(), true)
	return nil
}

// route hands p to its destination or drops it. The only wait is the
// bounded one inside SendPacket, for a destination that is draining its
// queue; a destination that has stopped reading is never waited for.
func (r *reader) route(dst wire.NodePublic, p *wire.Packet, disco, forwarded bool) {
	if r.packets != nil {
		r.packets.RecordPacket(r.now, r.conn.ID, p.Source(), dst, p.Payload(), disco, forwarded)
	}
	if rt := r.routes.Lookup(dst); rt != nil {
		if rt.Local != nil {
			if r.flows != nil {
				via := ""
				if forwarded {
					via = r.via
				}
				r.flows.Count(p.Source(), dst, via, p.Len())
			}
			p.QueuedAt = r.now
			r.waiter.Direct = r.rd.Buffered() == 0
			r.waiter.Burst = r.rd.FrameBuffered()
			rt.Local.SendPacket(p, &r.waiter)
			return
		}
		if rt.Forward != nil && !forwarded {
			// The mesh link's own bounded queue: a link that cannot keep
			// up drops, it never holds this reader (upstream writes to
			// the link from here, so one slow peer stalls every sender).
			r.recv.ForwardedOut++
			if r.flows != nil {
				r.flows.Count(p.Source(), dst, rt.Forward.Name(), p.Len())
			}
			rt.Forward.ForwardPacket(dst, p, &r.waiter)
			return
		}
	}
	reason, detail := actors.DropUnknownDest, ""
	if forwarded {
		reason, detail = actors.DropUnknownDestOnFwd, "forwarded by a mesh peer"
	}
	r.sys.Stats.Drop(reason, actors.KindOf(disco), p.Len())
	r.rejects.Note(actors.RejectPacket, actors.RejectUnknownDest, p.Source(), dst, detail)
	p.Release()
	if disco {
		// Tell the sender (for a forwarded packet, the mesh peer) that the
		// key is not here, so it stops using this path; rate-limited.
		if r.notHere == nil {
			r.notHere = rate.NewLimiter(rate.Every(notHereRate), notHereBurst)
		}
		if r.notHere.AllowN(r.sys.Clock.Now(), 1) {
			r.outbox.QueuePeerGone(dst, wire.PeerGoneNotHere)
		}
	}
}
