// Package verify is the verify actor behind -verify-clients: it asks the
// local tailscaled, over its LocalAPI, whether a connecting node key
// belongs to the tailnet, and keeps the answers for a while, so that a
// reconnect storm of thousands of clients costs tailscaled a handful of
// calls rather than one each.
//
// The actor owns the cache, the lookups waiting for an answer and the
// choice between the two ways of asking (whois by node key; a status
// listing every peer, for a tailscaled too old for the first). The calls
// themselves run on goroutines of their own and report back as messages,
// so a slow tailscaled never blocks the mailbox.
//
// Handshakes ask through a Verifier: a request to the actor, answered
// with a Verdict, bounded by the handshake's deadline.
package verify

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Tuning, each with why.
const (
	// DefaultPositiveTTL: a key tailscaled knows stays admitted this
	// long without asking again. Long enough that a storm of reconnects
	// (a relay restart, a flapping uplink) finds every key cached; short
	// enough that a node removed from the tailnet is refused within a
	// minute on its next connection (its open ones stay, as upstream).
	DefaultPositiveTTL = time.Minute

	// DefaultNegativeTTL: a key tailscaled does not know is refused this
	// long without asking again. Short, because the usual unknown key is
	// a node just added, whose netmap reaches tailscaled seconds after
	// the node itself starts connecting.
	DefaultNegativeTTL = 5 * time.Second

	// DefaultStatusTTL: with a tailscaled too old for whois by node key,
	// one status answer (every peer's key) answers every lookup this
	// long. As short as the negative TTL, for the same reason, and long
	// enough that a storm costs one status a few seconds, however big
	// the tailnet.
	DefaultStatusTTL = 5 * time.Second

	// DefaultErrorBackoff: after a call fails (no socket, a timeout, a
	// 5xx), lookups the cache cannot answer get that error at once for
	// this long instead of asking: a tailscaled that is down would
	// otherwise be asked once per connecting client, and a wedged one
	// would hold every handshake for its timeout before the operator's
	// -verify-clients-fail-open choice applied.
	DefaultErrorBackoff = 2 * time.Second

	// DefaultWhoIsRecheck: how long to keep using status after tailscaled
	// said it predates whois by node key, before trying whois again (it
	// may have been upgraded under us).
	DefaultWhoIsRecheck = 10 * time.Minute

	// DefaultMaxEntries bounds the cache: 32,768 keys are some 6 MB, and
	// three storms of 10,000 clients. Beyond it the oldest answer goes.
	DefaultMaxEntries = 32768

	// DefaultMaxCalls bounds the LocalAPI calls running at once. tailscaled
	// answers from memory; more in parallel would only contend for its
	// locks (and the relay's two cores).
	DefaultMaxCalls = 4

	// DefaultMaxQueued bounds the lookups waiting for a free call; more
	// are answered at once with an error. Each stands for a handshake
	// in progress, so this is reached only by a storm far beyond the
	// accept rate of the machine.
	DefaultMaxQueued = 16384

	// errorLogEvery: while tailscaled keeps failing, one log line this
	// often, with the count of failures since the last.
	errorLogEvery = 10 * time.Second

	// lookupWait is how long a lookup waits for the actor when its
	// context has no deadline (a /debug/check); handshakes have theirs.
	lookupWait = 10 * time.Second
)

// ErrTooManyWaiting answers a lookup beyond DefaultMaxQueued.
var ErrTooManyWaiting = errors.New("too many lookups waiting for tailscaled")

// Config is the verify actor's configuration; zero fields take the
// defaults above.
type Config struct {
	Tailscaled Tailscaled
	Counters   *Counters // nil: counted in a fresh one

	PositiveTTL  time.Duration
	NegativeTTL  time.Duration
	StatusTTL    time.Duration
	ErrorBackoff time.Duration
	WhoIsRecheck time.Duration
	MaxEntries   int
	MaxCalls     int
	MaxQueued    int

	// runCall runs a LocalAPI call; nil means on a goroutine of its own.
	// Tests run each when they choose, so the actor is driven without
	// goroutines racing.
	runCall func(call func())
}

