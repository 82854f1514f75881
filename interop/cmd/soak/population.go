package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/types/key"
)

// load is what the population does; main's flags fill it in.
type load struct {
	clients     int     // lives running at once
	rate        float64 // packets per second, all senders together
	connectRate float64 // new connections per second at most
	senders     int     // goroutines sharing the rate

	minLifetime, maxLifetime time.Duration // a life's length, uniform
	stallFraction            float64       // lives that stop reading once
	minStall, maxStall       time.Duration // for how long, uniform
	dupFraction              float64       // lives that move: a second connection with the same key
	maxDupOverlap            time.Duration // both connections open for up to this long

	departedShare float64 // packets addressed to keys that have left
	stalledShare  float64 // packets addressed to clients not reading, while there are any
	discoShare    float64 // packets shaped like disco messages
	maxSize       int     // largest data payload
}

// Misbehaving clients get a small socket receive buffer, so that a stall
// fills the path to them in a second or two of their share of the load
// and the relay has to deal with a receiver that does not read, as it
// would with a phone that went to sleep mid-transfer.
const stalledReadBuffer = 8 << 10

// writeTimeout bounds each write to the relay: a relay that stops
// reading a client for this long has failed it, and the sender that was
// stuck on it goes back to sending for others.
const writeTimeout = 10 * time.Second

// connectTimeout bounds TCP, the HTTP upgrade and the DERP handshake,
// and then the wait for ServerInfo.
const connectTimeout = 15 * time.Second

// maxConnsPerLife: the first connection and, for a life that moves, the
// second.
const maxConnsPerLife = 2

// leaveLinger is how long a leaving client still reads after the
// senders have stopped picking it.
const leaveLinger = time.Second

// maxErrorLogs is how many errors are logged as they happen; the rest
// are only counted.
const maxErrorLogs = 20

// moveFrom is the source address of a client's second connection: the
// same key arriving from elsewhere, as a device does when it changes
// networks (Linux answers on all of 127.0.0.0/8).
var moveFrom = net.ParseIP("127.0.0.2")

// counts are the population's own figures, all cumulative except the
// three gauges at the end.
type counts struct {
	Connects       int64 `json:"connects"`        // handshakes completed, second connections included
	DupConnects    int64 `json:"dup_connects"`    // second connections with a key already connected
	ConnectErrors  int64 `json:"connect_errors"`  // dials or handshakes that failed: errors
	LeftByLifetime int64 `json:"left_lifetime"`   // lives ended by us at the end of their time
	CutOffStalled  int64 `json:"cut_off_stalled"` // connections the relay closed after they stopped reading
	DupClosed      int64 `json:"dup_closed"`      // older duplicate connections the relay closed
	Unexpected     int64 `json:"unexpected_closes"`
	Stalls         int64 `json:"stalls"`

	Sent          int64 `json:"sent"`
	SentDeparted  int64 `json:"sent_departed"` // to a key that has left
	SentStalled   int64 `json:"sent_stalled"`  // to a client not reading
	SentDisco     int64 `json:"sent_disco"`
	SendFailed    int64 `json:"send_failed"` // on a connection already closing or cut off; never counted sent
	Delivered     int64 `json:"delivered"`
	DeliveredStal int64 `json:"delivered_stalled"`  // of them sent to a client not reading
	DeliveredDept int64 `json:"delivered_departed"` // of them sent to a key that had left, while it still read (leaveLinger)
	DeliveredDisc int64 `json:"delivered_disco"`
	Misdelivered  int64 `json:"misdelivered"`
	PeerGoneGone  int64 `json:"peer_gone_disconnected"`
	PeerGoneNot   int64 `json:"peer_gone_not_here"`
	Health        int64 `json:"health_problems"`
	HealthySent   int64 `json:"healthy_sent"` // see SentHealthy
	HealthyGot    int64 `json:"healthy_got"`
	LossyLives    int64 `json:"lossy_lives"`  // healthy lives that got fewer packets than were sent to them
	LostHealthy   int64 `json:"lost_healthy"` // what they missed

	Live    int64 `json:"live"`    // lives with a connection now
	Stalled int64 `json:"stalled"` // of them not reading now
	Moving  int64 `json:"moving"`  // of them with two connections now
}

