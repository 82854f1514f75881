package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/derpd/derpd/wire"
)

// fakeTailscaled serves the two LocalAPI calls on a unix socket the way
// tailscaled does: its guard on Host, Referer and Origin, its status
// codes and error texts, and answers shaped like its own (indented, with
// fields derpd does not read).
type fakeTailscaled struct {
	self  wire.NodePublic
	peers []wire.NodePublic
	// old: answer whois as a tailscaled that predates whois by node key,
	// which parses addr as an IP or IP:port and nothing else.
	old bool
	// hang: never answer, until the test ends.
	hang bool
	// fail: answer every call with this status.
	fail int
	// malformed: take every key for a malformed one.
	malformed bool
	// whoisKey, when set, is the key every whois answers about.
	whoisKey wire.NodePublic

	calls atomic.Int64
}

func (f *fakeTailscaled) serve(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tailscaled.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		f.handle(w, r, done)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() {
		close(done)
		srv.Close()
	})
	return path
}

func (f *fakeTailscaled) handle(w http.ResponseWriter, r *http.Request, done <-chan struct{}) {
	if r.Referer() != "" || r.Header.Get("Origin") != "" || (r.Host != "" && r.Host != "local-tailscaled.sock") {
		http.Error(w, "invalid localapi request", http.StatusForbidden)
		return
	}
	if f.hang {
		select {
		case <-r.Context().Done():
		case <-done:
		}
		return
	}
	if f.fail != 0 {
		http.Error(w, "backend in a bad way", f.fail)
		return
	}
	switch r.URL.Path {
	case "/localapi/v0/whois":
		f.whois(w, r)
	case "/localapi/v0/status":
		f.status(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeTailscaled) whois(w http.ResponseWriter, r *http.Request) {
	v := r.FormValue("addr")
	if v == "" {
		http.Error(w, "missing 'addr' parameter", http.StatusBadRequest)
		return
	}
	if f.old || !strings.HasPrefix(v, "nodekey:") {
		if _, err := netip.ParseAddr(v); err != nil {
			if _, err := netip.ParseAddrPort(v); err != nil {
				http.Error(w, "invalid 'addr' parameter", http.StatusBadRequest)
				return
			}
		}
		http.Error(w, "no match for IP:port", http.StatusNotFound)
		return
	}
	k, err := wire.ParseNodePublic(v)
	if err != nil || f.malformed {
		http.Error(w, "invalid nodekey in 'addr' parameter", http.StatusBadRequest)
		return
	}
	if !f.knows(k) {
		http.Error(w, "no match for IP:port", http.StatusNotFound)
		return
	}
	if !f.whoisKey.IsZero() {
		k = f.whoisKey
	}
	answer := map[string]any{
		"Node": map[string]any{"ID": 7, "StableID": "nX", "Name": "peer.tail.ts.net.", "Key": k.String(),
			"Addresses": []string{"100.64.0.7/32"}, "Hostinfo": map[string]any{"OS": "linux"}},
		"UserProfile": map[string]any{"ID": 1, "LoginName": "someone@example.com", "DisplayName": "Someone"},
		"CapMap":      map[string]any{},
	}
	writeJSON(w, answer)
}

func (f *fakeTailscaled) status(w http.ResponseWriter, r *http.Request) {
	peer := func(k wire.NodePublic, i int) map[string]any {
		return map[string]any{"ID": fmt.Sprint(i), "PublicKey": k.String(), "HostName": fmt.Sprint("host", i),
			"TailscaleIPs": []string{"100.64.0.1"}, "Online": true, "Tags": []string{"tag:a", "tag:b"},
			"Addrs": nil, "RxBytes": 12, "Capabilities": []string{"x"}, "CapMap": map[string]any{"a": nil}}
	}
	st := map[string]any{
		"Version":        "1.40.0-test",
		"TUN":            true,
		"BackendState":   "Running",
		"TailscaleIPs":   []string{"100.64.0.1"},
		"Self":           peer(f.self, 0),
		"Health":         []string{},
		"MagicDNSSuffix": "tail.ts.net",
		"CurrentTailnet": map[string]any{"Name": "example.com"},
		"User":           map[string]any{"1": map[string]any{"ID": 1, "LoginName": "someone@example.com"}},
	}
	if r.FormValue("peers") != "false" {
		peers := map[string]any{}
		for i, k := range f.peers {
			peers[k.String()] = peer(k, i+1)
		}
		st["Peer"] = peers
	}
	writeJSON(w, st)
}

func (f *fakeTailscaled) knows(k wire.NodePublic) bool {
	if k == f.self {
		return true
	}
	for _, p := range f.peers {
		if p == k {
			return true
		}
	}
	return false
}

// writeJSON indents, as tailscaled does.
func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func testKey(b byte) wire.NodePublic {
	var k wire.NodePublic
	k[0], k[31] = b, 0x5a
	return k
}

func newFake() *fakeTailscaled {
	return &fakeTailscaled{self: testKey(1), peers: []wire.NodePublic{testKey(2), testKey(3)}}
}

func TestLocalAPIWhoIsOnANewTailscaled(t *testing.T) {
	f := newFake()
	c := NewLocalAPI(f.serve(t), 0)
	ctx := context.Background()
	for _, k := range []wire.NodePublic{testKey(1), testKey(2), testKey(3)} {
		if known, err := c.WhoIsNodeKey(ctx, k); !known || err != nil {
			t.Errorf("%s: known=%v err=%v, want known", k.ShortString(), known, err)
		}
	}
	if known, err := c.WhoIsNodeKey(ctx, testKey(9)); known || err != nil {
		t.Errorf("unknown key: known=%v err=%v, want not known and no error", known, err)
	}
	if n := f.calls.Load(); n != 4 {
		t.Errorf("%d calls, want 4", n)
	}
}

// A tailscaled from before whois by node key answers 400 "invalid 'addr'
// parameter"; its status still lists every peer by node key.
func TestLocalAPIOnAnOldTailscaled(t *testing.T) {
	f := newFake()
	f.old = true
	c := NewLocalAPI(f.serve(t), 0)
	ctx := context.Background()
	if _, err := c.WhoIsNodeKey(ctx, testKey(2)); !errors.Is(err, ErrWhoIsUnsupported) {
		t.Fatalf("whois on an old tailscaled: %v, want ErrWhoIsUnsupported", err)
	}
	st, err := c.Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.Self != testKey(1) || st.BackendState != "Running" || len(st.Peers) != 2 {
		t.Fatalf("status: %+v", st)
	}
	for k, want := range map[wire.NodePublic]bool{testKey(1): true, testKey(2): true, testKey(3): true, testKey(9): false} {
		if st.Knows(k) != want {
			t.Errorf("status knows %s = %v, want %v", k.ShortString(), !want, want)
		}
	}
}

func TestLocalAPIStatusWithoutPeers(t *testing.T) {
	f := newFake()
	c := NewLocalAPI(f.serve(t), 0)
	st, err := c.Status(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if st.Self != testKey(1) || st.Peers != nil {
		t.Fatalf("status without peers: self %s, %d peers", st.Self.ShortString(), len(st.Peers))
	}
}

// What a new tailscaled answers for a malformed key, "invalid nodekey in
// 'addr' parameter", is an error, not the sign of an old one.
func TestLocalAPIMalformedKeyIsNotAnOldTailscaled(t *testing.T) {
	f := newFake()
	f.malformed = true
	_, err := NewLocalAPI(f.serve(t), 0).WhoIsNodeKey(context.Background(), testKey(2))
	if err == nil || errors.Is(err, ErrWhoIsUnsupported) || !strings.Contains(err.Error(), "invalid nodekey") {
		t.Fatalf("whois answered 400 invalid nodekey: %v, want an error of its own", err)
	}
}

func TestLocalAPIFailures(t *testing.T) {
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "no", "tailscaled.sock")
	if _, err := NewLocalAPI(missing, 0).WhoIsNodeKey(ctx, testKey(2)); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing socket: %v, want an error naming the socket", err)
	}

	hang := newFake()
	hang.hang = true
	c := NewLocalAPI(hang.serve(t), 50*time.Millisecond)
	if _, err := c.WhoIsNodeKey(ctx, testKey(2)); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer within") {
		t.Errorf("whois of a hung tailscaled: %v, want a timeout", err)
	}
	if _, err := c.Status(ctx, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("status of a hung tailscaled: %v, want a timeout", err)
	}

	for _, code := range []int{500, 503, 403} {
		f := newFake()
		f.fail = code
		c := NewLocalAPI(f.serve(t), 0)
		if known, err := c.WhoIsNodeKey(ctx, testKey(2)); known || err == nil || !strings.Contains(err.Error(), fmt.Sprint(code)) {
			t.Errorf("whois answered %d: known=%v err=%v", code, known, err)
		}
		if _, err := c.Status(ctx, true); err == nil || !strings.Contains(err.Error(), "backend in a bad way") {
			t.Errorf("status answered %d: %v", code, err)
		}
	}

	// A 200 about another key is no yes.
	other := newFake()
	other.whoisKey = testKey(3)
	if known, err := NewLocalAPI(other.serve(t), 0).WhoIsNodeKey(ctx, testKey(2)); known || err == nil {
		t.Errorf("whois answered about another key: known=%v err=%v", known, err)
	}

	// Answers beyond the limits.
	big := newFake()
	for i := range 200 {
		big.peers = append(big.peers, testKey(byte(10+i)))
	}
	c = NewLocalAPI(big.serve(t), 0)
	c.maxStatus, c.maxWhoIs = 4<<10, 100
	if _, err := c.Status(ctx, true); !errors.Is(err, errAnswerTooLarge) {
		t.Errorf("status over its limit: %v", err)
	}
	if _, err := c.WhoIsNodeKey(ctx, testKey(2)); !errors.Is(err, errAnswerTooLarge) {
		t.Errorf("whois over its limit: %v", err)
	}
	c.maxStatus, c.maxWhoIs = maxStatusAnswer, maxWhoIsAnswer
	if st, err := c.Status(ctx, true); err != nil || len(st.Peers) != 202 {
		t.Errorf("the same status within the limit: %v", err)
	}
}

