package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/derpd/derpd/actors"
)

// A graceful shutdown, on SIGTERM or SIGINT, in the order that costs the
// region least:
//
//  1. Stop accepting: the HTTP(S) listener, port 80, the debug listener
//     and STUN close, so nobody connects to a server on its way out.
//  2. Send every connection a Restarting frame (-restart-reconnect-in,
//     -restart-try-for), then close the client connections one by one,
//     in connection order, evenly over -shutdown-spread, each once its
//     frame is out (the registry does this: actors.RestartAll). Closed
//     together, every client would reconnect in the same instant, to the
//     region's other nodes or to this one's replacement.
//  3. Only then close the mesh: our links to the region's peers and
//     their links to us. While clients leave, packets between them and
//     clients on other nodes are still forwarded, and the peers hear
//     each departure as it happens.
//  4. Wait for the last connections and HTTP requests, at most
//     shutdownTail, close the journal (-record), and exit 0.
//
// A second SIGTERM or SIGINT cuts it short: derpd exits at once, with
// status 1.

const (
	// Tailscale's client (v1.102.5) reads the Restarting frame but acts
	// on neither value: it reconnects as soon as it is closed, backing
	// off from 10 ms to at most 5 s while it fails, and tries each node
	// of its region in order, so it finds another node at once. The
	// values are for clients that honour them, and match what derpd
	// does: come back after about a second, which is how long a
	// systemd restart of derpd takes to listen again, and keep trying
	// for 10 s, which covers the 5 s spread plus the restart (a
	// client closed first must not give up before the replacement is
	// up). The protocol asks for no more than a few seconds of try-for.
	defaultRestartReconnectIn = time.Second
	defaultRestartTryFor      = 10 * time.Second
	// Five seconds spread 10,000 clients at 2,000 reconnects a second,
	// which a node takes in its stride, and keeps a restart short.
	defaultShutdownSpread = 5 * time.Second

	// shutdownTail bounds what follows the spread: the mesh closing and
	// the last sockets and HTTP requests going. Closing a socket is
	// immediate, so two seconds is ample, and with the default spread a
	// shutdown takes under 10 s: far below systemd's TimeoutStopSec
	// (90 s unless the unit says otherwise) and Docker's 10 s.
	shutdownTail = 2 * time.Second
)

// checkShutdownFlags returns what is wrong with the shutdown flags, each
// naming its flag.
func (o *options) checkShutdownFlags() []string {
	var problems []string
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"restart-reconnect-in", o.restartReconnectIn},
		{"restart-try-for", o.restartTryFor},
		{"shutdown-spread", o.shutdownSpread},
	} {
		if f.d < 0 {
			problems = append(problems, fmt.Sprintf("-%s %v is negative", f.name, f.d))
		}
	}
	return problems
}

// shutdownBound is the longest a graceful shutdown takes.
func (o *options) shutdownBound() time.Duration { return o.shutdownSpread + shutdownTail }

// errSecondSignal ends a shutdown cut short by the operator.
var errSecondSignal = errors.New("a second signal: exiting without waiting for the remaining connections")

// shutdown stops the server as described above. servers are the HTTP
// servers to stop (the main listener's, port 80's, the debug listener's).
// A signal on force ends it at once with errSecondSignal; force may be
// nil. Hijacked DERP connections are not the HTTP servers' to close, and
// protoactor stops no actor on its own, so both are done here.
func (s *server) shutdown(servers []*http.Server, force <-chan os.Signal) error {
	started := time.Now()
	deadline := started.Add(s.opts.shutdownBound())
	close(s.stopping)

	// 1. With a context that is already done, Shutdown closes the
	// listeners and idle connections and returns at once; requests in
	// flight are waited for at the end.
	closed, cancel := context.WithCancel(context.Background())
	cancel()
	for _, srv := range servers {
		srv.Shutdown(closed)
	}
	if s.stun != nil {
		s.stun.Close()
	}

	// 2. Restarting, then the spread of closes.
	spread := s.sys.Root.RequestFuture(s.sys.Registry, &actors.RestartAll{
		ReconnectIn: s.opts.restartReconnectIn,
		TryFor:      s.opts.restartTryFor,
		Spread:      s.opts.shutdownSpread,
		Reason:      "server restarting",
	}, time.Until(deadline)-shutdownTail/2) // leaving time for the rest
	var answer any
	if err := waitOrForce(force, func() {
		var err error
		if answer, err = spread.Result(); err != nil {
			answer = err
		}
	}); err != nil {
		return err
	}
	switch a := answer.(type) {
	case *actors.RestartSpreadDone:
		s.log.Info().Int("clients_closed", a.Closed).Int("mesh_conns", a.Mesh).
			Dur("elapsed", time.Since(started)).Msg("clients told to reconnect and closed; closing the mesh")
	default:
		s.log.Warn().Str("answer", fmt.Sprint(a)).Msg("the registry did not finish closing clients in time; closing every connection now")
	}

	// 3. The mesh: links first, so that none redials while the peers'
	// connections to us close.
	if s.mesh != nil {
		mesh := s.sys.Root.StopFuture(s.mesh)
		if err := waitOrForce(force, func() { waitUntil(deadline, func() { mesh.Wait() }) }); err != nil {
			return err
		}
	}
	if s.verify != nil {
		// Nothing new is accepted: the lookups are over, bar those of
		// handshakes in progress, which are refused or failed open.
		s.verify.verifier.Stop()
	}
	// Flushing, so the peers get the last departures queued for them.
	s.sys.Send(s.sys.Registry, &actors.CloseAll{Reason: "server shutting down", Flush: true})

	// 4. The last connections and requests, then the journal (-record).
	defer s.closeRecording()
	return waitOrForce(force, func() {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		var wg sync.WaitGroup
		for _, srv := range servers {
			wg.Go(func() {
				if srv.Shutdown(ctx) != nil {
					srv.Close() // requests still running at the deadline
				}
			})
		}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for s.sys.Stats.CurrentConns.Load() > 0 {
			select {
			case <-ctx.Done():
				s.log.Warn().Int64("conns", s.sys.Stats.CurrentConns.Load()).Msg("connections still open at exit")
				wg.Wait()
				return
			case <-tick.C:
			}
		}
		wg.Wait()
		s.log.Info().Dur("elapsed", time.Since(started)).Msg("shutdown complete")
	})
}

// waitOrForce runs wait, and returns when it does, or at once with
// errSecondSignal when a signal arrives on force first (wait then goes on
// in the background, which is fine: the process is about to exit).
func waitOrForce(force <-chan os.Signal, wait func()) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait()
	}()
	select {
	case <-done:
		return nil
	case <-force:
		return errSecondSignal
	}
}

// waitUntil runs wait, giving up on it at deadline.
func waitUntil(deadline time.Time, wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait()
	}()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
