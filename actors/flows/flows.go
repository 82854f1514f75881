// Package flows is the flows actor: it collects every connection's flow
// counters on a timer and keeps, per flow (source, destination, and the
// mesh peer it crossed), the bytes and packets so far, when it was last
// active, and its rate over a short window, for /debug/flows and
// /debug/peer. Readers count into tallies of their own (actors.FlowTally)
// and never send it a message per packet.
package flows

import (
	"bytes"
	"cmp"
	"container/list"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Defaults, as the flags have them.
const (
	DefaultInterval = time.Second      // how often tallies are collected
	DefaultWindow   = 5                // collections a rate spans
	DefaultInactive = 5 * time.Minute  // a flow idle this long is forgotten…
	DefaultSweep    = 10 * time.Minute // …at the next sweep, this often
	DefaultMax      = 100_000          // flows tracked at most
)

// Config sets the actor's timing and bounds; zero fields take the defaults.
type Config struct {
	Interval time.Duration
	Window   int
	Inactive time.Duration
	Sweep    time.Duration
	Max      int
}

func (c *Config) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.Inactive <= 0 {
		c.Inactive = DefaultInactive
	}
	if c.Sweep <= 0 {
		c.Sweep = DefaultSweep
	}
	if c.Max <= 0 {
		c.Max = DefaultMax
	}
}

// Flows is the actor.
type Flows struct {
	sys  *actors.System
	cfg  Config
	log  zerolog.Logger
	self *actor.PID
	mbox *actors.MailboxStats

	tallies map[*actors.FlowTally]*tallyState
	flows   map[flowKey]*flow
	lru     list.List // of *flow, most recently active first
	tick    uint64    // collections so far
	evicted int64
	swept   int64

	collectTimer, sweepTimer actors.Timer

	// The largest each map has been since it was made: actors.Shrink
	// copies a map that has fallen far below it, as the flows of a burst
	// are swept, so that their buckets do not stay for good.
	talliesPeak, flowsPeak actors.MapPeak
}

type flowKey struct {
	src, dst wire.NodePublic
	via      string
}

// tallyState is what the actor last read of one tally's counters.
type tallyState struct {
	known map[*actors.FlowCounter]*seenCounter
}

type seenCounter struct {
	packets, bytes int64
	tick           uint64 // the collection that last found it in its tally
}

type flow struct {
	key            flowKey
	bytes, packets int64
	first, active  time.Time
	window         []sample // ring, one per collection, indexed by tick
	elem           *list.Element
}

type sample struct {
	tick           uint64
	bytes, packets int64
}

// Messages the actor sends itself on its clock.
type (
	collectTick struct{}
	sweepTick   struct{}
)

// New returns the actor; Spawn starts it.
func New(sys *actors.System, cfg Config) *Flows {
	cfg.setDefaults()
	return &Flows{
		sys:     sys,
		cfg:     cfg,
		log:     sys.Log.With().Str("actor", "flows").Logger(),
		tallies: make(map[*actors.FlowTally]*tallyState),
		flows:   make(map[flowKey]*flow),
	}
}

// Spawn starts a flows actor and records its PID in the system, so that
// new connections hand it their tallies.
func Spawn(sys *actors.System, cfg Config) *actor.PID {
	f := New(sys, cfg)
	props, mbox := sys.Props(actors.ActorFlows, func() actor.Actor { return f })
	f.mbox = mbox
	pid, err := sys.Root.SpawnNamed(props, "flows")
	if err != nil {
		panic("flows: spawn: " + err.Error())
	}
	sys.Flows = pid
	return pid
}

// Recover implements actors.Recoverer: the flows start over from nothing,
// but the connections' tallies stay known (they are the readers', and
// sound), so counting goes on; each tally's counters are read afresh, so
// the first rates after a recovery may run high once. The timers are
// armed anew: the panic may have struck between a tick and its re-arming.
func (f *Flows) Recover(ctx actor.Context, reason any) {
	if f.collectTimer != nil {
		f.collectTimer.Stop()
	}
	if f.sweepTimer != nil {
		f.sweepTimer.Stop()
	}
	fresh := New(f.sys, f.cfg)
	fresh.mbox, fresh.self = f.mbox, f.self
	for t := range f.tallies {
		if t != nil {
			fresh.tallies[t] = &tallyState{known: make(map[*actors.FlowCounter]*seenCounter)}
		}
	}
	*f = *fresh
	f.armCollect()
	f.armSweep()
	f.publish()
	f.log.Error().Int("tallies", len(f.tallies)).Msg("flows started over after a panic")
}