// SentHealthy is what was sent to healthy clients: live when sent, in a
// life that never stops reading (counted when the life ends).
func (c counts) SentHealthy() int64 { return c.HealthySent }

// DeliveredHealthy is what of SentHealthy arrived.
func (c counts) DeliveredHealthy() int64 { return c.HealthyGot }

// Errors is everything that should never happen to a healthy client:
// a failed connection, one the relay closed for no reason the soak
// gave it, a packet delivered to the wrong client or mislabelled.
func (c counts) Errors() int64 { return c.ConnectErrors + c.Unexpected + c.Misdelivered }

type counters struct {
	connects, dupConnects, connectErrors               atomic.Int64
	leftByLifetime, cutOffStalled, dupClosed, unexpect atomic.Int64
	stalls                                             atomic.Int64
	sent, sentDeparted, sentStalled, sentDisco         atomic.Int64
	sendFailed                                         atomic.Int64
	delivered, deliveredStalled, deliveredDisco        atomic.Int64
	deliveredDeparted                                  atomic.Int64
	misdelivered                                       atomic.Int64
	peerGoneGone, peerGoneNot, health                  atomic.Int64
	live, stalled, moving                              atomic.Int64
	errorLogs, cutOffLogs, lossLogs                    atomic.Int64
	lossyLives, lostHealthy                            atomic.Int64
	healthySent, healthyGot                            atomic.Int64
}

func (c *counters) snapshot() counts {
	return counts{
		Connects: c.connects.Load(), DupConnects: c.dupConnects.Load(), ConnectErrors: c.connectErrors.Load(),
		LeftByLifetime: c.leftByLifetime.Load(), CutOffStalled: c.cutOffStalled.Load(), DupClosed: c.dupClosed.Load(),
		Unexpected: c.unexpect.Load(), Stalls: c.stalls.Load(),
		Sent: c.sent.Load(), SentDeparted: c.sentDeparted.Load(), SentStalled: c.sentStalled.Load(), SentDisco: c.sentDisco.Load(),
		SendFailed: c.sendFailed.Load(), Delivered: c.delivered.Load(), DeliveredStal: c.deliveredStalled.Load(),
		DeliveredDept: c.deliveredDeparted.Load(),
		DeliveredDisc: c.deliveredDisco.Load(),
		Misdelivered:  c.misdelivered.Load(), PeerGoneGone: c.peerGoneGone.Load(), PeerGoneNot: c.peerGoneNot.Load(),
		Health: c.health.Load(), LossyLives: c.lossyLives.Load(), LostHealthy: c.lostHealthy.Load(),
		HealthySent: c.healthySent.Load(), HealthyGot: c.healthyGot.Load(), Live: c.live.Load(), Stalled: c.stalled.Load(), Moving: c.moving.Load(),
	}
}

// population keeps cfg.clients lives going against one relay until its
// context ends: each life is a fresh key that connects, sends and
// receives, perhaps misbehaves, and leaves.
type population struct {
	url     string
	cfg     load
	n       counters
	latency latencies // of packets to healthy clients
	set     peers
	logf    func(format string, args ...any)
}

func newPopulation(url string, cfg load, logf func(string, ...any)) *population {
	return &population{url: url, cfg: cfg, logf: logf}
}

// fail logs an error, the first maxErrorLogs of them; the caller counts it.
func (p *population) fail(format string, args ...any) {
	if n := p.n.errorLogs.Add(1); n <= maxErrorLogs {
		p.logf("error: "+format, args...)
		if n == maxErrorLogs {
			p.logf("further errors are counted, not logged")
		}
	}
}

