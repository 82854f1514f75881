package verify

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// stubTailscaled answers from a map, counting what it was asked.
type stubTailscaled struct {
	mu          sync.Mutex
	known       map[wire.NodePublic]bool
	self        wire.NodePublic
	old         bool  // predates whois by node key
	err         error // every call fails with it
	whoisCalls  []wire.NodePublic
	statusCalls int
}

func (s *stubTailscaled) WhoIsNodeKey(_ context.Context, k wire.NodePublic) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.whoisCalls = append(s.whoisCalls, k)
	switch {
	case s.err != nil:
		return false, s.err
	case s.old:
		return false, ErrWhoIsUnsupported
	}
	return s.known[k], nil
}

func (s *stubTailscaled) Status(_ context.Context, peers bool) (*Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statusCalls++
	if s.err != nil {
		return nil, s.err
	}
	st := &Status{BackendState: "Running", Self: s.self}
	if peers {
		st.Peers = map[wire.NodePublic]struct{}{}
		for k, ok := range s.known {
			if ok {
				st.Peers[k] = struct{}{}
			}
		}
	}
	return st, nil
}

func (s *stubTailscaled) counts() (whois, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.whoisCalls), s.statusCalls
}

// inbox is a process that keeps what is sent to it: the verdicts a
// handshake would wait for, readable without blocking.
type inbox struct {
	mu  sync.Mutex
	got []*Verdict
}

func (b *inbox) SendUserMessage(_ *actor.PID, m any) {
	_, msg, _ := actor.UnwrapEnvelope(m)
	b.mu.Lock()
	b.got = append(b.got, msg.(*Verdict))
	b.mu.Unlock()
}
func (b *inbox) SendSystemMessage(*actor.PID, any) {}
func (b *inbox) Stop(*actor.PID)                   {}

func (b *inbox) verdicts() []*Verdict {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Verdict(nil), b.got...)
}

type harness struct {
	t     *testing.T
	sys   *actors.System
	d     *actors.StepDispatcher
	clock *actors.FakeClock
	ts    *stubTailscaled
	v     *Verifier
	calls []func() // LocalAPI calls started and not yet run
	log   *bytes.Buffer
}

var epoch = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, cfg Config, opts ...actors.Option) *harness {
	h := &harness{t: t, ts: &stubTailscaled{known: map[wire.NodePublic]bool{}}, log: new(bytes.Buffer)}
	h.d, h.clock = actors.NewStepDispatcher(), actors.NewFakeClock(epoch)
	opts = append([]actors.Option{actors.WithDispatcher(h.d), actors.WithClock(h.clock)}, opts...)
	h.sys = actors.NewSystem(zerolog.New(h.log).Level(zerolog.InfoLevel), opts...)
	cfg.Tailscaled = h.ts
	cfg.runCall = func(call func()) { h.calls = append(h.calls, call) }
	h.v = Spawn(h.sys, cfg)
	h.d.RunUntilIdle()
	return h
}

// ask sends Verify for key and runs the actor; the verdict, once there is
// one, is in the inbox returned.
func (h *harness) ask(key wire.NodePublic, fresh bool) *inbox {
	b := &inbox{}
	pid, _ := h.sys.Actors.ProcessRegistry.Add(b, h.sys.Actors.ProcessRegistry.NextId())
	h.sys.Root.RequestWithCustomSender(h.v.PID(), &Verify{Key: key, Fresh: fresh}, pid)
	h.d.RunUntilIdle()
	return b
}

// answer asks and requires an answer at once.
func (h *harness) answer(key wire.NodePublic) *Verdict {
	h.t.Helper()
	got := h.ask(key, false).verdicts()
	if len(got) != 1 {
		h.t.Fatalf("%s: %d verdicts at once, want 1", key.ShortString(), len(got))
	}
	return got[0]
}

// finishCalls runs the calls started so far (not those they lead to) and
// the actor, and returns how many ran.
func (h *harness) finishCalls() int {
	calls := h.calls
	h.calls = nil
	for _, c := range calls {
		c()
	}
	h.d.RunUntilIdle()
	return len(calls)
}

func (h *harness) state() *State {
	h.t.Helper()
	res, err := h.d.Ask(h.sys, h.v.PID(), &GetState{})
	if err != nil {
		h.t.Fatal(err)
	}
	return res.(*State)
}

func only(t *testing.T, b *inbox) *Verdict {
	t.Helper()
	got := b.verdicts()
	if len(got) != 1 {
		t.Fatalf("%d verdicts, want 1", len(got))
	}
	return got[0]
}

