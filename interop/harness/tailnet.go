package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
)

// TailnetWait bounds waits on tailscaled (start-up, login, learning a
// peer). It is longer than Wait because tailscaled starts a whole
// userspace network stack, on a machine other tests are loading too. A
// failure deadline, never a measured duration.
const TailnetWait = 60 * time.Second

// Tailscaled builds (once per process, into the directory of the servers
// Binary builds, so RemoveBinaries removes it too) and returns the path of
// tailscale.com/cmd/tailscaled at the version interop/go.mod pins.
// It is built without the race detector even under -race: the tests are
// about the relay, and tailscaled with -race takes several times as long
// to build and to start. The build (minutes on two cores with a cold
// cache, seconds after) holds a lock of its own, not Binary's, so tests
// running in parallel can still build and start servers meanwhile.
func Tailscaled() (string, error) {
	tailscaledMu.Lock()
	defer tailscaledMu.Unlock()
	if tailscaledPath != "" {
		if _, err := os.Stat(tailscaledPath); err == nil {
			return tailscaledPath, nil
		}
	}
	buildMu.Lock()
	if buildDir == "" {
		d, err := os.MkdirTemp("", "derpd-interop-bin")
		if err != nil {
			buildMu.Unlock()
			return "", err
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, "tailscaled")
	buildMu.Unlock()
	cmd := exec.Command("go", "build", "-o", out, "tailscale.com/cmd/tailscaled")
	cmd.Dir = ModuleDir()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building tailscale.com/cmd/tailscaled: %v\n%s", err, b)
	}
	tailscaledPath = out
	return out, nil
}

var (
	tailscaledMu   sync.Mutex
	tailscaledPath string // built, unless RemoveBinaries has removed it since
)

// Tailnet is a tailnet for -verify-clients: Tailscale's own test control
// server (tstest/integration/testcontrol) in this process on loopback, and
// real tailscaled processes, built from the module cache, registered with
// it. A relay started with -verify-clients -socket <a node's socket> asks
// that node's tailscaled about every client, and tailscaled knows only the
// keys control told it about: its own and its peers'.
//
// Nothing leaves loopback: control and the DERP map point at 127.0.0.1,
// log upload is off, and an HTTP proxy that fails the test stands in for
// the rest of the internet (as in Tailscale's integration tests).
type Tailnet struct {
	// Control is Tailscale's test control server; it approves every
	// node that registers (no auth URL, machine authorized) and gives
	// every node all the others as peers.
	Control *testcontrol.Server

	http     *httptest.Server
	derpSink net.Listener
	trap     *httptest.Server
	log      *syncBuffer

	mu      sync.Mutex
	escaped map[string]int // requests that reached the proxy trap, by method and target
}

// NewTailnet starts the control server. Everything it starts is stopped
// when the test ends, after the nodes.
func NewTailnet(tb testing.TB) *Tailnet {
	tb.Helper()
	tn := &Tailnet{log: &syncBuffer{}}

	// The DERP map control hands out names a loopback port that takes
	// connections and closes them at once. The nodes need a DERP map
	// (without one, testcontrol sends none and tailscaled would use
	// Tailscale's production relays), but these tests connect to relays
	// with their own clients; a node using a relay under test as its home
	// would hold a second connection for the key a test connects as. The
	// port stays bound for the whole test, so no server another test
	// starts can be handed it and get tailscaled as a surprise client.
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tn.derpSink = sink
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	derpMap := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
		900: {RegionID: 900, RegionCode: "nowhere", RegionName: "a closed door on loopback", Nodes: []*tailcfg.DERPNode{{
			Name: "900a", RegionID: 900, HostName: "127.0.0.1", IPv4: "127.0.0.1", IPv6: "none",
			DERPPort: sink.Addr().(*net.TCPAddr).Port, STUNPort: -1, InsecureForTests: true,
		}}},
	}}

	// Any HTTP request tailscaled makes that is not to loopback goes
	// through this proxy (HTTP_PROXY, HTTPS_PROXY), which records it and
	// fails the test: a sign that something would have gone to the
	// internet.
	tn.trap = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tn.mu.Lock()
		if tn.escaped == nil {
			tn.escaped = map[string]int{}
		}
		tn.escaped[r.Method+" "+r.Host+r.URL.Path]++
		tn.mu.Unlock()
		http.Error(w, "no internet in tests", http.StatusForbidden)
	}))

	tn.Control = &testcontrol.Server{
		// Its log goes to a buffer shown if the test fails: control's
		// goroutines outlive a test's last line, and testing.T panics on
		// a Logf after the test has ended.
		Logf:    func(format string, args ...any) { fmt.Fprintf(tn.log, format+"\n", args...) },
		DERPMap: derpMap,
	}
	tn.http = httptest.NewUnstartedServer(tn.Control)
	tn.Control.HTTPTestServer = tn.http
	tn.http.Start()

	tb.Cleanup(func() {
		// The nodes' cleanups ran first (registered later), so no map
		// poll is left open; CloseClientConnections ends any that is, so
		// Close cannot wait on a long poll.
		tn.http.CloseClientConnections()
		tn.http.Close()
		tn.trap.Close()
		sink.Close()
		tn.mu.Lock()
		for req, n := range tn.escaped {
			tb.Errorf("tailscaled tried to leave loopback: %s (%d times)", req, n)
		}
		tn.mu.Unlock()
		if tb.Failed() {
			tb.Logf("testcontrol log:\n%s", tailLines(tn.log.String(), 200))
		}
	})
	return tn
}