func TestDecodeStatus(t *testing.T) {
	for _, c := range []struct {
		in    string
		peers int
		err   bool
	}{
		{`{"Self":{"PublicKey":"` + testKey(1).String() + `"},"Peer":null}`, 0, false},
		{`{"Self":null,"BackendState":"NeedsLogin"}`, 0, false},
		{`{"Peer":{"` + testKey(2).String() + `":{"A":[1,{"b":[]}]},"` + testKey(3).String() + `":null},"X":[[],{}]}`, 2, false},
		{`{"Peer":{"nodekey:12":{}}}`, 0, true},
		{`{"Peer":[]}`, 0, true},
		{`{"Self":{"PublicKey":"nope"}}`, 0, true},
		{`{"Self":`, 0, true},
		{`[]`, 0, true},
		{`{"Peer":{"` + testKey(2).String() + `":[]}}`, 0, true},
	} {
		st, err := decodeStatus(json.NewDecoder(strings.NewReader(c.in)), true)
		if (err != nil) != c.err {
			t.Errorf("%s: error %v, want error %v", c.in, err, c.err)
			continue
		}
		if err == nil && len(st.Peers) != c.peers {
			t.Errorf("%s: %d peers, want %d", c.in, len(st.Peers), c.peers)
		}
	}
}

func TestDefaultSocket(t *testing.T) {
	if _, err := os.Stat("/var/run"); err == nil && runtime.GOOS == "linux" {
		if got := DefaultSocket(); got != "/var/run/tailscale/tailscaled.sock" {
			t.Errorf("DefaultSocket() = %q on a Linux host with /var/run", got)
		}
	}
}
