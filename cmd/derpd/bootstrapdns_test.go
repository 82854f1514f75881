package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/rs/zerolog"
)

type fakeResolver struct {
	addrs map[string][]netip.Addr
	txt   map[string][]string
}

func (f *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f.addrs[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func (f *fakeResolver) LookupTXT(_ context.Context, name string) ([]string, error) {
	if t, ok := f.txt[name]; ok {
		return t, nil
	}
	return nil, errors.New("no TXT")
}

func get(t *testing.T, b *bootstrapDNS, url, remote string) map[string][]string {
	t.Helper()
	req := httptest.NewRequest("GET", url, nil)
	req.RemoteAddr = remote
	rec := httptest.NewRecorder()
	b.serveHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	body, _ := io.ReadAll(rec.Body)
	if len(body) == 0 {
		return nil
	}
	var m map[string][]string
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	return m
}

func TestBootstrapDNS(t *testing.T) {
	res := &fakeResolver{
		addrs: map[string][]netip.Addr{
			"controlplane.example.com": {netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")},
			"secret.example.com":       {netip.MustParseAddr("192.0.2.9")},
			"half.example.com":         {netip.MustParseAddr("192.0.2.10")},
			"none.example.com":         {netip.MustParseAddr("192.0.2.11")},
		},
		txt: map[string][]string{"half-pct.example.com": {"50"}, "zero.example.com": {"not a number"}},
	}
	b := newBootstrapDNS("controlplane.example.com, missing.example.com",
		"secret.example.com,half.example.com/half-pct.example.com,none.example.com/zero.example.com", res, zerolog.Nop())
	b.refresh(context.Background())

	pub := get(t, b, "/bootstrap-dns", "198.51.100.1:1")
	if len(pub) != 1 || len(pub["controlplane.example.com"]) != 2 {
		t.Fatalf("published map %v", pub)
	}
	if got := get(t, b, "/bootstrap-dns?q=secret.example.com", "198.51.100.1:1"); len(got) != 1 || got["secret.example.com"][0] != "192.0.2.9" {
		t.Fatalf("unpublished answer %v", got)
	}
	if got := get(t, b, "/bootstrap-dns?q=none.example.com", "198.51.100.1:1"); got["none.example.com"] != nil {
		t.Fatalf("0%% rollout answered: %v", got)
	}
	// 50%: deterministic per client, and about half of many clients.
	in := 0
	for i := range 1000 {
		ip := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		first := inRollout(ip, 50)
		if inRollout(ip, 50) != first {
			t.Fatal("rollout not stable per client")
		}
		if first {
			in++
		}
	}
	if in < 400 || in > 600 {
		t.Fatalf("%d of 1000 clients in a 50%% rollout", in)
	}
	// A failed refresh keeps the old answer.
	delete(res.addrs, "controlplane.example.com")
	b.refresh(context.Background())
	if pub := get(t, b, "/bootstrap-dns", "198.51.100.1:1"); len(pub["controlplane.example.com"]) != 2 {
		t.Fatalf("lost addresses after a failed lookup: %v", pub)
	}
	if b.requests.Load() != 4 || b.unpubHits.Load() != 1 {
		t.Fatalf("requests %d, unpublished hits %d", b.requests.Load(), b.unpubHits.Load())
	}
}

func TestBootstrapDNSUnconfiguredIsEmpty(t *testing.T) {
	b := newBootstrapDNS("", "", &fakeResolver{}, zerolog.Nop())
	b.refresh(context.Background())
	if got := get(t, b, "/bootstrap-dns", "198.51.100.1:1"); got != nil {
		t.Fatalf("got %v, want an empty body", got)
	}
}

// TestRolloutMatchesUpstream pins the rollout draw to upstream derper's.
// Each row is a client address and whether it is in a 1, 10, 25, 50, 75,
// 90 and 99 percent rollout, as derper v1.102.5 answered when these rows
// were recorded; a region mixing derpd and derper must agree on them.
func TestRolloutMatchesUpstream(t *testing.T) {
	percents := []int{1, 10, 25, 50, 75, 90, 99}
	for _, row := range []struct{ addr, in string }{
		{"198.51.100.1", "0111111"},
		{"198.51.100.2", "0000011"},
		{"203.0.113.77", "0001111"},
		{"192.0.2.200", "0000111"},
		{"10.1.2.3", "0011111"},
		{"100.64.0.9", "0000011"},
		{"2001:db8::1", "0011111"},
		{"2001:db8::2", "0011111"},
		{"2001:db8:1234:5678::abcd", "0000111"},
		{"fd7a:115c:a1e0::1", "0000111"},
	} {
		for i, p := range percents {
			want := row.in[i] == '1'
			// IPv4 arrives unmapped or mapped depending on the listener;
			// both must draw the same.
			for _, a := range []netip.Addr{netip.MustParseAddr(row.addr), netip.AddrFrom16(netip.MustParseAddr(row.addr).As16())} {
				if got := inRollout(a, p); got != want {
					t.Errorf("%v in a %d%% rollout: %v, derper says %v", a, p, got, want)
				}
			}
		}
	}
	// Of 198.51.0.0–198.51.3.231, derper puts 497 in a 50% rollout.
	in := 0
	for i := range 1000 {
		if inRollout(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), 50) {
			in++
		}
	}
	if in != 497 {
		t.Errorf("%d of 1000 clients in a 50%% rollout, derper has 497", in)
	}
	if inRollout(netip.Addr{}, 99) {
		t.Error("a request without a parseable address is in a rollout; derper says no")
	}
}

func TestRolloutPercentTXT(t *testing.T) {
	res := &fakeResolver{txt: map[string][]string{
		"many.example.com":   {"10", "junk", "40"},
		"spaced.example.com": {" 50 "},
		"high.example.com":   {"101"},
	}}
	b := newBootstrapDNS("", "", res, zerolog.Nop())
	for name, want := range map[string]int{"many.example.com": 40, "spaced.example.com": 0, "high.example.com": 0, "absent.example.com": 0} {
		if got := b.rolloutPercent(context.Background(), name); got != want {
			t.Errorf("TXT %s: %d%%, want %d%% as derper reads it", name, got, want)
		}
	}
}