// ControlURL is what a node's --login-server would be.
func (tn *Tailnet) ControlURL() string { return tn.http.URL }

// TailnetNode is one tailscaled, logged in to the tailnet, with userspace
// networking (no TUN device, nothing changed on the host) and its own
// state directory and LocalAPI socket.
type TailnetNode struct {
	Name   string
	Dir    string // --statedir
	Socket string // --socket, the path a relay's -socket names

	tn       *Tailnet
	bin      string
	cmd      *exec.Cmd
	out      *syncBuffer
	exited   chan struct{}
	exitErr  error
	asked    bool     // Stop was called
	lifeline *os.File // our end of TS_PARENT_DEATH_FD
	lc       *local.Client
}

// StartNodes starts a tailscaled per name at once (each takes seconds to
// come up), logs each in and waits until every node is running and knows
// every other as a peer, so a relay asking any of them gets an answer
// that reflects the whole tailnet. The nodes are stopped when the test
// ends.
func (tn *Tailnet) StartNodes(tb testing.TB, names ...string) []*TailnetNode {
	tb.Helper()
	bin, err := Tailscaled()
	if err != nil {
		tb.Fatal(err) // a tailscaled that does not build fails the test, never skips it
	}
	nodes := make([]*TailnetNode, len(names))
	for i, name := range names {
		n, err := tn.launch(tb, bin, name)
		if err != nil {
			tb.Fatal(err)
		}
		nodes[i] = n
	}
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = n.logIn() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatal(err)
	}
	for _, n := range nodes {
		for _, peer := range nodes {
			if peer != n {
				if err := n.awaitKnows(peer.PublicKey(tb)); err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
	return nodes
}

func (tn *Tailnet) launch(tb testing.TB, bin, name string) (*TailnetNode, error) {
	dir := tb.TempDir()
	sock := filepath.Join(dir, "tailscaled.sock")
	if len(sock) > 100 {
		// A unix socket's path must fit in 108 bytes; a long test name
		// makes a long TempDir.
		d, err := os.MkdirTemp("", "tsnode")
		if err != nil {
			return nil, err
		}
		tb.Cleanup(func() { os.RemoveAll(d) })
		sock = filepath.Join(d, "tailscaled.sock")
	}
	n := &TailnetNode{Name: name, Dir: dir, Socket: sock, tn: tn, bin: bin, out: &syncBuffer{}}
	n.lc = &local.Client{Socket: sock, UseSocketOnly: true}
	if err := n.run(); err != nil {
		return nil, err
	}
	tb.Cleanup(func() {
		select {
		case <-n.exited:
			if !n.asked {
				tb.Errorf("tailscaled %s exited during the test, unasked: %v", name, n.exitErr)
			}
		default:
		}
		n.Stop()
		if tb.Failed() {
			tb.Logf("tailscaled %s output (the end):\n%s", name, tailLines(n.out.String(), 150))
		}
	})
	return n, nil
}

// run starts the tailscaled process; its state directory may hold a
// login from an earlier run.
func (n *TailnetNode) run() error {
	n.asked = false
	n.exited = make(chan struct{})
	n.cmd = exec.Command(n.bin,
		"--tun=userspace-networking",
		"--statedir="+n.Dir,
		"--socket="+n.Socket,
		"--port=0",              // an ephemeral UDP port for WireGuard
		"--no-logs-no-support",  // no log upload to log.tailscale.com
		"--encrypt-state=false", // PrivateKey reads the state file; a host with a TPM would encrypt it
	)
	// The pipe is tailscaled's lifeline: it exits when the read end sees
	// EOF, which happens when this process dies, so a crashed test run
	// leaves no tailscaled behind.
	lifeline, ours, err := os.Pipe()
	if err != nil {
		return err
	}
	n.cmd.ExtraFiles = []*os.File{lifeline}
	n.lifeline = ours
	n.cmd.Env = append(os.Environ(),
		"TS_PARENT_DEATH_FD=3",
		"TS_LOGS_DIR="+n.Dir, // its log ID and log buffer, not in a system directory
		"HTTP_PROXY="+n.tn.trap.URL,
		"HTTPS_PROXY="+n.tn.trap.URL,
		// The captive-portal and connectivity checks ask this instead
		// of Tailscale's servers.
		"TS_NETCHECK_GENERATE_204_URL="+n.tn.http.URL+"/generate_204",
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1", // a container may look offline to tailscaled
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1",  // a wrong control URL is a crash, not a request to Tailscale
		"TS_DISABLE_PORTMAPPER=1",         // no UPnP, NAT-PMP or PCP probes of the LAN
	)
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	if err := n.cmd.Start(); err != nil {
		lifeline.Close()
		ours.Close()
		return fmt.Errorf("starting tailscaled %s: %v", n.Name, err)
	}
	lifeline.Close() // the child has its copy
	cmd, exited := n.cmd, n.exited
	go func() {
		n.exitErr = cmd.Wait()
		close(exited)
	}()
	return nil
}

// Restart starts a stopped node again and waits until it is running:
// it logs itself back in with the key and prefs its state file keeps,
// as after a reboot, and learns its peers from control again.
func (n *TailnetNode) Restart(tb testing.TB) {
	tb.Helper()
	n.Stop()
	fmt.Fprintf(n.out, "--- restarted by the test ---\n")
	if err := n.run(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), TailnetWait)
	defer cancel()
	if err := n.awaitRunning(ctx); err != nil {
		tb.Fatal(err)
	}
}

// logIn does what `tailscale up --login-server=<control>` does, over the
// LocalAPI: wait for the socket, set the prefs, start the login, and wait
// for the Running state.
func (n *TailnetNode) logIn() error {
	ctx, cancel := context.WithTimeout(context.Background(), TailnetWait)
	defer cancel()
	if err := n.poll(ctx, "its LocalAPI", func() error {
		_, err := n.lc.Status(ctx)
		return err
	}); err != nil {
		return err
	}
	prefs := ipn.NewPrefs()
	prefs.ControlURL = n.tn.ControlURL()
	prefs.WantRunning = true
	prefs.Hostname = n.Name
	prefs.CorpDNS = false          // never touch the host's DNS (userspace networking does not anyway)
	prefs.AutoUpdate.Check = false // no update checks
	if err := n.lc.Start(ctx, ipn.Options{UpdatePrefs: prefs}); err != nil {
		return fmt.Errorf("tailscaled %s: start: %w", n.Name, err)
	}
	if err := n.lc.StartLoginInteractive(ctx); err != nil {
		return fmt.Errorf("tailscaled %s: login: %w", n.Name, err)
	}
	return n.awaitRunning(ctx)
}

// awaitRunning waits for the Running state and a node key.
func (n *TailnetNode) awaitRunning(ctx context.Context) error {
	return n.poll(ctx, "the Running state", func() error {
		st, err := n.lc.Status(ctx)
		if err != nil {
			return err
		}
		if st.BackendState != ipn.Running.String() || st.Self == nil || st.Self.PublicKey.IsZero() {
			return fmt.Errorf("state %s", st.BackendState)
		}
		return nil
	})
}

// poll runs check until it succeeds, the node exits or ctx ends.
func (n *TailnetNode) poll(ctx context.Context, what string, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-n.exited:
			return fmt.Errorf("tailscaled %s exited (%v) before %s", n.Name, n.exitErr, what)
		case <-ctx.Done():
			return fmt.Errorf("tailscaled %s: no %s within %v: %v", n.Name, what, TailnetWait, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// AwaitPeer waits until the node's LocalAPI answers a whois for k, the
// question a relay with -verify-clients asks: control has told this node
// about k.
func (n *TailnetNode) AwaitPeer(tb testing.TB, k key.NodePublic) {
	tb.Helper()
	if err := n.awaitKnows(k); err != nil {
		tb.Fatal(err)
	}
}

func (n *TailnetNode) awaitKnows(k key.NodePublic) error {
	ctx, cancel := context.WithTimeout(context.Background(), TailnetWait)
	defer cancel()
	return n.poll(ctx, "peer "+k.ShortString(), func() error {
		_, err := n.lc.WhoIsNodeKey(ctx, k)
		return err
	})
}

// LocalClient talks to the node's LocalAPI.
func (n *TailnetNode) LocalClient() *local.Client { return n.lc }

// Status is the node's `tailscale status`.
func (n *TailnetNode) Status(tb testing.TB) *ipnstate.Status {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	st, err := n.lc.Status(ctx)
	if err != nil {
		tb.Fatalf("tailscaled %s: status: %v", n.Name, err)
	}
	return st
}

// PublicKey is the node key the node registered with control.
func (n *TailnetNode) PublicKey(tb testing.TB) key.NodePublic {
	tb.Helper()
	st := n.Status(tb)
	if st.Self == nil || st.Self.PublicKey.IsZero() {
		tb.Fatalf("tailscaled %s has no node key (state %s)", n.Name, st.BackendState)
	}
	return st.Self.PublicKey
}

// PrivateKey is the private half of the node's key, read from its state
// file, so a test's DERP client can be this node as far as a relay can
// tell: tailscaled never hands it out over the LocalAPI.
func (n *TailnetNode) PrivateKey(tb testing.TB) key.NodePrivate {
	tb.Helper()
	want := n.PublicKey(tb)
	var priv key.NodePrivate
	ctx, cancel := context.WithTimeout(context.Background(), TailnetWait)
	defer cancel()
	// tailscaled writes the file when its prefs change, so the key it
	// runs with is there by the time it is Running; polling covers a
	// write still under way.
	if err := n.poll(ctx, "its node key in its state file", func() (err error) {
		priv, err = n.stateFileKey()
		if err == nil && priv.Public() != want {
			err = fmt.Errorf("the file has %v, tailscaled runs as %v", priv.Public().ShortString(), want.ShortString())
		}
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	return priv
}

// stateFileKey reads the node key from tailscaled.state: a JSON object of
// base64 values, where the current profile's prefs keep the key in
// Config.PrivateNodeKey (ipn.Prefs.Persist).
func (n *TailnetNode) stateFileKey() (key.NodePrivate, error) {
	b, err := os.ReadFile(filepath.Join(n.Dir, "tailscaled.state"))
	if err != nil {
		return key.NodePrivate{}, err
	}
	var state map[ipn.StateKey][]byte
	if err := json.Unmarshal(b, &state); err != nil {
		return key.NodePrivate{}, fmt.Errorf("state file: %v", err)
	}
	profile := ipn.StateKey(state[ipn.CurrentProfileStateKey])
	var prefs struct {
		Config struct{ PrivateNodeKey key.NodePrivate }
	}
	if err := json.Unmarshal(state[profile], &prefs); err != nil {
		return key.NodePrivate{}, fmt.Errorf("prefs of profile %q: %v", profile, err)
	}
	if prefs.Config.PrivateNodeKey.IsZero() {
		return key.NodePrivate{}, fmt.Errorf("no node key in profile %q", profile)
	}
	return prefs.Config.PrivateNodeKey, nil
}

// Stop ends tailscaled (SIGTERM, then SIGKILL if it lingers) and waits
// for it to be gone; its LocalAPI socket no longer answers.
func (n *TailnetNode) Stop() {
	n.asked = true
	select {
	case <-n.exited:
	default:
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			n.cmd.Process.Kill()
			<-n.exited
		}
	}
	n.lifeline.Close()
}

// Output is what tailscaled logged.
func (n *TailnetNode) Output() string { return n.out.String() }

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[%d lines before]\n", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "")
}