func TestVerifyCachesEachAnswerForItsTTL(t *testing.T) {
	h := newHarness(t, Config{})
	known, unknown := testKey(1), testKey(2)
	h.ts.known[known] = true

	a, b := h.ask(known, false), h.ask(unknown, false)
	if len(a.verdicts())+len(b.verdicts()) != 0 {
		t.Fatal("answered before tailscaled was asked")
	}
	if n := h.finishCalls(); n != 2 {
		t.Fatalf("%d calls, want 2", n)
	}
	if v := only(t, a); !v.Known || v.Err != nil || v.Cached {
		t.Fatalf("known key: %+v", v)
	}
	if v := only(t, b); v.Known || v.Err != nil {
		t.Fatalf("unknown key: %+v", v)
	}

	// The negative answer expires first, so a node just added gets in.
	h.clock.Advance(DefaultNegativeTTL - time.Nanosecond)
	if v := h.answer(known); !v.Known || !v.Cached {
		t.Fatalf("known key, cached: %+v", v)
	}
	if v := h.answer(unknown); v.Known || !v.Cached {
		t.Fatalf("unknown key, cached: %+v", v)
	}
	h.clock.Advance(time.Nanosecond)
	h.ts.known[unknown] = true
	pending := h.ask(unknown, false)
	if h.finishCalls() != 1 || !only(t, pending).Known {
		t.Fatal("an expired negative answer was not asked again")
	}

	h.clock.Advance(DefaultPositiveTTL - DefaultNegativeTTL - time.Nanosecond)
	if v := h.answer(known); !v.Cached {
		t.Fatalf("known key before its TTL: %+v", v)
	}
	h.clock.Advance(time.Nanosecond)
	pending = h.ask(known, false)
	if h.finishCalls() != 1 || !only(t, pending).Known {
		t.Fatal("an expired positive answer was not asked again")
	}
	if whois, _ := h.ts.counts(); whois != 4 {
		t.Fatalf("%d whois calls, want 4", whois)
	}
	c := h.v.Counters
	if c.CacheHits.Load() != 3 || c.WhoIsCalls.Load() != 4 || c.Entries.Load() != 2 {
		t.Fatalf("counters: hits %d, calls %d, entries %d", c.CacheHits.Load(), c.WhoIsCalls.Load(), c.Entries.Load())
	}
}

// A storm of lookups of one key is one call; of many keys, at most
// MaxCalls calls at once, the rest queued in order.
func TestVerifyCoalescesAndBoundsCalls(t *testing.T) {
	h := newHarness(t, Config{MaxCalls: 4})
	k := testKey(1)
	h.ts.known[k] = true
	var waiting []*inbox
	for range 100 {
		waiting = append(waiting, h.ask(k, false))
	}
	if n := h.finishCalls(); n != 1 {
		t.Fatalf("100 lookups of one key made %d calls, want 1", n)
	}
	for _, b := range waiting {
		if v := only(t, b); !v.Known {
			t.Fatalf("a shared lookup answered %+v", v)
		}
	}

	waiting = waiting[:0]
	for i := range 10 {
		waiting = append(waiting, h.ask(testKey(byte(10+i)), false), h.ask(testKey(byte(10+i)), false))
	}
	if st := h.state(); st.Calls != 4 || st.Queued != 6 {
		t.Fatalf("with 10 keys asked: %d calls running, %d queued; want 4 and 6", st.Calls, st.Queued)
	}
	rounds := 0
	for len(h.calls) > 0 {
		if len(h.calls) > 4 {
			t.Fatalf("%d calls at once, more than MaxCalls", len(h.calls))
		}
		h.finishCalls()
		rounds++
	}
	if rounds != 3 {
		t.Fatalf("10 keys took %d rounds of calls, want 3 (4, 4, 2)", rounds)
	}
	for _, b := range waiting {
		if v := only(t, b); v.Known || v.Err != nil {
			t.Fatalf("unknown key answered %+v", v)
		}
	}
	h.ts.mu.Lock()
	order := h.ts.whoisCalls[1:]
	h.ts.mu.Unlock()
	for i, k := range order {
		if k != testKey(byte(10+i)) {
			t.Fatalf("call %d was for %s: not first come, first served", i, k.ShortString())
		}
	}
}

func TestVerifyBounds(t *testing.T) {
	h := newHarness(t, Config{MaxEntries: 3, MaxCalls: 1, MaxQueued: 2})
	for i := range 4 {
		h.ask(testKey(byte(i)), false)
		h.finishCalls()
	}
	if st := h.state(); st.Entries != 3 {
		t.Fatalf("%d entries, want MaxEntries 3", st.Entries)
	}
	if v := h.answer(testKey(3)); !v.Cached {
		t.Fatal("the newest answer was evicted")
	}
	h.ask(testKey(0), false) // the oldest was forgotten: asked again
	if h.finishCalls() != 1 {
		t.Fatal("the oldest answer was not the one evicted")
	}

	running := h.ask(testKey(20), false)
	q1, q2 := h.ask(testKey(21), false), h.ask(testKey(22), false)
	if v := only(t, h.ask(testKey(23), false)); !errors.Is(v.Err, ErrTooManyWaiting) {
		t.Fatalf("a lookup beyond MaxQueued: %+v", v)
	}
	// Joining a queued lookup of the same key is not a new one.
	joined := h.ask(testKey(22), false)
	for len(h.calls) > 0 {
		h.finishCalls()
	}
	for _, b := range []*inbox{running, q1, q2, joined} {
		if v := only(t, b); v.Err != nil {
			t.Fatalf("queued lookup: %+v", v)
		}
	}
}