// Receive implements actor.Actor.
func (f *Flows) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		f.self = ctx.Self()
		f.armCollect()
		f.armSweep()
	case *actors.FlowTallyStarted:
		if _, ok := f.tallies[m.Tally]; !ok {
			f.tallies[m.Tally] = &tallyState{known: make(map[*actors.FlowCounter]*seenCounter)}
			f.tallies = actors.Shrink(f.tallies, &f.talliesPeak)
			f.publish()
		}
	case *actors.FlowTallyEnded:
		if ts := f.tallies[m.Tally]; ts != nil {
			f.collectTally(m.Tally, ts, true)
			delete(f.tallies, m.Tally)
			f.tallies = actors.Shrink(f.tallies, &f.talliesPeak)
			f.publish()
		}
	case *collectTick:
		f.collect()
		f.armCollect()
	case *sweepTick:
		f.sweep()
		f.armSweep()
	case *actors.GetFlows:
		ctx.Respond(f.snapshot(m))
	case *actor.Stopping:
		if f.collectTimer != nil {
			f.collectTimer.Stop()
		}
		if f.sweepTimer != nil {
			f.sweepTimer.Stop()
		}
	}
}

func (f *Flows) armCollect() {
	self, sys := f.self, f.sys
	f.collectTimer = sys.Clock.AfterFunc(f.cfg.Interval, func() { sys.Send(self, &collectTick{}) })
}

func (f *Flows) armSweep() {
	self, sys := f.self, f.sys
	f.sweepTimer = sys.Clock.AfterFunc(f.cfg.Sweep, func() { sys.Send(self, &sweepTick{}) })
}

// collect reads every tally, connection by connection in id order.
func (f *Flows) collect() {
	f.tick++
	ts := make([]*actors.FlowTally, 0, len(f.tallies))
	for t := range f.tallies {
		ts = append(ts, t)
	}
	slices.SortFunc(ts, func(a, b *actors.FlowTally) int { return cmp.Compare(a.Conn, b.Conn) })
	for _, t := range ts {
		f.collectTally(t, f.tallies[t], false)
	}
	f.publish()
}

// collectTally adds what each of t's counters gained since it was last
// read. Counters the tally no longer lists (it started over when full),
// or all of them when the connection has ended, are read a last time and
// forgotten.
func (f *Flows) collectTally(t *actors.FlowTally, ts *tallyState, final bool) {
	now := f.sys.Clock.Now()
	for _, c := range t.Counters() {
		sc := ts.known[c]
		if sc == nil {
			sc = &seenCounter{}
			ts.known[c] = sc
		}
		sc.tick = f.tick
		f.gain(c, sc, now)
	}
	for c, sc := range ts.known {
		if final || sc.tick != f.tick {
			f.gain(c, sc, now)
			delete(ts.known, c)
		}
	}
	t.Collected()
}

// gain records what counter c gained since sc.
func (f *Flows) gain(c *actors.FlowCounter, sc *seenCounter, now time.Time) {
	p, b := c.Packets.Load(), c.Bytes.Load()
	dp, db := p-sc.packets, b-sc.bytes
	if dp == 0 {
		return
	}
	sc.packets, sc.bytes = p, b
	k := flowKey{c.Src, c.Dst, c.Via}
	fl := f.flows[k]
	if fl == nil {
		if len(f.flows) >= f.cfg.Max {
			f.evictOldest()
		}
		fl = &flow{key: k, first: now, window: make([]sample, f.cfg.Window)}
		fl.elem = f.lru.PushFront(fl)
		f.flows[k] = fl
		f.flows = actors.Shrink(f.flows, &f.flowsPeak)
	} else {
		f.lru.MoveToFront(fl.elem)
	}
	fl.packets += dp
	fl.bytes += db
	fl.active = now
	s := &fl.window[f.tick%uint64(len(fl.window))]
	if s.tick != f.tick {
		*s = sample{tick: f.tick}
	}
	s.packets += dp
	s.bytes += db
}

