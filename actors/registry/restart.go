package registry

import (
	"cmp"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
)

// restartPlan is a graceful shutdown in progress (actors.RestartAll): the
// client connections to close, in connection order, and how far along
// the spread is. Owned by the registry actor.
type restartPlan struct {
	frame   *actors.SendRestarting // sent to every connection, and to late registrations
	reason  string
	start   time.Time
	spread  time.Duration
	clients []*actors.Conn            // connection order: the order they are closed in
	next    int                       // the next to close
	closed  int                       // closes asked for (connections gone meanwhile are skipped)
	leaving map[*actors.Conn]struct{} // asked to close, not yet unregistered
	mesh    int                       // mesh-key connections, left open
	replyTo *actor.PID                // the RestartAll's sender, answered when the spread is over
	done    bool
}

// restartTick is the clock's reminder that the next close of a spread is
// due.
type restartTick struct{}

// restartAll starts a graceful shutdown: Restarting to every connection
// now, then the client connections' closes spread evenly over m.Spread.
// Closing them in the order they connected, rather than in map order,
// makes the order the same on every run and in tests.
func (r *Registry) restartAll(ctx actor.Context, m *actors.RestartAll) {
	if r.restart != nil {
		r.log.Warn().Msg("graceful shutdown asked for twice; the first one goes on")
		return
	}
	p := &restartPlan{
		frame:   &actors.SendRestarting{ReconnectIn: m.ReconnectIn, TryFor: m.TryFor},
		reason:  m.Reason,
		start:   r.sys.Clock.Now(),
		spread:  max(m.Spread, 0),
		replyTo: ctx.Sender(),
		leaving: make(map[*actors.Conn]struct{}),
	}
	all := make([]*actors.Conn, 0, len(r.conns))
	for c := range r.conns {
		all = append(all, c)
	}
	slices.SortFunc(all, func(a, b *actors.Conn) int { return cmp.Compare(a.ID, b.ID) })
	for _, c := range all {
		ctx.Send(c.PID, p.frame)
		if c.CanMesh {
			p.mesh++
		} else {
			p.clients = append(p.clients, c)
		}
	}
	r.restart = p
	r.log.Info().Int("clients", len(p.clients)).Int("mesh_conns", p.mesh).Dur("spread", p.spread).
		Msg("sent Restarting to every connection; closing the clients")
	r.restartStep(ctx)
}

// due is when the i-th client's close is due: i/n of the way through the
// spread, so the first goes at once and the last one n-th of the spread
// before its end. (Computed as quotient and remainder, which cannot
// overflow for any spread.)
func (p *restartPlan) due(i int) time.Time {
	n := time.Duration(len(p.clients))
	q, rem := p.spread/n, p.spread%n
	return p.start.Add(q*time.Duration(i) + rem*time.Duration(i)/n)
}

// restartStep closes every client whose time has come, then sets the
// clock for the next one.
func (r *Registry) restartStep(ctx actor.Context) {
	p := r.restart
	if p == nil || p.done {
		return
	}
	now := r.sys.Clock.Now()
	for ; p.next < len(p.clients) && !p.due(p.next).After(now); p.next++ {
		c := p.clients[p.next]
		if _, ok := r.conns[c]; !ok {
			continue // it left on its own
		}
		ctx.Send(c.PID, &actors.CloseConn{Reason: p.reason, Flush: true})
		p.leaving[c] = struct{}{}
		p.closed++
	}
	if p.next < len(p.clients) {
		self, sys := ctx.Self(), r.sys
		sys.Clock.AfterFunc(p.due(p.next).Sub(now), func() { sys.Send(self, &restartTick{}) })
		return
	}
	r.restartMaybeDone(ctx)
}

// restartLeft notes that a connection unregistered during a graceful
// shutdown.
func (r *Registry) restartLeft(ctx actor.Context, c *actors.Conn) {
	if p := r.restart; p != nil && !p.done {
		delete(p.leaving, c)
		r.restartMaybeDone(ctx)
	}
}

// restartMaybeDone answers the requester once every client has been
// asked to close and is gone: only then have the watchers (the mesh
// peers) heard every departure, and the mesh may close.
func (r *Registry) restartMaybeDone(ctx actor.Context) {
	p := r.restart
	if p.done || p.next < len(p.clients) || len(p.leaving) > 0 {
		return
	}
	p.done = true
	if p.replyTo != nil {
		ctx.Send(p.replyTo, &actors.RestartSpreadDone{Closed: p.closed, Mesh: p.mesh})
	}
}
