// Package mesh joins this server to the other servers of its region. For
// each peer a link actor keeps one DERP client connection open with the
// server's own key and the mesh key, watches the peer's clients, tells the
// registry which keys the peer can reach, and carries ForwardPacket frames
// to it. The manager actor owns the set of links: the -mesh-with entries,
// and the addresses a -mesh-dns name resolves to.
//
// Blocking I/O (dialing, reading, writing) happens in each link's
// goroutines; the link actor owns the link's state and decides, in its
// mailbox, what a dial result, a broken connection or a timer means.
package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Reconnect backoff: the first retry comes quickly (a peer that restarted
// is back in a second or two), later ones double up to upstream's fixed
// 5 s, each drawn from the upper half of its step so that the links of a
// region do not retry in lockstep. A link that stayed up stableAfter
// starts over from the shortest step.
const (
	minBackoff  = 250 * time.Millisecond
	maxBackoff  = 5 * time.Second
	stableAfter = 10 * time.Second
)

// Config is what every link of a server shares.
type Config struct {
	PrivateKey wire.NodePrivate
	PublicKey  wire.NodePublic
	MeshKey    wire.MeshKey

	// TLS is the base client configuration (RootCAs; nil means the
	// system's roots, as upstream); each link sets the server name.
	TLS *tls.Config
	// Dial makes TCP connections; nil means a plain net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	QueueDepth int    // per link; 0 means DefaultQueueDepth
	Seed       uint64 // of the backoff jitter; 0 picks one at random

	// testDial, when set, replaces the dial goroutine: a test decides
	// when and how each attempt ends by calling finish.
	testDial func(ctx context.Context, t Target, gen uint64, finish func(*peerConn, error))
}

// Status is where a link is in its life.
type Status string

const (
	StatusConnecting Status = "connecting"
	StatusUp         Status = "up"
	StatusDown       Status = "down"    // waiting to reconnect
	StatusSelf       Status = "self"    // the entry is this server: nothing to do
	StatusStopped    Status = "stopped" // removed from the mesh
)

// Messages a link sends itself.
type (
	dialFinished struct{ gen uint64 }
	redial       struct{ gen uint64 }
	pingTick     struct{ session uint64 }
	// sessionUpdates carries a batch of a session's announcements.
	sessionUpdates struct {
		session uint64
		updates []actors.MeshPeerUpdate
	}
	sessionEnded struct {
		session uint64
		err     error
	}
)

type dialOutcome struct {
	gen uint64
	pc  *peerConn
	err error
}

// GetLinkState asks a link for a LinkState.
type GetLinkState struct{}

// LinkState is a link's answer to GetLinkState, for /debug/mesh.
type LinkState struct {
	Name        string
	URL         string
	DialAddr    string
	FromDNS     bool
	Status      Status
	Since       time.Time // of the current status
	LastError   string
	LastErrorAt time.Time
	RetryAt     time.Time // when down: the next attempt

	Sessions int // connections that completed the handshake
	Failures int // attempts that did not
	Session  uint64
	PeerKey  wire.NodePublic
	// FastStart: the peer's certificate carried its key, so the
	// handshake took one round trip less.
	FastStart bool
	RTT       time.Duration // of the last ping; 0 before the first Pong

	Keys         int   // keys the peer announces now
	KeysRefused  int64 // announcements beyond the key limit
	ForwardedOut int64 // packets written to the peer, all sessions
	QueueDepth   int
	Dropped      [numDropReasons]int64 // by DropReason, all sessions

	Mailbox actors.MailboxCounts // the link actor's own
}

// DroppedByReason returns Dropped keyed by reason name.
func (s *LinkState) DroppedByReason() map[string]int64 {
	m := make(map[string]int64, numDropReasons)
	for r := range numDropReasons {
		m[r.String()] = s.Dropped[r]
	}
	return m
}

// link is the actor for one peer.
type link struct {
	sys *actors.System
	cfg *Config
	t   Target
	log zerolog.Logger
	rng *rand.Rand

	self  *actor.PID
	mbox  *actors.MailboxStats // nil in tests that spawn the link themselves
	state LinkState

	dialGen    uint64
	dialing    bool
	dialCancel context.CancelFunc
	dialResult chan dialOutcome // capacity 1: one dial at a time

	backoff  time.Duration
	retry    actors.Timer
	warnedAt time.Time // of the last connect failure logged as a warning
	pinger   actors.Timer

	sess    *session
	retired *outbox // the last ended session's, still counting late drops
	// Counts of sessions before the retired one.
	forwardedBefore int64
	droppedBefore   [numDropReasons]int64
}

func newLink(sys *actors.System, cfg *Config, t Target) *link {
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &link{
		sys:        sys,
		cfg:        cfg,
		t:          t,
		log:        sys.Log.With().Str("actor", "mesh-link").Str("peer", t.Name).Logger(),
		rng:        rand.New(rand.NewPCG(seed, nameHash(t.Name))),
		dialResult: make(chan dialOutcome, 1),
		state: LinkState{
			Name: t.Name, URL: t.URL(), DialAddr: t.DialAddr(), FromDNS: t.FromDNS,
		},
	}
}

// nameHash makes each link's jitter a function of Config.Seed and its
// name alone, so a seeded test repeats exactly.
func nameHash(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

func (l *link) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		l.self = ctx.Self()
		l.connect()
	case *dialFinished:
		out := <-l.dialResult
		l.dialing, l.dialCancel = false, nil
		l.dialed(ctx, out)
	case *redial:
		if m.gen == l.dialGen && l.state.Status == StatusDown {
			l.retry = nil
			l.connect()
		}
	case *sessionUpdates:
		if l.current(m.session) {
			ctx.Request(l.sys.Registry, &actors.MeshUpdate{Link: m.session, Updates: m.updates})
		}
	case *actors.RegistryRestarted:
		if l.sess != nil {
			l.sessionDown(ctx, errRegistryLost)
		}
	case *actors.MeshUpdateApplied:
		if l.current(m.Link) && m.Unknown {
			// The registry has lost this session (it recovered from a
			// fault) and would ignore everything it announces.
			l.sessionDown(ctx, errRegistryLost)
			return
		}
		if l.current(m.Link) {
			l.state.Keys = m.Keys
			l.state.KeysRefused += int64(m.Refused)
			l.sess.returnCredit()
		}
	case *pingTick:
		if l.current(m.session) {
			l.sess.ping()
			l.armPing(m.session)
		}
	case *sessionEnded:
		if l.current(m.session) {
			l.sessionDown(ctx, m.err)
		}
	case *GetLinkState:
		ctx.Respond(l.snapshot())
	case *actor.Stopping:
		l.stop(ctx)
	}
}