func (c *Config) withDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.PositiveTTL, DefaultPositiveTTL)
	def(&c.NegativeTTL, DefaultNegativeTTL)
	def(&c.StatusTTL, DefaultStatusTTL)
	def(&c.ErrorBackoff, DefaultErrorBackoff)
	def(&c.WhoIsRecheck, DefaultWhoIsRecheck)
	if c.MaxEntries <= 0 {
		c.MaxEntries = DefaultMaxEntries
	}
	if c.MaxCalls <= 0 {
		c.MaxCalls = DefaultMaxCalls
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = DefaultMaxQueued
	}
	if c.Counters == nil {
		c.Counters = new(Counters)
	}
	if c.runCall == nil {
		c.runCall = func(call func()) { go call() }
	}
}

// Messages.
type (
	// Verify asks whether tailscaled knows Key; the answer is a *Verdict.
	// Fresh skips the cache, the last status answer and the error
	// backoff, and asks tailscaled (/debug/check).
	Verify struct {
		Key   wire.NodePublic
		Fresh bool
	}

	// Verdict answers Verify. Err set: tailscaled could not tell.
	Verdict struct {
		Known bool
		Err   error
		// Cached: answered from what the actor held, without a call.
		Cached bool
	}

	// GetState asks for a *State, for /debug/actors.
	GetState struct{}

	// State is what the actor holds.
	State struct {
		Entries        int    // answers cached
		Calls          int    // LocalAPI calls running
		Queued         int    // lookups waiting for a free call
		StatusFallback bool   // tailscaled predates whois by node key: asking status
		StatusKeys     int    // keys in the status answer in use; 0 when none is
		Healthy        bool   // the last call got an answer
		LastError      string // of the last call that failed
		Mailbox        actors.MailboxCounts
	}

	// whoisDone and statusDone report a call's end to the actor.
	whoisDone struct {
		l     *lookup
		known bool
		err   error
	}
	statusDone struct {
		l   *lookup
		st  *Status
		err error
	}
)

// Counters are the verify metrics (derpd_verify_*). The actor counts the
// cache and the calls; the admission code counts what became of each
// lookup. Written with atomics, read by /debug/varz.
type Counters struct {
	Admitted, Refused, Errors atomic.Int64 // lookups by result
	FailOpen                  atomic.Int64 // of the Errors, admitted by -verify-clients-fail-open
	CacheHits                 atomic.Int64
	WhoIsCalls, StatusCalls   atomic.Int64
	WhoIsErrors, StatusErrors atomic.Int64
	Entries                   atomic.Int64 // gauge: answers cached
	StatusFallback            atomic.Bool  // gauge
}

// WritePrometheus writes the derpd_verify_* families.
func (c *Counters) WritePrometheus(p actors.PromWriter) {
	p.Header("derpd_verify_lookups", "counter")
	p.Sample("derpd_verify_lookups", `result="admitted"`, float64(c.Admitted.Load()))
	p.Sample("derpd_verify_lookups", `result="refused"`, float64(c.Refused.Load()))
	p.Sample("derpd_verify_lookups", `result="error"`, float64(c.Errors.Load()))
	p.Counter("derpd_verify_fail_open_admissions", c.FailOpen.Load())
	p.Counter("derpd_verify_cache_hits", c.CacheHits.Load())
	p.Gauge("derpd_verify_cache_entries", c.Entries.Load())
	p.Header("derpd_verify_localapi_calls", "counter")
	p.Sample("derpd_verify_localapi_calls", `call="whois"`, float64(c.WhoIsCalls.Load()))
	p.Sample("derpd_verify_localapi_calls", `call="status"`, float64(c.StatusCalls.Load()))
	p.Header("derpd_verify_localapi_errors", "counter")
	p.Sample("derpd_verify_localapi_errors", `call="whois"`, float64(c.WhoIsErrors.Load()))
	p.Sample("derpd_verify_localapi_errors", `call="status"`, float64(c.StatusErrors.Load()))
	fallback := int64(0)
	if c.StatusFallback.Load() {
		fallback = 1
	}
	p.Gauge("derpd_verify_status_fallback", fallback)
}