// run keeps the population going until ctx ends, then closes every
// connection and returns once all are closed.
func (p *population) run(ctx context.Context) {
	var wg sync.WaitGroup
	connects := newPacer(p.cfg.connectRate)
	for range p.cfg.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if connects.wait(ctx) != nil {
					return
				}
				p.live(ctx)
				// A device that left does not come back at once.
				sleepCtx(ctx, rand.N(time.Second))
			}
		}()
	}
	var swg sync.WaitGroup
	senders := max(1, p.cfg.senders)
	for range senders {
		swg.Add(1)
		go func() {
			defer swg.Done()
			p.send(ctx, p.cfg.rate/float64(senders))
		}()
	}
	swg.Wait()
	wg.Wait()
}

// plan is what one life will do.
type plan struct {
	lifetime   time.Duration
	stallAt    time.Duration // stops reading this far into its life…
	stallFor   time.Duration // …for this long; 0: never
	moveAt     time.Duration // opens a second connection this far in…
	moveAfter  time.Duration // …and closes the first this much later
	move       bool
	readBuffer int
}

func (pl plan) String() string {
	s := fmt.Sprintf("lifetime %v", pl.lifetime.Round(time.Millisecond))
	if pl.stallFor > 0 {
		s += fmt.Sprintf(", stopped reading at %v for %v", pl.stallAt.Round(time.Millisecond), pl.stallFor.Round(time.Millisecond))
	}
	if pl.move {
		s += fmt.Sprintf(", moved at %v, first connection closed %v later", pl.moveAt.Round(time.Millisecond), pl.moveAfter.Round(time.Millisecond))
	}
	return s
}

func (p *population) plan() plan {
	c := p.cfg
	pl := plan{lifetime: uniform(c.minLifetime, c.maxLifetime)}
	// One misbehaviour a life at most, so each is counted plainly.
	switch r := rand.Float64(); {
	case r < c.stallFraction:
		pl.stallAt = rand.N(pl.lifetime/2 + 1)
		pl.stallFor = uniform(c.minStall, c.maxStall)
		pl.readBuffer = stalledReadBuffer
	case r < c.stallFraction+c.dupFraction:
		pl.move = true
		pl.moveAt = rand.N(pl.lifetime/2 + 1)
		pl.moveAfter = rand.N(c.maxDupOverlap + 1)
	}
	return pl
}

func uniform(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + rand.N(hi-lo)
}

// client is one life: a key, and the connection it sends on now.
type client struct {
	priv  key.NodePrivate
	pub   key.NodePublic
	raw   [keyLen]byte
	cur   atomic.Pointer[conn]
	ended chan *conn // a connection of this client the relay closed; maxConnsPerLife deep
	index int        // in peers.live, guarded by peers.mu
	stall int        // in peers.stalled, or -1; guarded by peers.mu

	// Packets sent to it while it was live and reading, and how many of
	// those arrived: a healthy life (one that never stops reading) that
	// ends with fewer arrived than sent shows a relay losing healthy
	// traffic.
	healthySent, healthyGot atomic.Int64
	willStall               bool // its plan has it stop reading once
}

// conn is one connection of a client, and how it ends.
type conn struct {
	owner *client
	dc    *derphttp.Client
	// gate, while set, holds the reader before its next Recv: the client
	// has stopped reading.
	gate       atomic.Pointer[chan struct{}]
	closing    atomic.Bool   // we are closing it
	stalled    atomic.Bool   // it has stopped reading at least once
	superseded atomic.Bool   // a newer connection with the same key took over
	ready      chan struct{} // closed at the first message (ServerInfo)
	done       chan struct{} // closed when the reader has ended
}

// errNoRedial refuses derphttp's automatic reconnect: a connection the
// relay closed stays closed, and the life that owned it ends, so every
// connection the soak counts is one it made on purpose.
var errNoRedial = errors.New("soak: no automatic reconnect")

