package actors

import (
	"math/rand/v2"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
)

// StepDispatcher is a protoactor dispatcher that runs nothing on its own:
// scheduled mailbox work waits in a queue until the caller runs it. Tests
// use it to drive actors one step at a time, with no goroutines racing and
// no sleeps, and replay uses it to reproduce a recorded run exactly.
type StepDispatcher struct {
	mu    sync.Mutex
	queue []func()
	rng   *rand.Rand // nil: run in schedule order
}

// NewStepDispatcher returns a dispatcher that runs work in the order it
// was scheduled.
func NewStepDispatcher() *StepDispatcher { return &StepDispatcher{} }

// NewShuffledStepDispatcher runs ready work in an order drawn from seed, to
// explore interleavings between actors reproducibly.
func NewShuffledStepDispatcher(seed uint64) *StepDispatcher {
	return &StepDispatcher{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Schedule implements actor.Dispatcher.
func (d *StepDispatcher) Schedule(fn func()) {
	d.mu.Lock()
	d.queue = append(d.queue, fn)
	d.mu.Unlock()
}

// Throughput implements actor.Dispatcher: how many messages one scheduled
// run may process before yielding.
func (d *StepDispatcher) Throughput() int { return 300 }

// Step runs one scheduled piece of work and reports whether there was any.
func (d *StepDispatcher) Step() bool {
	d.mu.Lock()
	if len(d.queue) == 0 {
		d.mu.Unlock()
		return false
	}
	i := 0
	if d.rng != nil {
		i = d.rng.IntN(len(d.queue))
	}
	fn := d.queue[i]
	d.queue = append(d.queue[:i], d.queue[i+1:]...)
	d.mu.Unlock()
	fn()
	return true
}

// RunUntilIdle runs work until none is scheduled and returns how many
// steps it took.
func (d *StepDispatcher) RunUntilIdle() int {
	n := 0
	for d.Step() {
		n++
	}
	return n
}

// Pending reports how much work is waiting.
func (d *StepDispatcher) Pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.queue)
}

// NewSteppedSystem is the start of every deterministic actor test: a
// system whose actors run only when the test steps the dispatcher, with
// time that moves only when the test advances the clock (from start).
func NewSteppedSystem(start time.Time, opts ...Option) (*System, *StepDispatcher, *FakeClock) {
	d, clock := NewStepDispatcher(), NewFakeClock(start)
	return NewSystem(zerolog.Nop(), append([]Option{WithDispatcher(d), WithClock(clock)}, opts...)...), d, clock
}

// Ask sends msg to pid as a request, runs every actor until none has work,
// and returns the answer: a query of a stepped system in one call.
func (d *StepDispatcher) Ask(sys *System, pid *actor.PID, msg any) (any, error) {
	f := sys.Root.RequestFuture(pid, msg, time.Minute)
	d.RunUntilIdle()
	return f.Result()
}