// lookup is one call to make or being made, and who waits for it: a
// whois of key, or a status that answers every waiter whatever its key.
type lookup struct {
	status  bool
	key     wire.NodePublic
	waiters []waiter
	started bool
}

type waiter struct {
	pid *actor.PID
	key wire.NodePublic
}

type entry struct {
	key     wire.NodePublic
	known   bool
	expires time.Time
	elem    *list.Element
}

// verifier is the actor.
type verifier struct {
	sys  *actors.System
	cfg  Config
	log  zerolog.Logger
	mbox *actors.MailboxStats
	self *actor.PID

	cache map[wire.NodePublic]*entry
	age   list.List // of *entry, newest first

	whois   map[wire.NodePublic]*lookup // whois lookups queued or running, by key
	status  *lookup                     // the status lookup queued or running, if any
	queue   []*lookup                   // not started yet, first come first
	running int

	// statusFallback: tailscaled answered that it predates whois by node
	// key, at fallbackSince. snapshot is the last status answer's keys,
	// good until snapshotExpires.
	statusFallback  bool
	fallbackSince   time.Time
	snapshot        *Status
	snapshotExpires time.Time

	// Health: after a failed call, lookups the cache cannot answer get
	// downErr until downUntil.
	healthy      bool
	downErr      error
	downSince    time.Time
	downUntil    time.Time
	lastErrLog   time.Time
	errsSinceLog int
}

// Verifier is how goroutines outside the actor (handshakes, /debug/check)
// ask it.
type Verifier struct {
	sys *actors.System
	pid *actor.PID
	ts  Tailscaled
	// Counters are the actor's, for /debug/varz and the admission code.
	Counters *Counters
}

// Spawn starts a verify actor.
func Spawn(sys *actors.System, cfg Config) *Verifier {
	cfg.withDefaults()
	v := &verifier{
		sys:     sys,
		cfg:     cfg,
		log:     sys.Log.With().Str("actor", "verify").Logger(),
		cache:   make(map[wire.NodePublic]*entry),
		whois:   make(map[wire.NodePublic]*lookup),
		healthy: true,
	}
	props, mbox := sys.Props(actors.ActorVerify, func() actor.Actor { return v })
	v.mbox = mbox
	pid, err := sys.Root.SpawnNamed(props, "verify")
	if err != nil {
		panic("verify: spawn: " + err.Error())
	}
	return &Verifier{sys: sys, pid: pid, ts: cfg.Tailscaled, Counters: cfg.Counters}
}

// PID is the actor's.
func (v *Verifier) PID() *actor.PID { return v.pid }