// dial connects c's key with Tailscale's DERP client, from local (nil:
// any) and with a receive buffer of readBuffer bytes (0: the default).
func (p *population) dial(ctx context.Context, c *client, local net.IP, readBuffer int) (*conn, error) {
	dc, err := derphttp.NewClient(c.priv, p.url, func(string, ...any) {}, netmon.NewStatic())
	if err != nil {
		return nil, err
	}
	dc.SetCanAckPings(true)
	var dialed atomic.Bool
	dc.SetURLDialer(func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dialed.Swap(true) {
			return nil, errNoRedial
		}
		d := net.Dialer{}
		if local != nil {
			d.LocalAddr = &net.TCPAddr{IP: local}
		}
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tc, ok := nc.(*net.TCPConn); ok && readBuffer > 0 {
			tc.SetReadBuffer(readBuffer)
		}
		return writeDeadlineConn{nc}, nil
	})
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	if err := dc.Connect(cctx); err != nil {
		dc.Close()
		return nil, err
	}
	return &conn{owner: c, dc: dc, ready: make(chan struct{}), done: make(chan struct{})}, nil
}

// writeDeadlineConn gives every write to the relay writeTimeout.
type writeDeadlineConn struct{ net.Conn }

func (c writeDeadlineConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return c.Conn.Write(b)
}

// live runs one life to its end.
func (p *population) live(ctx context.Context) {
	pl := p.plan()
	c := &client{priv: key.NewNode(), ended: make(chan *conn, maxConnsPerLife), stall: -1, willStall: pl.stallFor > 0}
	c.pub = c.priv.Public()
	c.pub.AppendTo(c.raw[:0])
	first, err := p.dial(ctx, c, nil, pl.readBuffer)
	if err != nil {
		if ctx.Err() == nil {
			p.n.connectErrors.Add(1)
			p.fail("connect: %v", err)
		}
		return
	}
	p.n.connects.Add(1)
	p.n.live.Add(1)
	defer p.n.live.Add(-1)
	c.cur.Store(first)
	conns := []*conn{first}
	go p.read(first)
	if !p.awaitReady(ctx, first) {
		p.closeConn(first)
		return
	}
	p.set.add(c)

	end := time.NewTimer(pl.lifetime)
	defer end.Stop()
	var stallStart, stallEnd, move, dropOld <-chan time.Time
	if pl.stallFor > 0 {
		stallStart = time.After(pl.stallAt)
	}
	if pl.move {
		move = time.After(pl.moveAt)
	}
	var gate chan struct{}
	var old *conn
	resume := func() {
		if gate != nil {
			first.gate.Store(nil)
			close(gate)
			gate = nil
			p.set.unstall(c)
			p.n.stalled.Add(-1)
		}
	}
	drop := func(k *conn) {
		for i, x := range conns {
			if x == k {
				conns = append(conns[:i], conns[i+1:]...)
				break
			}
		}
	}
life:
	for {
		select {
		case <-ctx.Done():
			break life
		case <-end.C:
			p.n.leftByLifetime.Add(1)
			break life
		case <-stallStart:
			gate = make(chan struct{})
			g := gate // the reader's copy: resume clears gate, not g
			first.stalled.Store(true)
			first.gate.Store(&g)
			p.set.stall(c)
			p.n.stalls.Add(1)
			p.n.stalled.Add(1)
			stallEnd = time.After(pl.stallFor)
		case <-stallEnd:
			resume()
		case <-move:
			second, err := p.dial(ctx, c, moveFrom, 0)
			if err != nil {
				if ctx.Err() == nil {
					p.n.connectErrors.Add(1)
					p.fail("second connection with the same key: %v", err)
				}
				continue
			}
			p.n.connects.Add(1)
			p.n.dupConnects.Add(1)
			go p.read(second)
			if !p.awaitReady(ctx, second) {
				p.closeConn(second)
				continue
			}
			p.n.moving.Add(1)
			old = c.cur.Swap(second)
			old.superseded.Store(true)
			conns = append(conns, second)
			dropOld = time.After(pl.moveAfter)
		case <-dropOld:
			p.closeConn(old)
			drop(old)
			p.n.moving.Add(-1)
			old = nil
		case k := <-c.ended:
			if k == c.cur.Load() {
				break life // its connection is gone: so is the life
			}
			drop(k)
			if k == old {
				old = nil
				dropOld = nil
				p.n.moving.Add(-1)
			}
		}
	}
	p.set.remove(c)
	resume()
	if old != nil {
		p.n.moving.Add(-1)
	}
	// Keep reading a moment after leaving the set: what was sent before
	// the senders knew arrives, so that a packet to a live client that
	// is lost is the relay's loss, not the soak's.
	time.Sleep(leaveLinger)
	for _, k := range conns {
		p.closeConn(k)
	}
	if pl.stallFor > 0 {
		return // not a healthy life: its figures are the stalled ones
	}
	sent, got := c.healthySent.Load(), c.healthyGot.Load()
	p.n.healthySent.Add(sent)
	p.n.healthyGot.Add(got)
	if got < sent {
		p.n.lossyLives.Add(1)
		p.n.lostHealthy.Add(sent - got)
		if p.n.lossLogs.Add(1) <= 5 {
			p.logf("a healthy client lost packets: %v got %d of the %d sent to it; its life: %s", c.pub.ShortString(), got, sent, pl)
		}
	}
}

