package actors

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
)

// tally is a toy actor: "inc" counts, "boom" panics halfway through a
// change, "get" answers the count.
type tally struct {
	n, recovered int
}

func (c *tally) Receive(ctx actor.Context) {
	switch ctx.Message() {
	case "inc":
		c.n++
	case "boom":
		c.n = -1 // the broken state a panic leaves behind
		panic("boom")
	case "get":
		ctx.Respond(c.n)
	}
}

type recoveringCounter struct{ tally }

func (c *recoveringCounter) Recover(ctx actor.Context, reason any) {
	c.n = 0 // a known state
	c.recovered++
}

func steppedWithLog(t *testing.T) (*System, *StepDispatcher, *bytes.Buffer) {
	var logs bytes.Buffer
	d := NewStepDispatcher()
	sys := NewSystem(zerolog.New(&logs), WithDispatcher(d), WithClock(NewFakeClock(time.Unix(0, 0))))
	return sys, d, &logs
}

func TestActorPanicIsLoggedCountedAndRecovered(t *testing.T) {
	sys, d, logs := steppedWithLog(t)
	a := &recoveringCounter{}
	props, _ := sys.Props(ActorFlows, func() actor.Actor { return a })
	pid := sys.Root.Spawn(props)
	sys.Send(pid, "inc")
	sys.Send(pid, "boom")
	sys.Send(pid, "inc")
	got, err := d.Ask(sys, pid, "get")
	if err != nil {
		t.Fatal(err)
	}
	// The message after the panic sees the recovered state, not the one
	// the panic left (protoactor's restart would have kept n = -1).
	if got != 1 || a.recovered != 1 {
		t.Fatalf("after inc, boom, inc: count %v, recovered %d times; want 1 and 1", got, a.recovered)
	}
	if n := sys.Kind(ActorFlows).Panics(); n != 1 {
		t.Fatalf("%d panics counted, want 1", n)
	}
	line := logs.String()
	if !strings.Contains(line, `"level":"error"`) || !strings.Contains(line, `"panic":"boom"`) || !strings.Contains(line, "panics_test.go") {
		t.Fatalf("panic not logged as an error with its stack: %s", line)
	}
	if live := sys.Kind(ActorFlows).Live(); live != 1 {
		t.Fatalf("%d flows actors live after a recovered panic, want 1", live)
	}
}

func TestActorPanicWithoutRecoverStopsTheActor(t *testing.T) {
	sys, d, _ := steppedWithLog(t)
	props, _ := sys.Props(ActorRejects, func() actor.Actor { return &tally{} })
	pid := sys.Root.Spawn(props)
	d.RunUntilIdle()
	sys.Send(pid, "boom")
	d.RunUntilIdle()
	if live := sys.Kind(ActorRejects).Live(); live != 0 {
		t.Fatalf("%d rejects actors live after an unrecoverable panic, want 0", live)
	}
	if _, err := d.Ask(sys, pid, "get"); err == nil {
		t.Fatal("a stopped actor answered")
	}
	if n := sys.Kind(ActorRejects).Panics(); n != 1 {
		t.Fatalf("%d panics counted, want 1", n)
	}
}

type failingRecover struct{ tally }

func (c *failingRecover) Recover(actor.Context, any) { panic("worse") }

func TestActorPanicInRecoverStopsTheActor(t *testing.T) {
	sys, d, logs := steppedWithLog(t)
	props, _ := sys.Props(ActorMesh, func() actor.Actor { return &failingRecover{} })
	pid := sys.Root.Spawn(props)
	sys.Send(pid, "boom")
	d.RunUntilIdle()
	if live := sys.Kind(ActorMesh).Live(); live != 0 {
		t.Fatalf("%d actors live after Recover panicked, want 0", live)
	}
	if !strings.Contains(logs.String(), "panicked again while recovering") {
		t.Fatalf("second panic not logged: %s", logs.String())
	}
}