// Stop stops the actor and lets tailscaled's idle connections go. Calls
// still running end on their own, within their timeout.
func (v *Verifier) Stop() {
	v.sys.Root.StopFuture(v.pid).Wait()
	if c, ok := v.ts.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Lookup asks the actor about key and waits for its verdict, at most
// until ctx's deadline.
func (v *Verifier) Lookup(ctx context.Context, key wire.NodePublic) Verdict {
	return v.ask(ctx, &Verify{Key: key})
}

func (v *Verifier) ask(ctx context.Context, m *Verify) Verdict {
	wait := lookupWait
	if d, ok := ctx.Deadline(); ok {
		// The wall clock: a context's deadline is on it.
		wait = time.Until(d)
	}
	if wait <= 0 {
		return Verdict{Err: errors.New("no time left to ask tailscaled")}
	}
	res, err := v.sys.Root.RequestFuture(v.pid, m, wait).Result()
	if err != nil {
		return Verdict{Err: fmt.Errorf("no answer from tailscaled within the handshake's time (%v)", wait.Round(time.Millisecond))}
	}
	return *res.(*Verdict)
}

// CheckSelf is /debug/check's test that verification works end to end, as
// upstream's: ask tailscaled for its own node key (a status without
// peers), then verify that key the way a client's is verified, asking
// tailscaled afresh rather than trusting the cache.
func (v *Verifier) CheckSelf(ctx context.Context) error {
	st, err := v.ts.Status(ctx, false)
	v.Counters.StatusCalls.Add(1)
	if err != nil {
		v.Counters.StatusErrors.Add(1)
		return fmt.Errorf("-verify-clients: tailscaled's status: %w", err)
	}
	if st.Self.IsZero() {
		return fmt.Errorf("-verify-clients: tailscaled has no node key (its state is %q): it cannot verify anyone", st.BackendState)
	}
	verdict := v.ask(ctx, &Verify{Key: st.Self, Fresh: true})
	switch {
	case verdict.Err != nil:
		return fmt.Errorf("-verify-clients: verifying tailscaled's own key %s: %w", st.Self, verdict.Err)
	case !verdict.Known:
		return fmt.Errorf("-verify-clients: tailscaled does not know its own key %s", st.Self)
	}
	return nil
}

// Recover implements actors.Recoverer: the cache, the status snapshot and
// what is known of tailscaled's health are dropped, and lookups still
// queued are answered with an error (fail-open or fail-closed then
// applies, as for any LocalAPI error) rather than left to time out.
// Calls under way stay counted: they answer their own waiters when they
// report back.
func (v *verifier) Recover(ctx actor.Context, reason any) {
	errRecovered := errors.New("the verify actor recovered from an internal error; try again")
	for _, l := range v.queue {
		if l == nil {
			continue
		}
		for _, w := range l.waiters {
			reply(ctx, w.pid, &Verdict{Err: errRecovered})
		}
	}
	running := v.running
	*v = verifier{
		sys: v.sys, cfg: v.cfg, log: v.log, mbox: v.mbox, self: v.self,
		cache:   make(map[wire.NodePublic]*entry),
		whois:   make(map[wire.NodePublic]*lookup),
		healthy: true,
		running: running,
	}
	v.log.Error().Msg("verify cache dropped after a panic")
}

// Receive implements actor.Actor.
func (v *verifier) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		v.self = ctx.Self()
	case *Verify:
		v.verify(ctx, ctx.Sender(), m)
	case *whoisDone:
		v.whoisDone(ctx, m)
	case *statusDone:
		v.statusDone(ctx, m)
	case *GetState:
		st := &State{
			Entries: len(v.cache), Calls: v.running, Queued: len(v.queue),
			StatusFallback: v.statusFallback, Healthy: v.healthy, Mailbox: v.mbox.CountsInHandler(),
		}
		if v.snapshot != nil {
			st.StatusKeys = len(v.snapshot.Peers)
		}
		if v.downErr != nil {
			st.LastError = v.downErr.Error()
		}
		ctx.Respond(st)
	}
}

func (v *verifier) verify(ctx actor.Context, sender *actor.PID, m *Verify) {
	now := v.sys.Clock.Now()
	if !m.Fresh {
		if known, ok := v.cached(m.Key, now); ok {
			v.cfg.Counters.CacheHits.Add(1)
			reply(ctx, sender, &Verdict{Known: known, Cached: true})
			return
		}
		if v.snapshot != nil {
			if now.Before(v.snapshotExpires) {
				known := v.snapshot.Knows(m.Key)
				v.store(m.Key, known, now)
				v.cfg.Counters.CacheHits.Add(1)
				reply(ctx, sender, &Verdict{Known: known, Cached: true})
				return
			}
			v.snapshot = nil // stale: let a big tailnet's keys go
		}
		if now.Before(v.downUntil) {
			reply(ctx, sender, &Verdict{Err: v.downErr, Cached: true})
			return
		}
	}
	if v.statusFallback && now.Sub(v.fallbackSince) >= v.cfg.WhoIsRecheck {
		v.statusFallback = false
		v.cfg.Counters.StatusFallback.Store(false)
		v.log.Debug().Msg("trying whois by node key again, in case tailscaled was upgraded")
	}
	w := waiter{pid: sender, key: m.Key}
	if v.statusFallback {
		v.joinStatus(w)
	} else if err := v.joinWhois(w); err != nil {
		reply(ctx, sender, &Verdict{Err: err})
		return
	}
	v.pump()
}