// awaitReady waits for k's first message, ServerInfo, before the client
// may be sent to: a device's peers learn its key from the control plane
// after it has connected, not while it is still handshaking, and a
// packet sent to a key the relay has yet to register is lost by design.
// It reports false if k ended first or never answered.
func (p *population) awaitReady(ctx context.Context, k *conn) bool {
	t := time.NewTimer(connectTimeout)
	defer t.Stop()
	select {
	case <-k.ready:
		return true
	case <-k.done:
	case <-t.C:
		p.n.connectErrors.Add(1)
		p.fail("no ServerInfo from the relay within %v", connectTimeout)
	case <-ctx.Done():
	}
	return false
}

func (p *population) closeConn(k *conn) {
	k.closing.Store(true)
	k.dc.Close()
	<-k.done
}

// read receives on k until it ends, checking every packet, and tells
// the owner if the relay closed it.
func (p *population) read(k *conn) {
	defer close(k.done)
	readySent := false
	for {
		if g := k.gate.Load(); g != nil {
			<-*g
		}
		m, err := k.dc.Recv()
		if err != nil {
			p.ended(k, err)
			return
		}
		if !readySent {
			readySent = true
			close(k.ready)
		}
		switch m := m.(type) {
		case derp.ReceivedPacket:
			kind, sent, discoShaped, err := checkPacket(m.Data, &k.owner.raw, m.Source)
			if err != nil {
				p.n.misdelivered.Add(1)
				p.fail("packet of %d bytes from %v to %v: %v", len(m.Data), m.Source.ShortString(), k.owner.pub.ShortString(), err)
				continue
			}
			p.n.delivered.Add(1)
			switch kind {
			case toLive:
				k.owner.healthyGot.Add(1)
				if !k.owner.willStall {
					// A packet to a client that stops reading later
					// may wait out the stall: the client's delay, not
					// the relay's.
					p.latency.note(time.Since(sent))
				}
			case toStalled:
				p.n.deliveredStalled.Add(1)
			case toDeparted:
				p.n.deliveredDeparted.Add(1)
			}
			if discoShaped {
				p.n.deliveredDisco.Add(1)
			}
		case derp.PeerGoneMessage:
			switch m.Reason {
			case derp.PeerGoneReasonNotHere:
				p.n.peerGoneNot.Add(1)
			default:
				p.n.peerGoneGone.Add(1)
			}
		case derp.PingMessage:
			k.dc.SendPong(m)
		case derp.HealthMessage:
			if m.Problem != "" {
				p.n.health.Add(1)
				p.fail("health problem from the relay: %s", m.Problem)
			}
		}
	}
}

