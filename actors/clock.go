package actors

import (
	"slices"
	"sync"
	"time"
)

// Clock is where actors read the time and set timers. Production code uses
// RealClock; tests pass a FakeClock and move time themselves, so a test of
// a reconnect backoff or a periodic lookup waits for nothing and gives the
// same answer on every run.
//
// Timers fire by calling a function, which by convention only sends a
// message to an actor: what a timer means is decided in the actor's
// mailbox, in order with everything else it receives.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once, after d, on a goroutine of the clock's
	// choosing.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc.
type Timer interface {
	// Stop cancels the timer and reports whether it had not fired yet.
	Stop() bool
	// Reset makes the timer fire d from now, whether or not it had
	// fired or been stopped, and reports whether it was pending. A
	// periodic timer (a keepalive) re-arms itself this way without a
	// new allocation.
	Reset(d time.Duration) bool
}

// RealClock is the wall clock.
var RealClock Clock = realClock{}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// FakeClock is a Clock that stands still until Advance moves it. Due
// timers run inside Advance, on the caller's goroutine, in the order they
// are due (timers due at the same instant in the order they were set).
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	seq    uint64
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *FakeClock
	when time.Time
	seq  uint64
	f    func()
	done bool // fired or stopped; guarded by c.mu
}

// NewFakeClock returns a clock reading start.
func NewFakeClock(start time.Time) *FakeClock { return &FakeClock{now: start} }

// Now implements Clock.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc implements Clock.
func (c *FakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &fakeTimer{c: c, when: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.done {
		return false
	}
	t.done = true
	t.c.timers = slices.DeleteFunc(t.c.timers, func(x *fakeTimer) bool { return x == t })
	return true
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	pending := !t.done
	if pending {
		c.timers = slices.DeleteFunc(c.timers, func(x *fakeTimer) bool { return x == t })
	}
	c.seq++
	t.when, t.seq, t.done = c.now.Add(d), c.seq, false
	c.timers = append(c.timers, t)
	return pending
}

// Advance moves the clock forward by d, running every timer that falls
// due on the way, each with the clock reading its due time. A timer set by
// a function that runs here fires in the same Advance if it falls due
// within it.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	for {
		i := c.nextDue(end)
		if i < 0 {
			break
		}
		t := c.timers[i]
		c.timers = slices.Delete(c.timers, i, i+1)
		t.done = true
		c.now = t.when
		c.mu.Unlock()
		t.f()
		c.mu.Lock()
	}
	c.now = end
	c.mu.Unlock()
}

// nextDue returns the index of the earliest timer due by end, or -1.
func (c *FakeClock) nextDue(end time.Time) int {
	best := -1
	for i, t := range c.timers {
		if t.when.After(end) {
			continue
		}
		if best < 0 || t.when.Before(c.timers[best].when) ||
			(t.when.Equal(c.timers[best].when) && t.seq < c.timers[best].seq) {
			best = i
		}
	}
	return best
}

// Pending reports how many timers wait to fire.
func (c *FakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// NextIn reports how long until the earliest pending timer is due, and
// whether there is one.
func (c *FakeClock) NextIn() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return 0, false
	}
	first := c.timers[0].when
	for _, t := range c.timers[1:] {
		if t.when.Before(first) {
			first = t.when
		}
	}
	return first.Sub(c.now), true
}
