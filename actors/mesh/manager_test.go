package mesh

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
)

// fakeResolver answers from whatever the test set last.
type fakeResolver struct {
	addrs []netip.Addr
	err   error
	asked int
}

func (r *fakeResolver) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	r.asked++
	if network != "ip" || host != "derp.svc" {
		return nil, fmt.Errorf("asked for %s %q", network, host)
	}
	return r.addrs, r.err
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func (h *linkHarness) links() []string {
	h.t.Helper()
	res, err := h.d.Ask(h.sys, h.pid, &GetLinks{})
	if err != nil {
		h.t.Fatal(err)
	}
	var names []string
	for _, l := range res.(*Links).Links {
		names = append(names, l.Name)
	}
	return names
}

// The manager keeps one link per -mesh-with entry and one per address of
// the -mesh-dns name, adds and removes links as the answer changes, in
// address order, and keeps what it has when a lookup fails or answers
// nothing.
func TestManagerFollowsDNS(t *testing.T) {
	h := newLinkHarness(t)
	dialed := map[string]int{}
	h.cfg.testDial = func(ctx context.Context, tg Target, _ uint64, finish func(*peerConn, error)) {
		dialed[tg.Name]++
		// Every dial ends when cancelled, as a real one does; a link
		// being stopped waits for that.
		go func() {
			<-ctx.Done()
			finish(nil, ctx.Err())
		}()
	}
	res := &fakeResolver{addrs: addrs("10.0.0.2", "10.0.0.1", "10.0.0.2")}
	static, err := ParseMeshWith("derp9.example.com")
	if err != nil {
		t.Fatal(err)
	}
	h.pid = SpawnManager(h.sys, h.cfg, static, &DNS{Name: "derp.svc", Port: 443, Interval: 30 * time.Second, Resolver: res, syncLookup: true})
	h.d.RunUntilIdle()
	want := "[derp.svc/10.0.0.1 derp.svc/10.0.0.2 derp9.example.com]"
	if got := fmt.Sprint(h.links()); got != want {
		t.Fatalf("links %s, want %s", got, want)
	}
	if fmt.Sprint(dialed) != "map[derp.svc/10.0.0.1:1 derp.svc/10.0.0.2:1 derp9.example.com:1]" {
		t.Fatalf("dialed %v", dialed)
	}

	// Nothing happens before the interval is up.
	h.advance(29 * time.Second)
	if res.asked != 1 {
		t.Fatalf("asked %d times before the interval", res.asked)
	}
	res.addrs = addrs("10.0.0.2", "10.0.0.3")
	h.advance(time.Second)
	if got, want := fmt.Sprint(h.links()), "[derp.svc/10.0.0.2 derp.svc/10.0.0.3 derp9.example.com]"; got != want {
		t.Fatalf("after the answer changed: links %s, want %s", got, want)
	}

	// A failed lookup, and then an empty answer, change nothing.
	res.err = errors.New("SERVFAIL")
	h.advance(30 * time.Second)
	res.err, res.addrs = nil, nil
	h.advance(30 * time.Second)
	if got, want := fmt.Sprint(h.links()), "[derp.svc/10.0.0.2 derp.svc/10.0.0.3 derp9.example.com]"; got != want {
		t.Fatalf("after a failed lookup: links %s, want %s", got, want)
	}
	if res.asked != 4 {
		t.Fatalf("asked %d times, want 4", res.asked)
	}
	f := h.sys.Root.RequestFuture(h.pid, &GetLinks{}, time.Minute)
	h.d.RunUntilIdle()
	r, _ := f.Result()
	if d := r.(*Links).DNS; d == nil || d.LastError == "" || fmt.Sprint(d.Answer) != "[10.0.0.2 10.0.0.3]" {
		t.Fatalf("DNS state %+v", d)
	}

	// Stopping the manager stops every link and the lookups.
	h.sys.Root.Stop(h.pid)
	h.d.RunUntilIdle()
	if n := h.clock.Pending(); n != 0 {
		t.Fatalf("%d timers pending after the manager stopped", n)
	}
}

func TestNoManagerWithoutPeers(t *testing.T) {
	sys := actors.NewSystem(zeroLog())
	if pid := SpawnManager(sys, &Config{}, nil, nil); pid != nil {
		t.Fatalf("spawned %v with nothing to mesh with", pid)
	}
}