// ended classifies a connection's end. A connection we closed, or one
// the relay cut off after it stopped reading, or the older of two with
// one key, is expected; any other is an error.
func (p *population) ended(k *conn, err error) {
	if k.closing.Load() {
		return
	}
	switch {
	case k.stalled.Load():
		p.n.cutOffStalled.Add(1)
		if p.n.cutOffLogs.Add(1) <= 5 {
			p.logf("as expected: the relay closed a connection of %v that had stopped reading: %v", k.owner.pub.ShortString(), err)
		}
	case k.superseded.Load():
		p.n.dupClosed.Add(1)
	default:
		p.n.unexpect.Add(1)
		p.fail("connection of %v closed by the relay: %v", k.owner.pub.ShortString(), err)
	}
	select {
	case k.owner.ended <- k:
	default: // cannot happen: a life has at most maxConnsPerLife
	}
}

// send writes packets at rate (per second) from random live clients to
// random destinations until ctx ends.
func (p *population) send(ctx context.Context, rate float64) {
	if rate <= 0 {
		return
	}
	buf := make([]byte, max(p.cfg.maxSize+1, discoSize))
	// Every 10 ms, what is due: cheap timers, and bursts small enough to
	// look like traffic rather than a flood. A sender held up (by a
	// relay pushing back) catches up by at most maxBacklog.
	const tick, maxBacklog = 10 * time.Millisecond, 100 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	start := time.Now()
	done := 0.0
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due := rate * now.Sub(start).Seconds()
			done = max(done, due-rate*maxBacklog.Seconds())
			for ; done+1 <= due && ctx.Err() == nil; done++ {
				p.sendOne(buf)
			}
		}
	}
}

func (p *population) sendOne(buf []byte) {
	src, dst, dc, to := p.set.pick(p.cfg.departedShare, p.cfg.stalledShare)
	if src == nil {
		return
	}
	k := src.cur.Load()
	discoShaped := rand.Float64() < p.cfg.discoShare
	pkt := buildPacket(buf, src.pub, dst, to, discoShaped, p.cfg.maxSize, time.Now())
	if err := k.dc.Send(dst, pkt); err != nil {
		// The connection is closing or was cut off; its reader sees the
		// same end and says whether it was expected.
		p.n.sendFailed.Add(1)
		return
	}
	p.n.sent.Add(1)
	switch to {
	case toLive:
		dc.healthySent.Add(1)
	case toDeparted:
		p.n.sentDeparted.Add(1)
	case toStalled:
		p.n.sentStalled.Add(1)
	}
	if discoShaped {
		p.n.sentDisco.Add(1)
	}
}

// peers is who can be sent from and to: the live clients, those of them
// not reading, and the keys of clients that have left.
type peers struct {
	mu                      sync.Mutex
	live                    []*client
	stalled                 []*client
	departed                [4096]key.NodePublic
	nDeparted, nextDeparted int
}

type destKind int

const (
	toLive destKind = iota
	toDeparted
	toStalled
)

func (s *peers) add(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.index = len(s.live)
	s.live = append(s.live, c)
}

// remove takes c out of the live set and remembers its key as departed.
func (s *peers) remove(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.live[len(s.live)-1]
	s.live[c.index] = last
	last.index = c.index
	s.live = s.live[:len(s.live)-1]
	s.removeStalled(c)
	s.departed[s.nextDeparted] = c.pub
	s.nextDeparted = (s.nextDeparted + 1) % len(s.departed)
	s.nDeparted = min(s.nDeparted+1, len(s.departed))
}

func (s *peers) stall(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.stall = len(s.stalled)
	s.stalled = append(s.stalled, c)
}

func (s *peers) unstall(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeStalled(c)
}

func (s *peers) removeStalled(c *client) {
	if c.stall < 0 {
		return
	}
	last := s.stalled[len(s.stalled)-1]
	s.stalled[c.stall] = last
	last.stall = c.stall
	s.stalled = s.stalled[:len(s.stalled)-1]
	c.stall = -1
}

