package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/disco"
	"tailscale.com/types/key"
)

// TestMain removes the server binaries the smoke runs built.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.RemoveBinaries()
	os.Exit(code)
}

func rawKey(k key.NodePublic) *[keyLen]byte {
	var b [keyLen]byte
	k.AppendTo(b[:0])
	return &b
}

func TestPacketRoundTrip(t *testing.T) {
	src, dst := key.NewNode().Public(), key.NewNode().Public()
	buf := make([]byte, 1201)
	for i := range 200 {
		discoShaped := i%2 == 0
		kind := destKind(i % 3)
		p := buildPacket(buf, src, dst, kind, discoShaped, 1200, time.Unix(1, 2))
		if got := disco.LooksLikeDiscoWrapper(p); got != discoShaped {
			t.Fatalf("packet %d of %d bytes: looks like disco %v, want %v", i, len(p), got, discoShaped)
		}
		gotKind, sent, gotDisco, err := checkPacket(p, rawKey(dst), src)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if !sent.Equal(time.Unix(1, 2)) {
			t.Fatalf("packet %d: sent at %v, want %v", i, sent, time.Unix(1, 2))
		}
		if gotDisco != discoShaped || gotKind != kind {
			t.Fatalf("packet %d: checkPacket says disco %v kind %v, want %v %v", i, gotDisco, gotKind, discoShaped, kind)
		}
	}
}

func TestPacketCheckCatchesMisdelivery(t *testing.T) {
	src, dst, other := key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public()
	buf := make([]byte, 1201)
	p := buildPacket(buf, src, dst, toLive, false, 1200, time.Now())
	if _, _, _, err := checkPacket(p, rawKey(other), src); err != errWrongDest {
		t.Errorf("delivered to another key: %v, want %v", err, errWrongDest)
	}
	if _, _, _, err := checkPacket(p, rawKey(dst), other); err != errWrongSource {
		t.Errorf("labelled with another source: %v, want %v", err, errWrongSource)
	}
	if _, _, _, err := checkPacket(p[:len(p)-1], rawKey(dst), src); err == nil {
		t.Error("a packet cut short passed")
	}
	d := buildPacket(buf, src, dst, toLive, true, 1200, time.Now())
	d[0] = 'X'
	if _, _, _, err := checkPacket(d, rawKey(dst), src); err != errDiscoChanged {
		t.Errorf("disco header changed: %v, want %v", err, errDiscoChanged)
	}
}

func TestPickDestinations(t *testing.T) {
	var s peers
	var cs []*client
	for range 4 {
		c := &client{pub: key.NewNode().Public(), stall: -1}
		s.add(c)
		cs = append(cs, c)
	}
	for range 100 {
		src, dst, _, kind := s.pick(0, 0)
		if kind != toLive || dst == src.pub {
			t.Fatalf("pick with no shares: %v to itself or kind %v", src.pub.ShortString(), kind)
		}
	}
	if _, _, _, kind := s.pick(1, 0); kind != toLive {
		t.Fatalf("departed share with none departed: kind %v", kind)
	}
	s.stall(cs[1])
	for range 100 {
		src, dst, _, kind := s.pick(0, 1)
		if src != cs[1] && (kind != toStalled || dst != cs[1].pub) {
			t.Fatalf("stalled share 1 picked %v kind %v, want the stalled client", dst.ShortString(), kind)
		}
	}
	gone := cs[2].pub
	s.remove(cs[2])
	s.remove(cs[1]) // stalled: leaves the stalled list too
	if len(s.live) != 2 || len(s.stalled) != 0 {
		t.Fatalf("after two left: %d live, %d stalled", len(s.live), len(s.stalled))
	}
	for i, c := range s.live {
		if c.index != i {
			t.Fatalf("live[%d] has index %d", i, c.index)
		}
	}
	for range 100 {
		_, dst, _, kind := s.pick(1, 0)
		if kind != toDeparted || (dst != gone && dst != cs[1].pub) {
			t.Fatalf("departed share 1: %v kind %v", dst.ShortString(), kind)
		}
	}
}

