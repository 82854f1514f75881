package actors

import (
	"strings"
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
)

func TestStatsPrometheusHasUpstreamSeries(t *testing.T) {
	var s Stats
	s.Drop(DropQueueHead, KindOther, 100)
	s.Drop(DropQueueHead, KindOther, 50)
	s.NoteBatch(3)
	s.NoteBatch(40)
	var b strings.Builder
	s.WritePrometheus(&b)
	out := b.String()
	for _, want := range []string{
		`derp_packets_dropped{kind="other",reason="queue_head"} 2`,
		`derp_bytes_dropped{kind="other",reason="queue_head"} 150`,
		`derp_packets_dropped{kind="disco",reason="unknown_dest_on_fwd"} 0`,
		`derp_buffered_write_frames_bucket{le="3"} 1`,
		`derp_buffered_write_frames_bucket{le="50"} 2`,
		`derp_buffered_write_frames_count 2`,
		"derp_current_connections 0",
		"derp_packets_forwarded_in 0",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %q", want)
		}
	}
	// All 14 reason×kind series exist for both families from the start.
	if n := strings.Count(out, "derp_packets_dropped{"); n != 14 {
		t.Errorf("%d derp_packets_dropped series, want 14", n)
	}
}

// counter is an actor that counts its messages.
type counter struct{ n *int }

func (c counter) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(int); ok {
		*c.n++
	}
}

func TestStepDispatcherRunsNothingUntilAsked(t *testing.T) {
	d := NewStepDispatcher()
	sys := NewSystem(zerolog.Nop(), WithDispatcher(d))
	n := 0
	props, _ := sys.Props(ActorFlows, func() actor.Actor { return counter{&n} })
	pid := sys.Root.Spawn(props)
	d.RunUntilIdle()
	for i := range 5 {
		sys.Send(pid, i)
	}
	if n != 0 || d.Pending() == 0 {
		t.Fatalf("messages processed (%d) before the test ran the dispatcher", n)
	}
	d.RunUntilIdle()
	if n != 5 || d.Pending() != 0 {
		t.Fatalf("processed %d, pending %d", n, d.Pending())
	}
}

func TestShuffledStepDispatcherIsReproducible(t *testing.T) {
	order := func(seed uint64) string {
		d := NewShuffledStepDispatcher(seed)
		var b strings.Builder
		for i := range 10 {
			d.Schedule(func() { b.WriteByte(byte('a' + i)) })
		}
		d.RunUntilIdle()
		return b.String()
	}
	if order(3) != order(3) {
		t.Fatal("same seed, different order")
	}
	if order(3) == order(4) && order(4) == order(5) {
		t.Fatal("seeds do not change the order")
	}
}

// Each actor's mailbox counts and its kind's sums, live actors included,
// on a step dispatcher: posted messages wait until the test runs them.
func TestMailboxStats(t *testing.T) {
	d := NewStepDispatcher()
	sys := NewSystem(zerolog.Nop(), WithDispatcher(d))
	var n int
	props, st := sys.Props(ActorFlows, func() actor.Actor { return counter{&n} })
	pid := sys.Root.Spawn(props)
	d.RunUntilIdle()
	kind := sys.Kind(ActorFlows)
	if kind.Live() != 1 {
		t.Fatalf("%d live, want 1", kind.Live())
	}
	base := st.Processed()
	for range 3 {
		sys.Send(pid, 1)
	}
	if st.Depth() != 3 || kind.Depth() != 3 {
		t.Fatalf("depth %d (kind %d) with three messages waiting", st.Depth(), kind.Depth())
	}
	d.RunUntilIdle()
	if st.Depth() != 0 || st.Processed() != base+3 || n != 3 {
		t.Fatalf("depth %d processed %d (from %d) received %d", st.Depth(), st.Processed(), base, n)
	}
	sys.Root.Stop(pid)
	d.RunUntilIdle()
	if kind.Live() != 0 {
		t.Fatalf("%d live after the actor stopped", kind.Live())
	}
	if c := (*MailboxStats)(nil).Counts(); c != (MailboxCounts{}) {
		t.Fatalf("nil counts %+v", c)
	}
}