// cached returns the cached answer about key, forgetting it if expired.
func (v *verifier) cached(key wire.NodePublic, now time.Time) (known, ok bool) {
	e := v.cache[key]
	if e == nil {
		return false, false
	}
	if !now.Before(e.expires) {
		v.forget(e)
		return false, false
	}
	return e.known, true
}

// store caches an answer, the oldest going when the cache is full.
func (v *verifier) store(key wire.NodePublic, known bool, now time.Time) {
	ttl := v.cfg.NegativeTTL
	if known {
		ttl = v.cfg.PositiveTTL
	}
	if e := v.cache[key]; e != nil {
		e.known, e.expires = known, now.Add(ttl)
		v.age.MoveToFront(e.elem)
		return
	}
	if len(v.cache) >= v.cfg.MaxEntries {
		v.forget(v.age.Back().Value.(*entry))
	}
	e := &entry{key: key, known: known, expires: now.Add(ttl)}
	e.elem = v.age.PushFront(e)
	v.cache[key] = e
	v.cfg.Counters.Entries.Store(int64(len(v.cache)))
}

func (v *verifier) forget(e *entry) {
	v.age.Remove(e.elem)
	delete(v.cache, e.key)
	v.cfg.Counters.Entries.Store(int64(len(v.cache)))
}

// joinWhois adds w to the whois of its key, queueing one if none is
// queued or running: concurrent lookups of one key share one call.
func (v *verifier) joinWhois(w waiter) error {
	if l := v.whois[w.key]; l != nil {
		l.waiters = append(l.waiters, w)
		return nil
	}
	if len(v.queue) >= v.cfg.MaxQueued {
		return ErrTooManyWaiting
	}
	l := &lookup{key: w.key, waiters: []waiter{w}}
	v.whois[w.key] = l
	v.queue = append(v.queue, l)
	return nil
}

// joinStatus adds w to the status lookup, queueing one if none is queued
// or running: one status answers every key.
func (v *verifier) joinStatus(w waiter) {
	if v.status == nil {
		v.status = &lookup{status: true}
		v.queue = append(v.queue, v.status)
	}
	v.status.waiters = append(v.status.waiters, w)
}

// pump starts queued lookups while calls are free.
func (v *verifier) pump() {
	for v.running < v.cfg.MaxCalls && len(v.queue) > 0 {
		l := v.queue[0]
		v.queue[0] = nil
		v.queue = v.queue[1:]
		v.start(l)
	}
	if len(v.queue) == 0 {
		v.queue = nil // let the backing array of a storm go
	}
}

func (v *verifier) start(l *lookup) {
	l.started = true
	v.running++
	ts, sys, self := v.cfg.Tailscaled, v.sys, v.self
	if l.status {
		v.cfg.Counters.StatusCalls.Add(1)
		v.cfg.runCall(func() {
			st, err := ts.Status(context.Background(), true)
			sys.Send(self, &statusDone{l: l, st: st, err: err})
		})
		return
	}
	v.cfg.Counters.WhoIsCalls.Add(1)
	key := l.key
	v.cfg.runCall(func() {
		known, err := ts.WhoIsNodeKey(context.Background(), key)
		sys.Send(self, &whoisDone{l: l, known: known, err: err})
	})
}

func (v *verifier) whoisDone(ctx actor.Context, m *whoisDone) {
	v.running--
	if v.whois[m.l.key] == m.l {
		delete(v.whois, m.l.key)
	}
	now := v.sys.Clock.Now()
	switch {
	case errors.Is(m.err, ErrWhoIsUnsupported):
		v.answered(now)
		if !v.statusFallback {
			v.fallBackToStatus(now)
		}
		for _, w := range m.l.waiters {
			v.joinStatus(w)
		}
	case m.err != nil:
		v.cfg.Counters.WhoIsErrors.Add(1)
		v.failed(ctx, m.err, now, m.l)
	default:
		v.answered(now)
		v.store(m.l.key, m.known, now)
		for _, w := range m.l.waiters {
			reply(ctx, w.pid, &Verdict{Known: m.known})
		}
	}
	v.pump()
}

