package sim

import (
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
)

// scheduler runs every actor of the simulated region, one mailbox run per
// step, in an order drawn from the seed.
//
// It is not actors.StepDispatcher, whose shuffle picks an index into the
// work in the order it was scheduled: any fan-out that posts in Go map
// order (the registry's fan-outs are sorted now, but nothing keeps every
// future one so) would make the interleaving differ from run to run, and
// a failing seed would not reproduce. Here each actor's work is filed
// under a name the simulation gave it (node and connection), and a step
// picks among the names in sorted order: the same seed gives the same
// steps whatever order a fan-out posted in.
type scheduler struct {
	mu    sync.Mutex
	ready map[string][]func()
	rng   *rand.Rand
	names []string // scratch for step
}

func newScheduler(rng *rand.Rand) *scheduler {
	return &scheduler{ready: make(map[string][]func()), rng: rng}
}

// dispatcher is one name's protoactor dispatcher.
func (s *scheduler) dispatcher(name string) *namedDispatcher {
	return &namedDispatcher{s: s, name: name}
}

type namedDispatcher struct {
	s    *scheduler
	name string
}

// Schedule implements actor.Dispatcher.
func (d *namedDispatcher) Schedule(fn func()) {
	d.s.mu.Lock()
	d.s.ready[d.name] = append(d.s.ready[d.name], fn)
	d.s.mu.Unlock()
}

// Throughput implements actor.Dispatcher. (protoactor's mailbox runs
// until it is empty whatever this says; it only yields the goroutine.)
func (d *namedDispatcher) Throughput() int { return 300 }

// pending reports whether any actor has work.
func (s *scheduler) pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ready) > 0
}

// step runs one mailbox, chosen by the seed among those with work, and
// returns its name ("" when none had work).
func (s *scheduler) step() string {
	s.mu.Lock()
	if len(s.ready) == 0 {
		s.mu.Unlock()
		return ""
	}
	s.names = s.names[:0]
	for n := range s.ready {
		s.names = append(s.names, n)
	}
	slices.Sort(s.names)
	name := s.names[s.rng.IntN(len(s.names))]
	q := s.ready[name]
	fn := q[0]
	if len(q) == 1 {
		delete(s.ready, name)
	} else {
		s.ready[name] = q[1:]
	}
	s.mu.Unlock()
	fn()
	return name
}

// discard forgets the work of every name that starts with prefix: a
// node's process ended, and its actors with it.
func (s *scheduler) discard(prefix string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.ready {
		if strings.HasPrefix(name, prefix) {
			delete(s.ready, name)
		}
	}
}
