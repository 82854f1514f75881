package client

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
)

// clientActor owns one connection's writer side and lifecycle: it turns
// the registry's messages into frames on the outbox, tracks the client's
// preferred (home) flag, and tears the connection down when the reader
// ends.
type clientActor struct {
	sys     *actors.System
	conn    *actors.Conn
	netConn net.Conn
	outbox  *Outbox
	since   time.Time

	serverInfo  []byte            // sealed ServerInfo body, sent once registered
	flows       *actors.FlowTally // its reader's flow counters, nil if none
	preferred   bool
	done        bool   // the reader ended
	closeReason string // why the server closed the connection, if it did
}

// Messages from the connection's own reader.
type (
	notePreferred struct{ preferred bool }
	readerDone    struct {
		err      error
		notIdeal bool
	}
)

func (a *clientActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actors.Registered:
		if !a.done {
			a.outbox.queueServerInfo(a.serverInfo)
			a.outbox.Start()
		}
	case *actors.SendPeerGone:
		a.outbox.QueuePeerGone(m.Peer, m.Reason)
	case *actors.SendPeerPresence:
		a.outbox.QueuePresence(m.Updates)
	case *actors.SendRestarting:
		a.outbox.QueueRestarting(m.ReconnectIn, m.TryFor)
	case *actors.CloseConn:
		if a.closeReason == "" {
			a.closeReason = m.Reason
			connLog(a.sys, a.conn).Info().Str("reason", m.Reason).Msg("closing connection")
		}
		if m.Flush && a.outbox.CloseWhenWritten() {
			break // the writer closes the socket once what is queued is out
		}
		// The reader notices and reports readerDone; cleanup happens there.
		a.netConn.Close()
		a.outbox.Abort()
	case *notePreferred:
		a.setPreferred(m.preferred)
	case *readerDone:
		a.done = true
		a.outbox.Close()
		a.netConn.Close()
		ctx.Send(a.sys.Registry, &actors.Unregister{Conn: a.conn})
		if a.flows != nil {
			ctx.Send(a.sys.Flows, &actors.FlowTallyEnded{Tally: a.flows})
		}
		stats := a.sys.Stats
		stats.CurrentConns.Add(-1)
		if m.notIdeal {
			stats.NotIdealConns.Add(-1)
		}
		if a.preferred {
			stats.HomeConns.Add(-1)
		}
		reason := logDisconnect(connLog(a.sys, a.conn), m.err, a.closeReason, a.sys.Clock.Now().Sub(a.since))
		a.recordEnd(m.err, reason)
		ctx.Stop(ctx.Self())
	}
}

// Recover implements actors.Recoverer. A client actor that panicked may
// have lost track of its connection, so the connection is closed: its
// reader ends and readerDone cleans up as after any disconnect, and the
// client reconnects. Had the panic struck that cleanup itself, the rest
// is done here (each step is idempotent) and the actor stops.
func (a *clientActor) Recover(ctx actor.Context, reason any) {
	if a.closeReason == "" {
		a.closeReason = "internal error (the connection's actor panicked)"
	}
	a.netConn.Close()
	if a.done {
		a.outbox.Close()
		ctx.Send(a.sys.Registry, &actors.Unregister{Conn: a.conn})
		ctx.Stop(ctx.Self())
	}
}

// recordEnd tells the rejects actor how the connection ended: always, for
// the ring of recent disconnects, and as a reject when the client broke
// the protocol or could not be written to.
func (a *clientActor) recordEnd(err error, reason string) {
	rj := a.sys.Rejects
	if rj == nil {
		return
	}
	c := a.conn
	d := &actors.Disconnected{Conn: c.ID, Key: c.Key, Addr: c.Addr, Since: a.since, Mesh: c.CanMesh, Reason: reason, Close: a.closeReason}
	if err != nil {
		d.Error = err.Error()
	}
	ev := actors.RejectEvent{Key: c.Key, Addr: c.Addr, Count: 1}
	if r, ok := protocolReason(err); ok {
		ev.Dir, ev.Reason, ev.Detail = actors.RejectConnection, r, err.Error()
	} else if werr := a.outbox.WriteErr(); werr != nil {
		ev.Dir, ev.Reason, ev.Detail = actors.RejectDelivery, actors.RejectWriteError, werr.Error()
		d.Error = "writing: " + werr.Error()
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			ev.Reason = actors.RejectWriteTimeout
		}
	} else {
		ev.Count = 0
	}
	if ev.Count > 0 {
		a.sys.Send(rj, &actors.RejectBatch{Events: []actors.RejectEvent{ev}})
	}
	a.sys.Send(rj, d)
}

func (a *clientActor) setPreferred(v bool) {
	if v == a.preferred {
		return
	}
	a.preferred = v
	a.conn.Preferred.Store(v)
	stats := a.sys.Stats
	if v {
		stats.HomeConns.Add(1)
	} else {
		stats.HomeConns.Add(-1)
	}
	// A client settling on its home right after connecting is not a move.
	if a.sys.Clock.Now().Sub(a.since) > homeMoveGrace {
		if v {
			stats.HomeMovesIn.Add(1)
		} else {
			stats.HomeMovesOut.Add(1)
		}
	}
}
