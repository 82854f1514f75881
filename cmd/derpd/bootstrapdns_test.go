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
