// Package actortest holds what the actor packages' tests share beyond
// actors.NewSteppedSystem: for now, a way to make any actor panic on
// demand, so that tests can check how each recovers.
package actortest

import (
	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
)

// Boom makes the actor it is sent to panic, in a system started
// WithBoom, as a fault in its Receive would.
type Boom struct{}

// WithBoom installs the middleware that turns a Boom into a panic. It
// runs inside derpd's panic guard, exactly where an actor's own panic
// would happen.
func WithBoom() actors.Option {
	return actors.WithReceiverMiddleware(func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if _, ok := env.Message.(*Boom); ok {
				panic("actortest: boom")
			}
			next(ctx, env)
		}
	})
}
