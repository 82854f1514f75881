package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/actors/verify"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// tailscaledAdmitter is -verify-clients: a non-mesh client is admitted
// only if the local tailscaled knows its node key, as upstream's. The
// verify actor asks tailscaled and caches; this decides what its verdict
// means, -verify-clients-fail-open included, and counts it.
type tailscaledAdmitter struct {
	verifier *verify.Verifier
	failOpen bool
	// failOpenLog is sampled: in a storm with tailscaled down, one line
	// per client admitted unverified would drown the log (the verify
	// actor logs the outage itself; derpd_verify_fail_open_admissions
	// counts every one).
	failOpenLog zerolog.Logger
}

func startTailscaledAdmitter(opts *options, sys *actors.System, log zerolog.Logger) *tailscaledAdmitter {
	socket := opts.socketPath
	if socket == "" {
		socket = verify.DefaultSocket()
	}
	log.Info().Str("socket", socket).Bool("fail_open", opts.verifyClientsFailOpen).
		Msg("-verify-clients: admitting only node keys the local tailscaled knows")
	return &tailscaledAdmitter{
		verifier:    verify.Spawn(sys, verify.Config{Tailscaled: verify.NewLocalAPI(socket, 0)}),
		failOpen:    opts.verifyClientsFailOpen,
		failOpenLog: log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second}),
	}
}

// then returns an Admit function that asks tailscaled first and, if it
// admits, next (upstream's order with -verify-client-url; nil: nothing
// more to ask).
func (a *tailscaledAdmitter) then(next func(context.Context, wire.NodePublic, netip.AddrPort) error) func(context.Context, wire.NodePublic, netip.AddrPort) error {
	return func(ctx context.Context, key wire.NodePublic, addr netip.AddrPort) error {
		if err := a.admit(ctx, key); err != nil {
			return err
		}
		if next != nil {
			return next(ctx, key, addr)
		}
		return nil
	}
}

// The refusals' words are what /debug/rejects and the log show.
func (a *tailscaledAdmitter) admit(ctx context.Context, key wire.NodePublic) error {
	c := a.verifier.Counters
	v := a.verifier.Lookup(ctx, key)
	switch {
	case v.Err != nil:
		c.Errors.Add(1)
		if a.failOpen {
			c.FailOpen.Add(1)
			a.failOpenLog.Warn().Err(v.Err).Str("key", key.String()).
				Msg("admitting a client the local tailscaled could not verify (-verify-clients-fail-open); further ones are counted, not logged, for 10s")
			return nil
		}
		return fmt.Errorf("%w: could not verify with the local tailscaled: %v", client.ErrRejected, v.Err)
	case !v.Known:
		c.Refused.Add(1)
		return fmt.Errorf("%w: not known to the local tailscaled", client.ErrRejected)
	}
	c.Admitted.Add(1)
	return nil
}
