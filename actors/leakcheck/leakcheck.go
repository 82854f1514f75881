// Package leakcheck is a test helper: it proves that nothing a test
// started outlives it, no goroutine and no actor. A connection that
// leaves a reader, a writer or its client actor behind costs a relay
// memory for ever, one connection at a time, which no functional test
// notices.
//
// Take a snapshot once the server is up, close the connections, then
// Check; or let Verify do both around the rest of the test:
//
//	s := startTestServer(t, …)
//	leakcheck.Verify(t, leakcheck.System(s.sys))
//	… connect, relay, disconnect …
//
// Goroutines are told apart by their ids, which the runtime never reuses,
// so one that ended cannot hide one that leaked. Only goroutines started
// after the snapshot count: whatever ran before it (the server, the test
// framework) is the baseline.
package leakcheck

import (
	"bytes"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
)

// Wait bounds how long Check waits for goroutines and actors to go. It is
// a failure deadline, not a measured time: a connection's goroutines end
// within milliseconds of its socket closing.
const Wait = 15 * time.Second

// ActorCounts reports how many actors of each kind are running.
type ActorCounts func() (map[actors.ActorKind]int64, error)

// Option adjusts a snapshot.
type Option func(*Snapshot)

// System counts sys's live actors by kind (actors.System.Kind).
func System(sys *actors.System) Option {
	return Actors(func() (map[actors.ActorKind]int64, error) {
		m := make(map[actors.ActorKind]int64, len(actors.ActorKinds))
		for _, k := range actors.ActorKinds {
			m[k] = sys.Kind(k).Live()
		}
		return m, nil
	})
}

// Actors counts live actors with count, for a server whose System the
// test cannot reach (one started through its command line, whose
// /debug/actors page says).
func Actors(count ActorCounts) Option { return func(s *Snapshot) { s.actors = count } }

// Ignore leaves out goroutines whose stack contains any of substrs: ones
// the test knows to outlive the check for a reason of their own.
func Ignore(substrs ...string) Option {
	return func(s *Snapshot) { s.ignore = append(s.ignore, substrs...) }
}

// alwaysIgnored are goroutines that end on their own within a bounded
// time whatever the test does. protoactor counts dead letters (a message
// to an actor that just stopped, routine as connections close) in
// periods of DeadLetterThrottleInterval, one goroutine per period, which
// sleeps the period out: waiting for it would only make every check a
// second longer.
var alwaysIgnored = []string{"protoactor-go/actor.NewDeadLetter.NewThrottle"}

// Snapshot is what ran when it was taken.
type Snapshot struct {
	goroutines  map[uint64]bool
	count       int // runtime.NumGoroutine at the snapshot
	actors      ActorCounts
	actorCounts map[actors.ActorKind]int64
	ignore      []string
}

// Take records the goroutines and actors running now.
func Take(tb testing.TB, opts ...Option) *Snapshot {
	tb.Helper()
	s := &Snapshot{goroutines: map[uint64]bool{}, ignore: slices.Clone(alwaysIgnored)}
	for _, o := range opts {
		o(s)
	}
	for _, g := range goroutines() {
		s.goroutines[g.id] = true
	}
	s.count = runtime.NumGoroutine()
	if s.actors != nil {
		m, err := s.actors()
		if err != nil {
			tb.Fatalf("leakcheck: counting actors: %v", err)
		}
		s.actorCounts = m
	}
	return s
}

// Verify takes a snapshot now and checks it when the test ends. Cleanups
// run last-in first-out, so the check comes after every cleanup the test
// registers later: its connections and servers are closed by then.
func Verify(tb testing.TB, opts ...Option) *Snapshot {
	tb.Helper()
	s := Take(tb, opts...)
	tb.Cleanup(func() {
		if !tb.Failed() { // a failed test leaves things behind by design
			s.Check(tb)
		}
	})
	return s
}

// Baseline is runtime.NumGoroutine when the snapshot was taken.
func (s *Snapshot) Baseline() int { return s.count }

// Check waits, up to Wait, until every goroutine started since the
// snapshot has ended and the actor counts are back where they were, and
// fails tb with the stacks of the goroutines that remain and the counts
// that differ if they do not.
func (s *Snapshot) Check(tb testing.TB) {
	tb.Helper()
	if err := s.Wait(Wait); err != nil {
		tb.Fatalf("leakcheck: %v", err)
	}
}

// Wait is Check returning what remains instead of failing a test.
func (s *Snapshot) Wait(limit time.Duration) error {
	// The wall clock, not a System's: what it waits for is real
	// goroutines winding down on the scheduler, which no fake clock moves.
	deadline := time.Now().Add(limit)
	pause := time.Millisecond
	for {
		leaked := s.leaked()
		counts, countErr := s.actorDiff()
		if len(leaked) == 0 && counts == "" && countErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			if countErr != nil {
				fmt.Fprintf(&b, "counting actors: %v; ", countErr)
			}
			if counts != "" {
				fmt.Fprintf(&b, "live actors differ from the snapshot: %s; ", counts)
			}
			fmt.Fprintf(&b, "%d goroutines started since the snapshot still run (%d now, %d at the snapshot)",
				len(leaked), runtime.NumGoroutine(), s.count)
			for _, g := range leaked[:min(len(leaked), 10)] {
				fmt.Fprintf(&b, "\n\n%s", g.stack)
			}
			if len(leaked) > 10 {
				fmt.Fprintf(&b, "\n\n… and %d more", len(leaked)-10)
			}
			return fmt.Errorf("%s", b.String())
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// leaked lists the goroutines that started after the snapshot, the
// ignored ones and the caller's own aside.
func (s *Snapshot) leaked() []goroutine {
	var out []goroutine
	for _, g := range goroutines() {
		if s.goroutines[g.id] || g.current || s.ignored(g.stack) {
			continue
		}
		out = append(out, g)
	}
	return out
}

func (s *Snapshot) ignored(stack string) bool {
	for _, sub := range s.ignore {
		if strings.Contains(stack, sub) {
			return true
		}
	}
	return false
}

// actorDiff describes the kinds whose live count differs from the
// snapshot's, "" if none does.
func (s *Snapshot) actorDiff() (string, error) {
	if s.actors == nil {
		return "", nil
	}
	now, err := s.actors()
	if err != nil {
		return "", err
	}
	var diffs []string
	for _, k := range slices.Sorted(maps.Keys(joinKeys(now, s.actorCounts))) {
		if now[k] != s.actorCounts[k] {
			diffs = append(diffs, fmt.Sprintf("%s %d (was %d)", k, now[k], s.actorCounts[k]))
		}
	}
	return strings.Join(diffs, ", "), nil
}

func joinKeys(a, b map[actors.ActorKind]int64) map[actors.ActorKind]bool {
	m := map[actors.ActorKind]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

type goroutine struct {
	id      uint64
	current bool // the goroutine that asked for the dump
	stack   string
}

// goroutines parses runtime.Stack's dump of every goroutine: blocks
// separated by blank lines, each opening "goroutine N [state]:". The
// first block is the caller's own.
func goroutines() []goroutine {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []goroutine
	for i, block := range bytes.Split(buf, []byte("\n\n")) {
		head, _, _ := bytes.Cut(block, []byte(" ["))
		id, err := strconv.ParseUint(string(bytes.TrimPrefix(head, []byte("goroutine "))), 10, 64)
		if err != nil {
			continue
		}
		out = append(out, goroutine{id: id, current: i == 0, stack: string(block)})
	}
	return out
}
