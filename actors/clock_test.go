package actors

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestFakeClockRunsTimersInDueOrder(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewFakeClock(start)
	var got []string
	note := func(s string) func() {
		return func() { got = append(got, fmt.Sprintf("%s@%v", s, c.Now().Sub(start))) }
	}
	c.AfterFunc(3*time.Second, note("c"))
	c.AfterFunc(time.Second, note("a"))
	c.AfterFunc(time.Second, note("b")) // same instant: in the order set
	stopped := c.AfterFunc(2*time.Second, note("never"))
	c.AfterFunc(time.Second, func() {
		// A timer set by a timer fires within the same Advance if due.
		c.AfterFunc(time.Second, note("chained"))
	})
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop must report true once, then false")
	}
	if d, ok := c.NextIn(); !ok || d != time.Second {
		t.Fatalf("NextIn = %v, %v", d, ok)
	}
	c.Advance(2500 * time.Millisecond)
	if want := "[a@1s b@1s chained@2s]"; fmt.Sprint(got) != want {
		t.Fatalf("fired %v, want %s", got, want)
	}
	if c.Now() != start.Add(2500*time.Millisecond) {
		t.Fatalf("now %v", c.Now())
	}
	if c.Pending() != 1 {
		t.Fatalf("%d pending, want 1", c.Pending())
	}
	c.Advance(time.Second)
	if len(got) != 4 || got[3] != "c@3s" {
		t.Fatalf("fired %v", got)
	}
	if _, ok := c.NextIn(); ok {
		t.Fatal("a timer is left")
	}
}

// TestFakeClockReset: Reset moves a pending timer to d from now, and
// re-arms one that has fired, which then fires again, once.
func TestFakeClockReset(t *testing.T) {
	c := NewFakeClock(time.Unix(0, 0))
	var fired []time.Duration
	var tm Timer
	tm = c.AfterFunc(time.Second, func() { fired = append(fired, c.Now().Sub(time.Unix(0, 0))) })
	c.Advance(500 * time.Millisecond)
	if !tm.Reset(time.Second) {
		t.Fatal("Reset of a pending timer reported it was not pending")
	}
	c.Advance(time.Second - time.Nanosecond)
	if len(fired) != 0 {
		t.Fatalf("fired at %v, before its reset due time", fired)
	}
	c.Advance(time.Nanosecond)
	if tm.Reset(2 * time.Second) {
		t.Fatal("Reset of a fired timer reported it was pending")
	}
	c.Advance(10 * time.Second)
	want := []time.Duration{1500 * time.Millisecond, 3500 * time.Millisecond}
	if !slices.Equal(fired, want) {
		t.Fatalf("fired at %v, want %v", fired, want)
	}
	if c.Pending() != 0 {
		t.Fatalf("%d timers pending after the last fired", c.Pending())
	}
}