// pick draws a source among the live clients and a destination: a key
// that has left (departedShare of the time), a client not reading
// (stalledShare, while there is one), otherwise another live client,
// counted as stalled if its connection has ever stopped reading.
func (s *peers) pick(departedShare, stalledShare float64) (src *client, dst key.NodePublic, to *client, kind destKind) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.live) < 2 {
		return nil, key.NodePublic{}, nil, toLive
	}
	src = s.live[rand.IntN(len(s.live))]
	switch r := rand.Float64(); {
	case r < departedShare && s.nDeparted > 0:
		return src, s.departed[rand.IntN(s.nDeparted)], nil, toDeparted
	case r < departedShare+stalledShare && len(s.stalled) > 0:
		if d := s.stalled[rand.IntN(len(s.stalled))]; d != src {
			return src, d.pub, d, toStalled
		}
	}
	for {
		d := s.live[rand.IntN(len(s.live))]
		if d == src {
			continue
		}
		// A client whose connection has stopped reading, now or before,
		// may have been cut off without knowing it yet: what is sent to
		// it is counted with the stalled, not the healthy.
		if k := d.cur.Load(); k != nil && k.stalled.Load() {
			return src, d.pub, d, toStalled
		}
		return src, d.pub, d, toLive
	}
}

// pacer spaces events at most rate a second, first come first served.
type pacer struct {
	mu       sync.Mutex
	interval time.Duration
	next     time.Time
}

func newPacer(rate float64) *pacer {
	if rate <= 0 {
		return &pacer{}
	}
	return &pacer{interval: time.Duration(float64(time.Second) / rate)}
}

func (p *pacer) wait(ctx context.Context) error {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	at := p.next
	p.next = p.next.Add(p.interval)
	p.mu.Unlock()
	if !sleepCtx(ctx, time.Until(at)) {
		return ctx.Err()
	}
	return nil
}

// sleepCtx sleeps for d or until ctx ends, and reports whether it slept
// the whole time.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// latencies counts delivery times of packets (send to receive, through
// the relay) in power-of-two buckets of microseconds: cheap enough for
// every packet, precise enough to see a packet held for seconds.
type latencies struct {
	buckets [32]atomic.Int64 // bucket i: [2^(i-1), 2^i) µs; 0: under 1 µs
	maxNs   atomic.Int64
}

func (l *latencies) note(d time.Duration) {
	us := d.Microseconds()
	i := 0
	for us > 0 && i < len(l.buckets)-1 {
		us >>= 1
		i++
	}
	l.buckets[i].Add(1)
	for {
		m := l.maxNs.Load()
		if int64(d) <= m || l.maxNs.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// latencySummary is what the report shows of latencies: quantiles are
// the upper bounds of their buckets, so at most twice the truth.
type latencySummary struct {
	Count      int64   `json:"count"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	P999Ms     float64 `json:"p999_ms"`
	MaxMs      float64 `json:"max_ms"`
	OverSecond int64   `json:"over_1s"` // packets that took a second or more
}

func (l *latencies) summary() latencySummary {
	var counts [32]int64
	var s latencySummary
	for i := range l.buckets {
		counts[i] = l.buckets[i].Load()
		s.Count += counts[i]
		if i > 0 && int64(1)<<(i-1) >= 1_000_000 {
			s.OverSecond += counts[i]
		}
	}
	s.MaxMs = float64(l.maxNs.Load()) / 1e6
	quantile := func(q float64) float64 {
		want := int64(q * float64(s.Count))
		seen := int64(0)
		for i, c := range counts {
			seen += c
			if seen > want {
				return float64(int64(1)<<i) / 1000 // the bucket's top, µs to ms
			}
		}
		return s.MaxMs
	}
	if s.Count > 0 {
		s.P50Ms, s.P99Ms, s.P999Ms = quantile(0.5), quantile(0.99), quantile(0.999)
	}
	return s
}