// errRegistryLost ends a session the registry no longer knows.
var errRegistryLost = errors.New("the registry lost this session after a fault; reconnecting")

// Recover implements actors.Recoverer: whatever the link was doing, it
// ends its session (the peer's keys leave the forwarder table) and
// reconnects after its backoff, a path it knows; a dial under way is left
// to finish, as its outcome moves the link on.
func (l *link) Recover(ctx actor.Context, reason any) {
	if l.state.Status == StatusSelf || l.state.Status == StatusStopped {
		return
	}
	err := fmt.Errorf("the link's actor panicked: %v", reason)
	if l.sess != nil {
		l.sessionDown(ctx, err)
		return
	}
	if l.dialing {
		return
	}
	if l.retry != nil {
		l.retry.Stop()
	}
	l.dialGen++ // any redial pending is stale
	l.noteError(err)
	l.scheduleRetry()
}

func (l *link) current(session uint64) bool { return l.sess != nil && l.sess.id == session }

func (l *link) setStatus(s Status) {
	l.state.Status = s
	l.state.Since = l.sys.Clock.Now()
}

// connect starts a connection attempt on a goroutine of its own.
func (l *link) connect() {
	l.dialGen++
	gen := l.dialGen
	ctx, cancel := context.WithCancel(context.Background())
	l.dialing, l.dialCancel = true, cancel
	l.setStatus(StatusConnecting)
	self, sys, cfg, t, results := l.self, l.sys, l.cfg, l.t, l.dialResult
	finish := func(pc *peerConn, err error) {
		cancel()
		results <- dialOutcome{gen: gen, pc: pc, err: err}
		sys.Send(self, &dialFinished{gen: gen})
	}
	if cfg.testDial != nil {
		cfg.testDial(ctx, t, gen, finish)
		return
	}
	go func() { finish(dialPeer(ctx, cfg, t)) }()
}