// fallBackToStatus switches to status for a tailscaled that predates
// whois by node key: the queued whois lookups' waiters join the status
// lookup; the running ones will, as their calls come back with the same
// answer.
func (v *verifier) fallBackToStatus(now time.Time) {
	v.statusFallback, v.fallbackSince = true, now
	v.cfg.Counters.StatusFallback.Store(true)
	v.log.Info().Dur("status_ttl", v.cfg.StatusTTL).
		Msg("tailscaled predates whois by node key (it answered 400 invalid 'addr' parameter); verifying clients against its status instead, one call for every key")
	queued := v.queue
	v.queue = nil
	for _, l := range queued {
		if l.status {
			v.queue = append(v.queue, l)
			continue
		}
		delete(v.whois, l.key)
		for _, w := range l.waiters {
			v.joinStatus(w)
		}
	}
}

func (v *verifier) statusDone(ctx actor.Context, m *statusDone) {
	v.running--
	if v.status == m.l {
		v.status = nil
	}
	now := v.sys.Clock.Now()
	if m.err != nil {
		v.cfg.Counters.StatusErrors.Add(1)
		v.failed(ctx, m.err, now, m.l)
		v.pump()
		return
	}
	v.answered(now)
	v.snapshot, v.snapshotExpires = m.st, now.Add(v.cfg.StatusTTL)
	for _, w := range m.l.waiters {
		known := m.st.Knows(w.key)
		v.store(w.key, known, now)
		reply(ctx, w.pid, &Verdict{Known: known})
	}
	v.pump()
}

// failed answers l's waiters, and those of every lookup not yet started,
// with err: a tailscaled that failed one call will fail the next, and
// the handshakes waiting should hear so now, with time left for the
// operator's fail-open choice. Lookups the cache cannot answer get err
// for ErrorBackoff.
func (v *verifier) failed(ctx actor.Context, err error, now time.Time, l *lookup) {
	v.downErr, v.downUntil = err, now.Add(v.cfg.ErrorBackoff)
	for _, w := range l.waiters {
		reply(ctx, w.pid, &Verdict{Err: err})
	}
	queued := v.queue
	v.queue = nil
	for _, q := range queued {
		if q.status {
			v.status = nil
		} else {
			delete(v.whois, q.key)
		}
		for _, w := range q.waiters {
			reply(ctx, w.pid, &Verdict{Err: err})
		}
	}
	// One line when tailscaled stops answering, then one every
	// errorLogEvery while it stays so: a storm of clients must not
	// become a storm of lines.
	v.errsSinceLog++
	switch {
	case v.healthy:
		v.healthy, v.downSince = false, now
		v.log.Warn().Err(err).Dur("backoff", v.cfg.ErrorBackoff).Msg("cannot verify clients: tailscaled did not answer")
	case now.Sub(v.lastErrLog) >= errorLogEvery:
		v.log.Warn().Err(err).Int("failures", v.errsSinceLog).Msg("cannot verify clients: tailscaled still not answering")
	default:
		return
	}
	v.lastErrLog, v.errsSinceLog = now, 0
}

// answered notes a call that got an answer.
func (v *verifier) answered(now time.Time) {
	if v.healthy {
		return
	}
	v.healthy = true
	v.log.Info().Int("failures", v.errsSinceLog).Dur("down_for", now.Sub(v.downSince)).Msg("tailscaled answering again")
	v.errsSinceLog = 0
	v.downUntil = time.Time{}
}

func reply(ctx actor.Context, to *actor.PID, msg *Verdict) {
	if to != nil {
		ctx.Send(to, msg)
	}
}
