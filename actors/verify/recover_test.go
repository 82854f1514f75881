package verify

import (
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/actortest"
)

// TestVerifyRecoversFromAPanic: the cache is dropped (so tailscaled is
// asked again), a lookup still queued gets an error at once rather than
// waiting out the handshake, and a call under way still answers its own.
func TestVerifyRecoversFromAPanic(t *testing.T) {
	h := newHarness(t, Config{MaxCalls: 1}, actortest.WithBoom())
	cached, running, queued := testKey(1), testKey(2), testKey(3)
	h.ts.known[cached], h.ts.known[running] = true, true
	h.ask(cached, false)
	h.finishCalls()
	if v := h.answer(cached); !v.Cached {
		t.Fatalf("before the panic: %+v, want a cached answer", v)
	}
	inFlight, waiting := h.ask(running, false), h.ask(queued, false)

	h.sys.Send(h.v.PID(), &actortest.Boom{})
	h.d.RunUntilIdle()

	if n := h.sys.Kind(actors.ActorVerify).Panics(); n != 1 {
		t.Fatalf("%d panics", n)
	}
	if v := only(t, waiting); v.Err == nil {
		t.Fatalf("queued lookup after the recovery: %+v, want an error", v)
	}
	h.finishCalls()
	if v := only(t, inFlight); !v.Known {
		t.Fatalf("the call under way answered %+v", v)
	}
	again := h.ask(cached, false)
	if len(again.verdicts()) != 0 {
		t.Fatal("answered from a cache that should be gone")
	}
	h.finishCalls()
	if v := only(t, again); !v.Known || v.Cached {
		t.Fatalf("after the recovery: %+v, want a fresh answer", v)
	}
}