// A tailscaled that predates whois by node key is asked for its status
// instead, once for every lookup waiting and once per StatusTTL, and
// asked whois again after WhoIsRecheck.
func TestVerifyFallsBackToStatus(t *testing.T) {
	h := newHarness(t, Config{MaxCalls: 2})
	h.ts.old = true
	h.ts.self = testKey(1)
	h.ts.known[testKey(2)] = true
	h.ts.known[testKey(3)] = true
	a, b, c := h.ask(testKey(1), false), h.ask(testKey(2), false), h.ask(testKey(9), false)
	if n := h.finishCalls(); n != 2 {
		t.Fatalf("%d whois calls at first, want MaxCalls 2", n)
	}
	// Both came back unsupported: the queued lookup of testKey(9) joined
	// the one status call.
	if len(h.calls) != 1 {
		t.Fatalf("%d calls after the fallback, want one status", len(h.calls))
	}
	h.finishCalls()
	for i, want := range []bool{true, true, false} {
		if v := only(t, []*inbox{a, b, c}[i]); v.Known != want || v.Err != nil {
			t.Fatalf("lookup %d after the fallback: %+v, want known=%v", i, v, want)
		}
	}
	if whois, status := h.ts.counts(); whois != 2 || status != 1 {
		t.Fatalf("%d whois and %d status calls, want 2 and 1", whois, status)
	}
	if st := h.state(); !st.StatusFallback || st.StatusKeys != 2 || !h.v.Counters.StatusFallback.Load() {
		t.Fatalf("state after the fallback: %+v", st)
	}

	// Keys not asked about yet are answered from the same status.
	if v := h.answer(testKey(3)); !v.Known || !v.Cached {
		t.Fatalf("a key in the last status: %+v", v)
	}
	h.clock.Advance(DefaultStatusTTL)
	h.ts.known[testKey(4)] = true
	pending := h.ask(testKey(4), false)
	if len(h.calls) != 1 {
		t.Fatal("no new status once the last one expired")
	}
	h.finishCalls()
	if !only(t, pending).Known {
		t.Fatal("a node added since the last status was refused")
	}
	if whois, status := h.ts.counts(); whois != 2 || status != 2 {
		t.Fatalf("%d whois and %d status calls, want 2 and 2", whois, status)
	}

	// Upgraded under us: whois is tried again after WhoIsRecheck.
	h.ts.old = false
	h.clock.Advance(DefaultWhoIsRecheck)
	pending = h.ask(testKey(5), false)
	h.finishCalls()
	if v := only(t, pending); v.Known || v.Err != nil {
		t.Fatalf("after the recheck: %+v", v)
	}
	if whois, status := h.ts.counts(); whois != 3 || status != 2 {
		t.Fatalf("after the recheck: %d whois and %d status calls, want 3 and 2", whois, status)
	}
	if h.state().StatusFallback {
		t.Fatal("still falling back to status on an upgraded tailscaled")
	}
}