func (l *link) dialed(ctx actor.Context, out dialOutcome) {
	switch {
	case errors.Is(out.err, errSelf):
		l.setStatus(StatusSelf)
		l.log.Info().Str("url", l.t.URL()).Msg("mesh entry is this server itself; not linking to it")
	case out.err != nil:
		l.state.Failures++
		// A peer that stays away fails every few seconds: say so when
		// the reason changes, and once a minute while it does not.
		ev := l.log.Debug()
		now := l.sys.Clock.Now()
		if msg := out.err.Error(); msg != l.state.LastError || now.Sub(l.warnedAt) >= time.Minute {
			ev, l.warnedAt = l.log.Warn(), now
		}
		l.noteError(out.err)
		ev.Err(out.err).Str("url", l.t.URL()).Str("dial", l.t.DialAddr()).Int("failures", l.state.Failures).
			Dur("retry_in", l.scheduleRetry()).Msg("mesh link could not connect")
	default:
		s := newSession(l.sys, l.self, l.t.Name, out.pc, l.cfg.QueueDepth, l.log)
		l.sess = s
		l.setStatus(StatusUp)
		l.state.Sessions++
		l.state.Session, l.state.PeerKey, l.state.FastStart = s.id, out.pc.serverKey, out.pc.fastStart
		l.state.Keys, l.state.RTT = 0, 0
		// The registry learns of the session before any of its updates:
		// both go from this mailbox, in order.
		ctx.Send(l.sys.Registry, &actors.MeshLinkUp{Link: s.id, Peer: l.t.Name, PeerKey: out.pc.serverKey, Forward: s.out, Owner: ctx.Self()})
		s.start()
		l.armPing(s.id)
		l.log.Info().Str("url", l.t.URL()).Str("dial", l.t.DialAddr()).Str("peer_key", out.pc.serverKey.String()).
			Bool("fast_start", out.pc.fastStart).Uint64("session", s.id).Int("sessions", l.state.Sessions).
			Msg("mesh link up")
	}
}

// sessionDown handles the end of the current session: its keys leave the
// forwarder table at once, and a reconnect is scheduled.
func (l *link) sessionDown(ctx actor.Context, err error) {
	s := l.retire()
	ctx.Send(l.sys.Registry, &actors.MeshLinkDown{Link: s.id})
	up := l.sys.Clock.Now().Sub(l.state.Since)
	if up >= stableAfter {
		l.backoff = 0
	}
	keys := l.state.Keys
	l.state.Keys = 0
	l.noteError(err)
	l.log.Warn().Err(err).Uint64("session", s.id).Dur("was_up", up).Int("keys", keys).
		Dur("retry_in", l.scheduleRetry()).Msg("mesh link down")
}

// retire closes the current session and keeps its outbox for the counts.
func (l *link) retire() *session {
	s := l.sess
	l.sess = nil
	s.close()
	if l.pinger != nil {
		l.pinger.Stop()
		l.pinger = nil
	}
	if r := l.retired; r != nil {
		l.forwardedBefore += r.forwarded.Load()
		for i := range l.droppedBefore {
			l.droppedBefore[i] += r.dropped[i].Load()
		}
	}
	l.retired = s.out
	return s
}

func (l *link) noteError(err error) {
	l.state.LastError = err.Error()
	l.state.LastErrorAt = l.sys.Clock.Now()
}

// scheduleRetry arms the reconnect timer and returns its delay.
func (l *link) scheduleRetry() time.Duration {
	l.setStatus(StatusDown)
	if l.backoff == 0 {
		l.backoff = minBackoff
	} else {
		l.backoff = min(2*l.backoff, maxBackoff)
	}
	d := l.backoff/2 + time.Duration(l.rng.Int64N(int64(l.backoff/2)+1))
	gen, self, sys := l.dialGen, l.self, l.sys
	l.retry = l.sys.Clock.AfterFunc(d, func() { sys.Send(self, &redial{gen: gen}) })
	l.state.RetryAt = l.sys.Clock.Now().Add(d)
	return d
}

func (l *link) armPing(session uint64) {
	self, sys := l.self, l.sys
	l.pinger = l.sys.Clock.AfterFunc(pingInterval, func() { sys.Send(self, &pingTick{session: session}) })
}

// stop ends the link for good: no dial left running, no session, no
// timer, no keys in the forwarder table.
func (l *link) stop(ctx actor.Context) {
	if l.dialing {
		l.dialCancel()
		if out := <-l.dialResult; out.pc != nil {
			out.pc.rd.Release()
			out.pc.conn.Close()
		}
		l.dialing = false
	}
	if l.sess != nil {
		s := l.retire()
		ctx.Send(l.sys.Registry, &actors.MeshLinkDown{Link: s.id})
	}
	if l.retry != nil {
		l.retry.Stop()
		l.retry = nil
	}
	l.setStatus(StatusStopped)
	l.log.Info().Msg("mesh link removed")
}

func (l *link) snapshot() *LinkState {
	st := l.state
	st.Mailbox = l.mbox.CountsInHandler()
	st.ForwardedOut = l.forwardedBefore
	st.Dropped = l.droppedBefore
	for _, o := range []*outbox{l.retired, l.sessOutbox()} {
		if o == nil {
			continue
		}
		st.ForwardedOut += o.forwarded.Load()
		for i := range st.Dropped {
			st.Dropped[i] += o.dropped[i].Load()
		}
	}
	if l.sess != nil {
		st.QueueDepth = l.sess.out.depth()
		st.RTT = time.Duration(l.sess.rtt.Load())
	}
	if st.Status != StatusDown {
		st.RetryAt = time.Time{}
	}
	return &st
}

func (l *link) sessOutbox() *outbox {
	if l.sess == nil {
		return nil
	}
	return l.sess.out
}