func TestJudge(t *testing.T) {
	base := look{Conns: 0, Goroutines: 10, Actors: 3, HeapBytes: 4 << 20, RSSBytes: 20 << 20}
	peak := look{Conns: 2000, Goroutines: 4000, Actors: 2003, HeapBytes: 100 << 20, RSSBytes: 200 << 20}
	o := options{goroutineSlack: 5, heapSlack: 8 << 20, rssSlack: 64 << 20}
	verdicts := func(final look) map[string]bool {
		v := map[string]bool{}
		for _, c := range judge(base, peak, final, o) {
			v[c.Name] = c.Pass || c.Skip
		}
		return v
	}
	back := base
	back.Goroutines += 5
	back.HeapBytes += 7 << 20
	for name, ok := range verdicts(back) {
		if !ok {
			t.Errorf("%s failed at baseline plus less than its slack", name)
		}
	}
	for _, tc := range []struct {
		name  string
		leaky func(*look)
	}{
		{"connections", func(l *look) { l.Conns = 1 }},
		{"goroutines", func(l *look) { l.Goroutines = 16 }},
		{"actors", func(l *look) { l.Actors = 4 }},
		{"heap", func(l *look) { l.HeapBytes += 9 << 20 }},
		{"rss", func(l *look) { l.RSSBytes += 65 << 20 }},
	} {
		final := base
		tc.leaky(&final)
		for name, ok := range verdicts(final) {
			if ok == (name == tc.name) {
				t.Errorf("%s leaked: %s check passed %v", tc.name, name, ok)
			}
		}
	}
	// A server without actors skips that check, whatever the rest say.
	noActors := base
	noActors.Actors = -1
	for _, c := range judge(noActors, peak, noActors, o) {
		if c.Name == "actors" && !c.Skip {
			t.Errorf("actors of a server with none: %+v", c)
		}
	}
}

func TestParseGoroutines(t *testing.T) {
	profile := `goroutine profile: total 7
2 @ 0x4 0x5
#	0x47a1b2	runtime.gopark+0xce	/go/src/runtime/proc.go:435
#	0x4b0000	net/http.(*conn).serve+0x1	/go/src/net/http/server.go:1

5 @ 0x1 0x2 0x3
#	0x47a1b2	runtime.gopark+0xce	/go/src/runtime/proc.go:435
#	0x4a0f3c	github.com/derpd/derpd/actors/client.(*Outbox).run+0x9c	/x/outbox.go:10
#	0x4a0f3d	github.com/derpd/derpd/actors/client.Serve+0x10	/x/serve.go:20

`
	gs := parseGoroutines([]byte(profile))
	if len(gs) != 2 || gs[0].Count != 5 || gs[1].Count != 2 {
		t.Fatalf("groups %+v, want 5 then 2", gs)
	}
	if got, want := gs[0].where(), "github.com/derpd/derpd/actors/client.(*Outbox).run ← github.com/derpd/derpd/actors/client.Serve"; got != want {
		t.Errorf("where = %q, want %q", got, want)
	}
}

// smokeOptions is a soak of a few seconds: the whole tool, end to end.
func smokeOptions(t *testing.T) options {
	return options{
		load: load{
			clients: 40, rate: 400, connectRate: 100, senders: 2,
			minLifetime: 500 * time.Millisecond, maxLifetime: 3 * time.Second,
			stallFraction: 0.1, minStall: 200 * time.Millisecond, maxStall: time.Second,
			dupFraction: 0.1, maxDupOverlap: 500 * time.Millisecond,
			departedShare: 0.05, stalledShare: 0.05, discoShare: 0.2, maxSize: 1200,
		},
		duration: 3 * time.Second, warmup: time.Second, interval: time.Second, settle: 10 * time.Second,
		flowsInactive: time.Second, poll: 200 * time.Millisecond,
		goroutineSlack: 5, heapSlack: 4 << 20, rssSlack: 32 << 20,
		outDir: t.TempDir(), text: testWriter{t},
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestSmoke soaks the interop target for a few seconds: clients come and
// go, misbehave, and everything must come back to baseline.
func TestSmoke(t *testing.T) {
	t.Parallel()
	kind := harness.TargetFromEnv()
	r, err := soak(context.Background(), kind, smokeOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	summary(testWriter{t}, r)
	for _, c := range r.Checks {
		if !c.Pass && !c.Skip {
			t.Errorf("%s: %s", c.Name, c.Detail)
		}
	}
	if c := r.Counts; c.Connects < 40 || c.Sent == 0 || c.Delivered == 0 || c.DupConnects == 0 || c.Stalls == 0 {
		t.Errorf("the load did not do what it should: %+v", c)
	}
}

// TestLeakCaught holds a connection open past the load: the soak must
// say the server did not come back to baseline, and fail.
func TestLeakCaught(t *testing.T) {
	t.Parallel()
	kind := harness.TargetFromEnv()
	o := smokeOptions(t)
	o.clients, o.duration, o.warmup, o.settle = 10, time.Second, 0, time.Second
	o.holdOpen = 1
	r, err := soak(context.Background(), kind, o)
	if err != nil {
		t.Fatal(err)
	}
	failed := map[string]bool{}
	for _, c := range r.Checks {
		if !c.Pass && !c.Skip {
			failed[c.Name] = true
		}
	}
	want := []string{"connections"}
	if kind == harness.Derpd {
		want = append(want, "actors")
	}
	for _, name := range want {
		if !failed[name] {
			t.Errorf("a connection held open: the %s check passed", name)
		}
	}
	if !r.Failed() {
		t.Error("a connection held open: the soak passed")
	}
}