func (f *Flows) evictOldest() {
	e := f.lru.Back()
	if e == nil {
		return
	}
	fl := f.lru.Remove(e).(*flow)
	delete(f.flows, fl.key)
	f.evicted++
	f.sys.Stats.FlowsEvicted.Add(1)
}

// sweep forgets flows inactive for cfg.Inactive. The LRU list is in order
// of last activity, so it stops at the first flow still active.
func (f *Flows) sweep() {
	cutoff := f.sys.Clock.Now().Add(-f.cfg.Inactive)
	n := 0
	for e := f.lru.Back(); e != nil; e = f.lru.Back() {
		fl := e.Value.(*flow)
		if fl.active.After(cutoff) {
			break
		}
		f.lru.Remove(e)
		delete(f.flows, fl.key)
		n++
	}
	// Flows leave only here (and by eviction, which keeps the map full):
	// once per sweep is once per batch of removals.
	f.flows = actors.Shrink(f.flows, &f.flowsPeak)
	if n > 0 {
		f.swept += int64(n)
		f.sys.Stats.FlowsSwept.Add(int64(n))
		f.log.Debug().Int("flows", n).Int("left", len(f.flows)).Msg("swept inactive flows")
	}
	f.publish()
}

func (f *Flows) publish() {
	f.sys.Stats.FlowsTracked.Store(int64(len(f.flows)))
}

// rates are a flow's bytes and packets per second over the window: the
// collections of the last Window ticks, whether or not it was active in
// all of them.
func (f *Flows) rates(fl *flow) (bps, pps float64) {
	span := f.cfg.Interval.Seconds() * float64(len(fl.window))
	for _, s := range fl.window {
		if s.tick+uint64(len(fl.window)) > f.tick {
			bps += float64(s.bytes)
			pps += float64(s.packets)
		}
	}
	return bps / span, pps / span
}

func (f *Flows) snapshot(m *actors.GetFlows) *actors.FlowsSnapshot {
	out := &actors.FlowsSnapshot{
		Tracked: len(f.flows), Evicted: f.evicted, Swept: f.swept, Tallies: len(f.tallies),
		Window: f.cfg.Interval * time.Duration(f.cfg.Window), Mailbox: f.mbox.CountsInHandler(),
	}
	for _, fl := range f.flows {
		if !m.Key.IsZero() && fl.key.src != m.Key && fl.key.dst != m.Key {
			continue
		}
		bps, pps := f.rates(fl)
		out.Flows = append(out.Flows, actors.FlowInfo{
			Src: fl.key.src, Dst: fl.key.dst, Via: fl.key.via, Bytes: fl.bytes, Packets: fl.packets,
			BPS: bps, PPS: pps, First: fl.first, LastActive: fl.active,
		})
	}
	slices.SortFunc(out.Flows, func(a, b actors.FlowInfo) int {
		if c := cmp.Compare(b.BPS, a.BPS); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Bytes, a.Bytes); c != 0 {
			return c
		}
		if c := b.LastActive.Compare(a.LastActive); c != 0 {
			return c
		}
		// Ties broken by the flow itself: the same flows always list in
		// the same order.
		if c := bytes.Compare(a.Src[:], b.Src[:]); c != 0 {
			return c
		}
		if c := bytes.Compare(a.Dst[:], b.Dst[:]); c != 0 {
			return c
		}
		return cmp.Compare(a.Via, b.Via)
	})
	if m.Limit > 0 && len(out.Flows) > m.Limit {
		out.Flows = out.Flows[:m.Limit]
	}
	return out
}

// Mailbox returns the actor's mailbox counts, for /debug/actors.
func (f *Flows) Mailbox() *actors.MailboxStats { return f.mbox }
