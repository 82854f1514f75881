package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/derpd/derpd/wire"
)

// localTailscaled is a stand-in for the tailscaled beside derpd: whois by
// node key and status, on a unix socket, over a set of keys the test
// edits.
type localTailscaled struct {
	socket string
	self   wire.NodePublic
	mu     sync.Mutex
	known  map[wire.NodePublic]bool
}

func startLocalTailscaled(t *testing.T) *localTailscaled {
	t.Helper()
	lt := &localTailscaled{
		socket: filepath.Join(t.TempDir(), "tailscaled.sock"),
		self:   wire.GenerateNodePrivate().Public(),
		known:  map[wire.NodePublic]bool{},
	}
	ln, err := net.Listen("unix", lt.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(lt.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return lt
}

func (lt *localTailscaled) add(k wire.NodePublic) {
	lt.mu.Lock()
	lt.known[k] = true
	lt.mu.Unlock()
}

func (lt *localTailscaled) serve(w http.ResponseWriter, r *http.Request) {
	if r.Host != "local-tailscaled.sock" {
		http.Error(w, "invalid localapi request", http.StatusForbidden)
		return
	}
	switch r.URL.Path {
	case "/localapi/v0/status":
		fmt.Fprintf(w, `{"BackendState":"Running","Self":{"PublicKey":%q},"Peer":null}`, lt.self)
	case "/localapi/v0/whois":
		k, err := wire.ParseNodePublic(r.FormValue("addr"))
		if err != nil {
			http.Error(w, "invalid nodekey in 'addr' parameter", http.StatusBadRequest)
			return
		}
		lt.mu.Lock()
		known := lt.known[k] || k == lt.self
		lt.mu.Unlock()
		if !known {
			http.Error(w, "no match for IP:port", http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"Node": map[string]any{"Key": k}, "UserProfile": map[string]any{}})
	default:
		http.NotFound(w, r)
	}
}

// derpConnect connects to derpd's /derp with key and info and reports
// whether the server admitted it (ServerInfo) or closed the connection.
func derpConnect(t *testing.T, base string, priv wire.NodePrivate, info wire.ClientInfo) bool {
	t.Helper()
	host := strings.TrimPrefix(base, "http://")
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET /derp HTTP/1.1\r\nHost: %s\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n", host)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", res, err)
	}
	rd := wire.NewReader(br, nil, 1<<20)
	read := func() (wire.FrameType, []byte, error) {
		typ, n, err := rd.ReadHeader()
		if err != nil {
			return 0, nil, err
		}
		body := make([]byte, n)
		return typ, body, rd.ReadFull(body)
	}
	typ, body, err := read()
	if err != nil || typ != wire.FrameServerKey {
		t.Fatalf("first frame %v: %v", typ, err)
	}
	server, err := wire.ParseServerKey(body)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := wire.AppendClientInfo(nil, priv, server, info)
	if err != nil {
		t.Fatal(err)
	}
	w := wire.NewWriter(c, 0)
	w.WriteFrame(wire.FrameClientInfo, ci, nil)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	typ, _, err = read()
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("neither admitted nor refused: %v", err)
		}
		return false // closed: refused
	}
	if typ != wire.FrameServerInfo {
		t.Fatalf("frame after ClientInfo: %v, want ServerInfo", typ)
	}
	return true
}

// rejectDetail is what /debug/rejects says about key, or "".
func rejectDetail(t *testing.T, p *inProcess, key wire.NodePublic) string {
	t.Helper()
	_, body := getBody(t, p.debugBase+"/debug/rejects?format=json")
	var v rejectsView
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("/debug/rejects: %v\n%s", err, body)
	}
	for _, r := range v.Rejects {
		if r.Peer == key.String() {
			return r.Reason + ": " + r.Detail
		}
	}
	return ""
}

var plainClient = wire.ClientInfo{Version: 2, CanAckPings: true}

