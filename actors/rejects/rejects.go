// Package rejects is the rejects actor: an aggregate, bounded per
// direction and least recently seen first out, of every connection the
// server refused and every packet it could not route or deliver, keyed by
// direction, peer and reason, with counts and when each was first and
// last seen; and a ring of the most recent disconnects with their
// reasons. It answers "why did this device fail?" on /debug/rejects and
// /debug/peer.
package rejects

import (
	"container/list"
	"net/netip"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// Defaults, as the flags have them.
const (
	DefaultMax         = 256 // entries kept per direction
	DefaultDisconnects = 256 // recent disconnects kept
)

// Rejects is the actor.
type Rejects struct {
	sys  *actors.System
	log  zerolog.Logger
	mbox *actors.MailboxStats
	max  int

	entries map[entryKey]*entry
	lru     [actors.NumRejectDirections]list.List // of *entry, most recent first
	evicted [actors.NumRejectDirections]int64

	ring []actors.DisconnectInfo // the last DefaultDisconnects, oldest overwritten
	next int                     // where the next one goes
}

type entryKey struct {
	dir    actors.RejectDirection
	reason actors.RejectReason
	peer   string
}

type entry struct {
	key         entryKey
	id          wire.NodePublic
	detail      string
	count       int64
	first, last time.Time
	elem        *list.Element
}

// New returns the actor, keeping max entries per direction (0: DefaultMax).
func New(sys *actors.System, max int) *Rejects {
	if max <= 0 {
		max = DefaultMax
	}
	return &Rejects{
		sys:     sys,
		log:     sys.Log.With().Str("actor", "rejects").Logger(),
		max:     max,
		entries: make(map[entryKey]*entry),
		ring:    make([]actors.DisconnectInfo, 0, DefaultDisconnects),
	}
}

// Spawn starts a rejects actor and records its PID in the system.
func Spawn(sys *actors.System, max int) *actor.PID {
	r := New(sys, max)
	props, mbox := sys.Props(actors.ActorRejects, func() actor.Actor { return r })
	r.mbox = mbox
	pid, err := sys.Root.SpawnNamed(props, "rejects")
	if err != nil {
		panic("rejects: spawn: " + err.Error())
	}
	sys.Rejects = pid
	return pid
}

// Mailbox returns the actor's mailbox counts, for /debug/actors.
func (r *Rejects) Mailbox() *actors.MailboxStats { return r.mbox }

// Recover implements actors.Recoverer: the record starts over empty. It
// is a view for operators; nothing else depends on it.
func (r *Rejects) Recover(ctx actor.Context, reason any) {
	fresh := New(r.sys, r.max)
	fresh.mbox = r.mbox
	*r = *fresh
	r.publish()
	r.log.Error().Msg("rejects record started over after a panic")
}

// Receive implements actor.Actor.
func (r *Rejects) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actors.RejectBatch:
		now := r.sys.Clock.Now()
		for i := range m.Events {
			r.note(&m.Events[i], now)
		}
		r.publish()
	case *actors.Disconnected:
		r.disconnected(m)
	case *actors.GetRejects:
		ctx.Respond(r.snapshot(m.Key))
	}
}

func (r *Rejects) note(ev *actors.RejectEvent, now time.Time) {
	if ev.Dir >= actors.NumRejectDirections || ev.Reason >= actors.NumRejectReasons || ev.Count <= 0 {
		return
	}
	k := entryKey{dir: ev.Dir, reason: ev.Reason, peer: peerName(ev.Key, ev.Addr)}
	e := r.entries[k]
	if e == nil {
		l := &r.lru[ev.Dir]
		if l.Len() >= r.max {
			old := l.Remove(l.Back()).(*entry)
			delete(r.entries, old.key)
			r.evicted[ev.Dir]++
			r.sys.Stats.RejectsEvicted.Add(1)
		}
		e = &entry{key: k, id: ev.Key, first: now}
		e.elem = l.PushFront(e)
		r.entries[k] = e
	} else {
		r.lru[ev.Dir].MoveToFront(e.elem)
	}
	e.count += ev.Count
	e.last = now
	e.detail = detail(ev)
}

func peerName(k wire.NodePublic, a netip.AddrPort) string {
	switch {
	case !k.IsZero():
		return k.String()
	case a.IsValid():
		return a.String()
	}
	return "unknown"
}

func detail(ev *actors.RejectEvent) string {
	if ev.DetailKey.IsZero() {
		return ev.Detail
	}
	if ev.Detail == "" {
		return "to " + ev.DetailKey.String()
	}
	return "to " + ev.DetailKey.String() + " " + ev.Detail
}

func (r *Rejects) disconnected(m *actors.Disconnected) {
	d := actors.DisconnectInfo{Disconnected: *m, Ended: r.sys.Clock.Now()}
	if len(r.ring) < cap(r.ring) {
		r.ring = append(r.ring, d)
		return
	}
	r.ring[r.next] = d
	r.next = (r.next + 1) % len(r.ring)
}

func (r *Rejects) publish() {
	r.sys.Stats.RejectsTracked.Store(int64(len(r.entries)))
}

// snapshot lists the entries most recent first, direction by direction,
// and the disconnects most recent first; with k, only what names k.
func (r *Rejects) snapshot(k wire.NodePublic) *actors.RejectsSnapshot {
	out := &actors.RejectsSnapshot{Evicted: r.evicted, Max: r.max, Mailbox: r.mbox.CountsInHandler()}
	for dir := range r.lru {
		for e := r.lru[dir].Front(); e != nil; e = e.Next() {
			en := e.Value.(*entry)
			if !k.IsZero() && en.id != k {
				continue
			}
			out.Rejects = append(out.Rejects, actors.RejectInfo{
				Dir: en.key.dir, Peer: en.key.peer, Key: en.id, Reason: en.key.reason,
				Detail: en.detail, Count: en.count, First: en.first, Last: en.last,
			})
		}
	}
	n := len(r.ring)
	for i := range n {
		// Newest first: the one before next, and back round the ring.
		d := r.ring[(r.next-1-i+2*n)%n]
		if !k.IsZero() && d.Key != k {
			continue
		}
		out.Disconnects = append(out.Disconnects, d)
	}
	return out
}
