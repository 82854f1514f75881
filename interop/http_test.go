package interop

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/derp"
	"tailscale.com/types/key"
)

func get(t *testing.T, method, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// §9.27, §9.28, §9.30, §9.31: the plain HTTP endpoints.
func TestHTTPEndpoints(t *testing.T) {
	srv := start(t, harness.Options{})
	base := "http://" + srv.Addr()
	for _, path := range []string{"/derp/probe", "/derp/latency-check"} {
		for _, m := range []string{"GET", "HEAD"} {
			res, _ := get(t, m, base+path, nil)
			if res.StatusCode != 200 || res.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Errorf("%s %s: %d, CORS %q", m, path, res.StatusCode, res.Header.Get("Access-Control-Allow-Origin"))
			}
		}
		if res, _ := get(t, "POST", base+path, nil); res.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d, want 405", path, res.StatusCode)
		}
	}
	for challenge, want := range map[string]string{
		"ts_1.2.3.4":            "response ts_1.2.3.4",
		strings.Repeat("a", 65): "",
		"has space":             "",
	} {
		res, _ := get(t, "GET", base+"/generate_204", map[string]string{"X-Tailscale-Challenge": challenge})
		if res.StatusCode != 204 || res.Header.Get("X-Tailscale-Response") != want {
			t.Errorf("challenge %q: %d %q, want 204 %q", challenge, res.StatusCode, res.Header.Get("X-Tailscale-Response"), want)
		}
		if cc := res.Header.Get("Cache-Control"); cc != "no-cache, no-store, must-revalidate, no-transform, max-age=0" {
			t.Errorf("Cache-Control %q", cc)
		}
	}
	if res, body := get(t, "GET", base+"/robots.txt", nil); res.StatusCode != 200 || body != "User-agent: *\nDisallow: /\n" {
		t.Errorf("robots.txt: %d %q", res.StatusCode, body)
	}
	if res, _ := get(t, "GET", base+"/debug/", nil); res.StatusCode != 200 {
		t.Errorf("/debug/ from loopback: %d", res.StatusCode)
	}
	if res, _ := get(t, "GET", base+"/debug/", map[string]string{"X-Forwarded-For": "192.0.2.1"}); res.StatusCode != 403 {
		t.Errorf("/debug/ through a proxy: %d, want 403", res.StatusCode)
	}
	if res, body := get(t, "GET", base+"/anything/else", nil); res.StatusCode != 200 || !strings.Contains(body, "DERP") {
		t.Errorf("home page: %d", res.StatusCode)
	}
}

// §9.33: the key file is created private and reused across restarts.
func TestKeyFileCreatedAndReused(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "state", "derper.key")
	first := start(t, harness.Options{KeyFile: keyFile})
	k1 := serverKey(t, first)
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	var kf map[string]string
	b, _ := os.ReadFile(keyFile)
	if err := json.Unmarshal(b, &kf); err != nil || !strings.HasPrefix(kf["PrivateKey"], "privkey:") {
		t.Fatalf("key file content %q", b)
	}
	c := connect(t, first)
	if c.ServerPublicKey() != k1 {
		t.Fatal("served key differs from the key file")
	}
	first.Stop()
	second := start(t, harness.Options{KeyFile: keyFile})
	if c := connect(t, second); c.ServerPublicKey() != k1 {
		t.Fatalf("restarted server has key %v, want %v", c.ServerPublicKey(), k1)
	}
}