// A failing tailscaled fails the lookups waiting and, for ErrorBackoff,
// those the cache cannot answer, without being asked; the cache still
// answers. A storm of failures is one log line, then one per
// errorLogEvery.
func TestVerifyErrorsBackOffAndAreLoggedSparingly(t *testing.T) {
	h := newHarness(t, Config{MaxCalls: 1})
	good := testKey(1)
	h.ts.known[good] = true
	h.ask(good, false)
	h.finishCalls()

	down := errors.New("dial unix /run/tailscale/tailscaled.sock: connect: no such file or directory")
	h.ts.err = down
	first, queued := h.ask(testKey(2), false), h.ask(testKey(3), false)
	h.finishCalls()
	for _, b := range []*inbox{first, queued} {
		if v := only(t, b); !errors.Is(v.Err, down) {
			t.Fatalf("a lookup while tailscaled is down: %+v", v)
		}
	}
	if whois, _ := h.ts.counts(); whois != 2 {
		t.Fatalf("%d whois calls, want 2: the queued lookup should fail with the running one", whois)
	}
	for range 1000 {
		if v := h.answer(testKey(4)); !errors.Is(v.Err, down) {
			t.Fatalf("a lookup in the backoff: %+v", v)
		}
	}
	if v := h.answer(good); !v.Known {
		t.Fatalf("a cached key while tailscaled is down: %+v", v)
	}
	if whois, _ := h.ts.counts(); whois != 2 {
		t.Fatalf("%d whois calls: the backoff let lookups through", whois)
	}
	if n := strings.Count(h.log.String(), "\n"); n != 1 {
		t.Fatalf("%d log lines for one outage, want 1:\n%s", n, h.log)
	}

	// Still down after the backoff: asked again; a line every
	// errorLogEvery, not per failure.
	for range 3 {
		h.clock.Advance(DefaultErrorBackoff)
		h.ask(testKey(5), false)
		h.finishCalls()
	}
	if n := strings.Count(h.log.String(), "\n"); n != 1 {
		t.Fatalf("%d log lines, want still 1:\n%s", n, h.log)
	}
	h.clock.Advance(errorLogEvery)
	h.ask(testKey(5), false)
	h.finishCalls()
	if n := strings.Count(h.log.String(), "still not answering"); n != 1 {
		t.Fatalf("no periodic line while down:\n%s", h.log)
	}

	h.ts.err = nil
	h.clock.Advance(DefaultErrorBackoff)
	pending := h.ask(testKey(5), false)
	h.finishCalls()
	if v := only(t, pending); v.Err != nil {
		t.Fatalf("after tailscaled came back: %+v", v)
	}
	if !strings.Contains(h.log.String(), "tailscaled answering again") || !h.state().Healthy {
		t.Fatalf("recovery not logged:\n%s", h.log)
	}
	if e := h.v.Counters.WhoIsErrors.Load(); e != 5 {
		t.Fatalf("%d whois errors counted, want 5", e)
	}
}

// Fresh asks tailscaled whatever the cache and the backoff say.
func TestVerifyFreshAsksAgain(t *testing.T) {
	h := newHarness(t, Config{})
	k := testKey(1)
	h.ts.known[k] = true
	h.ask(k, false)
	h.finishCalls()
	delete(h.ts.known, k)
	pending := h.ask(k, true)
	if h.finishCalls() != 1 || only(t, pending).Known {
		t.Fatal("a fresh lookup was answered from the cache")
	}
	h.ts.err = errors.New("down")
	h.ask(testKey(2), false)
	h.finishCalls()
	h.ts.err = nil
	pending = h.ask(testKey(2), true)
	if h.finishCalls() != 1 || only(t, pending).Err != nil {
		t.Fatal("a fresh lookup was answered from the backoff")
	}
}

// Through the Verifier, on real goroutines, against a fake tailscaled on
// a socket: the whole path a handshake and /debug/check take.
func TestVerifierAgainstLocalAPI(t *testing.T) {
	for _, old := range []bool{false, true} {
		f := newFake()
		f.old = old
		v := Spawn(actors.NewSystem(zerolog.Nop()), Config{Tailscaled: NewLocalAPI(f.serve(t), 0)})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if got := v.Lookup(ctx, testKey(2)); !got.Known || got.Err != nil {
			t.Errorf("old=%v: a peer: %+v", old, got)
		}
		if got := v.Lookup(ctx, testKey(9)); got.Known || got.Err != nil {
			t.Errorf("old=%v: a stranger: %+v", old, got)
		}
		if err := v.CheckSelf(ctx); err != nil {
			t.Errorf("old=%v: CheckSelf: %v", old, err)
		}
		cancel()
		v.Stop()
	}

	f := newFake()
	f.hang = true
	v := Spawn(actors.NewSystem(zerolog.Nop()), Config{Tailscaled: NewLocalAPI(f.serve(t), 50*time.Millisecond)})
	if err := v.CheckSelf(context.Background()); err == nil || !strings.Contains(err.Error(), "status") {
		t.Errorf("CheckSelf of a hung tailscaled: %v", err)
	}
	if got := v.Lookup(context.Background(), testKey(2)); !errors.Is(got.Err, context.DeadlineExceeded) {
		t.Errorf("a lookup on a hung tailscaled: %+v", got)
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if got := v.Lookup(ctx, testKey(2)); got.Err == nil {
		t.Error("a lookup with no time left answered")
	}
}

// tailscaled that is logged out has no key to check.
func TestCheckSelfWithoutANodeKey(t *testing.T) {
	ts := &stubTailscaled{}
	v := Spawn(actors.NewSystem(zerolog.Nop()), Config{Tailscaled: ts})
	if err := v.CheckSelf(context.Background()); err == nil || !strings.Contains(err.Error(), "no node key") {
		t.Fatalf("CheckSelf without a node key: %v", err)
	}
	ts.self = testKey(1)
	if err := v.CheckSelf(context.Background()); err == nil || !strings.Contains(err.Error(), "does not know its own key") {
		t.Fatalf("CheckSelf of a key tailscaled does not know: %v", err)
	}
}