// A client whose key the local tailscaled knows is admitted; one whose key
// it does not is refused, and /debug/rejects says why; a mesh peer is not
// asked about. /debug/check asks tailscaled about its own key.
func TestVerifyClientsAdmitsOnlyKeysTailscaledKnows(t *testing.T) {
	lt := startLocalTailscaled(t)
	meshKey := strings.Repeat("5a", 32)
	pskFile := filepath.Join(t.TempDir(), "mesh.key")
	if err := os.WriteFile(pskFile, []byte(meshKey), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startInProcess(t, "-verify-clients", "-socket", lt.socket, "-mesh-psk-file", pskFile)

	member, stranger, peer := wire.GenerateNodePrivate(), wire.GenerateNodePrivate(), wire.GenerateNodePrivate()
	lt.add(member.Public())
	if !derpConnect(t, p.base, member, plainClient) {
		t.Error("a key tailscaled knows was refused")
	}
	if derpConnect(t, p.base, stranger, plainClient) {
		t.Error("a key tailscaled does not know was admitted")
	}
	if got := rejectDetail(t, p, stranger.Public()); !strings.Contains(got, "admission_denied") || !strings.Contains(got, "not known to the local tailscaled") {
		t.Errorf("/debug/rejects on the refused key: %q", got)
	}
	mk, _ := wire.ParseMeshKey(meshKey)
	if !derpConnect(t, p.base, peer, wire.ClientInfo{Version: 2, MeshKey: mk}) {
		t.Error("a mesh peer was refused: it should not be asked about")
	}

	res, body := getBody(t, p.debugBase+"/debug/check")
	if res.StatusCode != 200 {
		t.Errorf("/debug/check: %s %s", res.Status, body)
	}
	_, varz := getBody(t, p.debugBase+"/debug/varz")
	for _, want := range []string{
		`derpd_verify_lookups{result="admitted"} 1`, `derpd_verify_lookups{result="refused"} 1`,
		`derpd_verify_lookups{result="error"} 0`, `derpd_verify_localapi_calls{call="whois"} 3`,
		`derpd_verify_localapi_calls{call="status"} 1`, "derpd_admission_rejected 1",
		"# HELP derpd_verify_lookups ", "# HELP derpd_verify_fail_open_admissions ",
		"# HELP derpd_verify_cache_hits ", "# HELP derpd_verify_cache_entries ",
		"# HELP derpd_verify_localapi_calls ", "# HELP derpd_verify_localapi_errors ",
		"# HELP derpd_verify_status_fallback ",
	} {
		if !strings.Contains(varz, want) {
			t.Errorf("/debug/varz lacks %q", want)
		}
	}
	_, actorsBody := getBody(t, p.debugBase+"/debug/actors?format=json")
	var av actorsView
	json.Unmarshal([]byte(actorsBody), &av)
	found := false
	for _, a := range av.Actors {
		found = found || (a.Kind == "verify" && a.Answered)
	}
	if !found {
		t.Errorf("/debug/actors has no verify actor that answered:\n%s", actorsBody)
	}
}

// With tailscaled not there, clients are refused saying so, unless
// -verify-clients-fail-open; /debug/check reports it either way.
func TestVerifyClientsWhenTailscaledIsDown(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "tailscaled.sock")
	for _, failOpen := range []bool{false, true} {
		p := startInProcess(t, "-verify-clients", "-socket", missing, fmt.Sprintf("-verify-clients-fail-open=%v", failOpen))
		key := wire.GenerateNodePrivate()
		if got := derpConnect(t, p.base, key, plainClient); got != failOpen {
			t.Errorf("fail-open %v: admitted=%v", failOpen, got)
		}
		if !failOpen {
			if got := rejectDetail(t, p, key.Public()); !strings.Contains(got, "could not verify with the local tailscaled") || !strings.Contains(got, missing) {
				t.Errorf("/debug/rejects with tailscaled down: %q", got)
			}
		}
		res, body := getBody(t, p.debugBase+"/debug/check")
		if res.StatusCode != 500 || !strings.Contains(body, "-verify-clients") {
			t.Errorf("fail-open %v: /debug/check with tailscaled down: %s %s", failOpen, res.Status, body)
		}
		_, varz := getBody(t, p.debugBase+"/debug/varz")
		wantFailOpen := 0
		if failOpen {
			wantFailOpen = 1
		}
		for _, want := range []string{`derpd_verify_lookups{result="error"} 1`, fmt.Sprintf("derpd_verify_fail_open_admissions %d", wantFailOpen)} {
			if !strings.Contains(varz, want) {
				t.Errorf("fail-open %v: /debug/varz lacks %q", failOpen, want)
			}
		}
		p.stop(t)
	}
}

func TestVerifyClientsFlags(t *testing.T) {
	o, err := parseFlags([]string{"-a", ":8080", "-verify-clients"})
	if err != nil {
		t.Fatal(err)
	}
	if err := o.checkSupported(); err != nil {
		t.Errorf("-verify-clients refused: %v", err)
	}
	if o.verifyClientsFailOpen {
		t.Error("-verify-clients-fail-open is on by default; upstream refuses when tailscaled cannot be asked")
	}
}