// §9.34: a PSK file with surrounding whitespace works; 63 or 65 digits
// stop the server at start-up, saying why. The same command with a good
// key file is the control: it starts, so the flags themselves are fine.
func TestMeshKeyFileFormat(t *testing.T) {
	mk := harness.MeshKeyHex()
	dir := t.TempDir()
	padded := filepath.Join(dir, "padded.key")
	if err := os.WriteFile(padded, []byte("\n  "+mk+"  \n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := start(t, harness.Options{Args: []string{"-mesh-psk-file", padded}})
	w := connect(t, srv, harness.WithMeshKey(mk), harness.WithWatch())
	if _, ok := w.Next(t).(derp.PeerPresentMessage); !ok {
		t.Fatal("whitespace-padded mesh key not accepted")
	}
	// Both servers print the problem on one line naming the mesh key and
	// its 64 digits; neither's usage text has such a line.
	pskProblem := regexp.MustCompile(`(?im)mesh key.*\b64\b`)
	for name, content := range map[string]string{"63": mk[:63], "65": mk + "0", "good": mk} {
		// Launch writes content to the PSK file it passes, with a newline.
		s, err := harness.Launch(harness.Options{Kind: srv.Kind, MeshKey: content}, filepath.Join(dir, name))
		if name == "good" {
			if err != nil {
				t.Errorf("good key file: %v", err)
			} else {
				s.Stop()
			}
			continue
		}
		if err == nil {
			s.Stop()
			t.Errorf("%s hex digits: server started", name)
			continue
		}
		if !strings.Contains(err.Error(), "exited: exit status") {
			t.Errorf("%s hex digits: server did not exit with a failure: %v", name, err)
		}
		if !pskProblem.MatchString(err.Error()) {
			t.Errorf("%s hex digits: output does not name the mesh key problem:\n%v", name, err)
		}
	}
}

// WebSocket transport, as browsers (and Tailscale clients built with
// TS_DEBUG_DERP_WS_CLIENT) use it. Messages are limited to 32 KiB on both
// sides (the WebSocket library's default read limit), so a WebSocket
// sender keeps its packets below that; a WebSocket receiver must still
// get 64 KiB packets from others, which the server splits into messages.
func TestWebSocket(t *testing.T) {
	if !wsClientCompiled {
		t.Fatal("Tailscale's WebSocket client is not compiled in: run with -tags ts_debug_websockets (make test does)")
	}
	srv := start(t, harness.Options{})
	plain := connect(t, srv)
	t.Setenv("TS_DEBUG_DERP_WS_CLIENT", "1")
	a, b := connect(t, srv), connect(t, srv)
	for _, size := range []int{1, 1280, 16 << 10} {
		payload := make([]byte, size)
		payload[size-1] = byte(size)
		if err := a.Send(b.Pub, payload); err != nil {
			t.Fatal(err)
		}
		b.ExpectPacket(t, a.Pub, payload)
	}
	if n := srv.Metric(t, "derp_websocket_accepts"); n != 2 {
		t.Fatalf("websocket accepts = %v, want 2", n)
	}
	if srv.Kind == harness.Derpd {
		big := make([]byte, 64<<10)
		big[len(big)-1] = 0x42
		if err := plain.Send(b.Pub, big); err != nil {
			t.Fatal(err)
		}
		b.ExpectPacket(t, plain.Pub, big)
	}
}

// §9.23: an idle client gets a keepalive after 60 s plus a jitter of up
// to 5 s. The test takes a minute of wall time, so it runs in parallel
// with the rest of the suite; -short skips it.
func TestKeepAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("takes a minute")
	}
	t.Parallel()
	srv := start(t, harness.Options{})
	c := harness.Connect(t, srv, key.NewNode())
	c.ExpectKeepAlive(t, 70*time.Second)
}

// SIGHUP never stops derpd, whatever the mode: systemd's reload sends it,
// and Go's default for it is to exit. In plain-HTTP mode there is
// nothing to reload, and derpd says so. (Upstream derper exits there.)
func TestSIGHUPKeepsServing(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("upstream derper exits on SIGHUP when it serves plain HTTP")
	}
	srv := start(t, harness.Options{})
	a, b := connect(t, srv), connect(t, srv)
	if err := srv.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(harness.Wait)
	for !strings.Contains(srv.Output(), "nothing to reload") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line for SIGHUP; output:\n%s", srv.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.Send(b.Pub, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	b.ExpectPacket(t, a.Pub, []byte("still here"))
}

// SIGTERM stops the server promptly and closes relay connections.
func TestSIGTERMShutsDown(t *testing.T) {
	srv := start(t, harness.Options{})
	c := connect(t, srv)
	srv.Signal(syscall.SIGTERM)
	select {
	case <-srv.Exited():
	case <-time.After(harness.Wait):
		t.Fatal("server still running after SIGTERM")
	}
	c.ExpectClosed(t)
	if srv.Kind == harness.Derpd {
		if err := srv.ExitErr(); err != nil {
			t.Fatalf("derpd exited with %v after SIGTERM, want status 0", err)
		}
		if !strings.Contains(srv.Output(), "shutting down") {
			t.Fatal("no shutdown log line")
		}
	}
}
