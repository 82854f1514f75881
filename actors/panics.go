package actors

import (
	"fmt"
	"runtime/debug"

	"github.com/asynkron/protoactor-go/actor"
)

// Recoverer is an actor that can put itself back in a known state after
// a panic in its Receive. Without it, an actor that panics is stopped.
//
// protoactor's own answer to a panic is to restart the actor from its
// producer and carry on, logging at a level derpd demotes to debug. That
// is wrong twice here: derpd's producers return the one instance they
// were built with, so the "restarted" actor keeps the state that made it
// panic, and nobody hears of it. panicGuard catches the panic first.
type Recoverer interface {
	// Recover runs in the actor's own context, right after the panic;
	// the message that caused it is dropped. It must not trust the
	// actor's state: it is there to bring the actor (and whatever depends
	// on it) to a state known to be sound. If Recover panics too, the
	// actor is stopped.
	Recover(ctx actor.Context, reason any)
}

// panicGuard is the outermost receiver middleware of every derpd actor:
// a panic in the actor (or in any middleware below) is logged as an
// error with its stack, counted for the kind (derpd_actor_panics), and
// handed to the actor's Recover, or stops the actor.
func (s *System) panicGuard(kind ActorKind, ks *KindStats) actor.ReceiverMiddleware {
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(rctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			defer func() {
				reason := recover()
				if reason == nil {
					return
				}
				ks.panics.Add(1)
				s.Log.Error().Str("actor", rctx.Self().Id).Str("kind", string(kind)).
					Str("message", fmt.Sprintf("%T", env.Message)).Str("panic", fmt.Sprint(reason)).
					Str("stack", string(debug.Stack())).Msg("actor panicked")
				s.recoverActor(rctx, kind, reason)
			}()
			next(rctx, env)
		}
	}
}

// recoverActor brings a panicked actor to a known state.
func (s *System) recoverActor(rctx actor.ReceiverContext, kind ActorKind, reason any) {
	ctx, ok := rctx.(actor.Context)
	if !ok {
		return // never so for protoactor's contexts; nothing else to do
	}
	if r, ok := ctx.Actor().(Recoverer); ok {
		if s.tryRecover(ctx, r, reason) {
			return
		}
	}
	s.Log.Error().Str("actor", ctx.Self().Id).Str("kind", string(kind)).Msg("stopping the actor after a panic")
	ctx.Stop(ctx.Self())
}

// tryRecover calls r.Recover and reports whether it returned normally.
func (s *System) tryRecover(ctx actor.Context, r Recoverer, reason any) (ok bool) {
	defer func() {
		if again := recover(); again != nil {
			s.Log.Error().Str("actor", ctx.Self().Id).Str("panic", fmt.Sprint(again)).
				Str("stack", string(debug.Stack())).Msg("actor panicked again while recovering")
			ok = false
		}
	}()
	r.Recover(ctx, reason)
	return true
}
