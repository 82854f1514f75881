package harness

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"tailscale.com/types/key"
)

// Kind names a server implementation.
type Kind string

const (
	Derpd  Kind = "derpd"
	Derper Kind = "derper" // upstream, tailscale.com/cmd/derper at the pinned version
)

// TargetFromEnv is the server the interop tests drive: $DERPD_INTEROP_TARGET,
// derpd unless it says derper. Running the suite against upstream proves
// the tests encode upstream's behaviour, not just ours.
func TargetFromEnv() Kind {
	if Kind(os.Getenv("DERPD_INTEROP_TARGET")) == Derper {
		return Derper
	}
	return Derpd
}

var (
	buildMu  sync.Mutex
	built    = map[Kind]string{}
	buildDir string
)

// ModuleDir is the interop module's directory.
func ModuleDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// Binary builds (once per process) and returns the path of kind's server.
func Binary(kind Kind) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[kind]; ok {
		return p, nil
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "derpd-interop-bin")
		if err != nil {
			return "", err
		}
		buildDir = d
	}
	pkg := map[Kind]string{Derpd: "github.com/derpd/derpd/cmd/derpd", Derper: "tailscale.com/cmd/derper"}[kind]
	if pkg == "" {
		return "", fmt.Errorf("unknown server kind %q", kind)
	}
	out := filepath.Join(buildDir, string(kind))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = ModuleDir()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", pkg, err, b)
	}
	built[kind] = out
	return out, nil
}

// RemoveBinaries deletes the servers Binary built; call it once nothing
// will start a server again (TestMain, the end of a tool).
func RemoveBinaries() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	buildDir, built = "", map[Kind]string{}
}

// Options are what a test may vary about a server.
type Options struct {
	Kind      Kind     // zero: TargetFromEnv
	MeshKey   string   // 64 hex digits written to a PSK file; empty: none
	VerifyURL string   // -verify-client-url
	Args      []string // extra flags
	Env       []string // extra environment
	KeyFile   string   // reuse this key file (for restart tests); empty: fresh

	// TLS: with CertDir set, the server runs -certmode=manual (or
	// CertMode, if set) with certificates from CertDir for Hostname, and
	// speaks HTTPS.
	CertDir  string
	Hostname string
	CertMode string
	HTTPPort int // -http-port; 0 means -1 (off)
	STUNPort int // > 0 turns STUN on at this UDP port

	// Host and Port are the listen address: 127.0.0.1 and a free port
	// unless set (a region on 127.0.0.x shares one port, as a DNS name's
	// addresses do).
	Host string
	Port int
}

// Server is a running server process.
type Server struct {
	Kind    Kind
	Opts    Options
	addr    string
	keyFile string
	cmd     *exec.Cmd
	out     *syncBuffer
	exited  chan struct{}
	exitErr error
	asked   atomic.Bool // someone asked the server to stop
	killed  atomic.Bool // it had to be killed

	httpOnce sync.Once
	http     *http.Client
}

// syncBuffer collects process output from two pipes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Start launches a server on a free loopback port, plain HTTP, STUN off,
// and waits until it answers its probe. The process is stopped when the
// test ends; its output is logged if the test failed.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := Launch(opts, tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		// A server that died during the test must fail it, whatever the
		// test checked: a crash looks like a closed connection to many.
		crashed := false
		select {
		case <-s.exited:
			if !s.asked.Load() {
				crashed = true
				tb.Errorf("%s exited during the test, unasked: %v", s.Kind, s.exitErr)
			}
		default:
		}
		s.Stop()
		if s.Kind == Derpd && !crashed && !s.killed.Load() && s.exitErr != nil {
			tb.Errorf("derpd exited with %v when stopped, want status 0", s.exitErr)
		}
		if tb.Failed() {
			tb.Logf("%s output:\n%s", s.Kind, s.Output())
		}
	})
	return s
}

// Launch is Start without a testing.TB, for tools. dir holds the key file
// and PSK file.
func Launch(opts Options, dir string) (*Server, error) {
	if opts.Kind == "" {
		opts.Kind = TargetFromEnv()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	bin, err := Binary(opts.Kind)
	if err != nil {
		return nil, err
	}
	port := opts.Port
	if port == 0 {
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	s := &Server{Kind: opts.Kind, Opts: opts, addr: net.JoinHostPort(host, strconv.Itoa(port)), out: &syncBuffer{}, exited: make(chan struct{})}
	s.keyFile = opts.KeyFile
	if s.keyFile == "" {
		s.keyFile = filepath.Join(dir, "derper.key")
	}
	httpPort := "-1"
	if opts.HTTPPort > 0 {
		httpPort = strconv.Itoa(opts.HTTPPort)
	}
	args := []string{"-a", s.addr, "-c", s.keyFile, "-http-port=" + httpPort}
	if opts.STUNPort > 0 {
		args = append(args, "-stun=true", "-stun-port", strconv.Itoa(opts.STUNPort))
	} else {
		args = append(args, "-stun=false")
	}
	if opts.CertDir != "" {
		mode := opts.CertMode
		if mode == "" {
			mode = "manual"
		}
		args = append(args, "-certmode", mode, "-certdir", opts.CertDir, "-hostname", opts.Hostname)
	}
	if opts.MeshKey != "" {
		psk := filepath.Join(dir, "mesh.key")
		if err := os.WriteFile(psk, []byte(opts.MeshKey+"\n"), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "-mesh-psk-file", psk)
	}
	if opts.VerifyURL != "" {
		args = append(args, "-verify-client-url", opts.VerifyURL)
	}
	if opts.Kind == Derpd {
		// Tests stop their servers with SIGTERM: without a spread,
		// derpd's graceful restart is over at once, as derper's exit is.
		// A test of the restart itself sets its own (the last flag wins).
		args = append(args, "-shutdown-spread=0s")
	}
	args = append(args, opts.Args...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.Env = append(os.Environ(), opts.Env...)
	if opts.Kind == Derpd {
		s.cmd.Env = append(s.cmd.Env, "NO_COLOR=1")
	}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.exitErr = s.cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(30 * time.Second); err != nil {
		s.Stop()
		return nil, fmt.Errorf("%s did not start: %v\n%s", opts.Kind, err, s.Output())
	}
	return s, nil
}

func (s *Server) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("exited: %v", s.exitErr)
		default:
		}
		res, err := s.HTTPClient().Head(s.BaseURL() + "/derp/probe")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New("no answer on /derp/probe")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop terminates the server: SIGTERM, then SIGKILL if it lingers.
func (s *Server) Stop() {
	s.asked.Store(true)
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.killed.Store(true)
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// Signal sends sig to the server. SIGTERM and SIGINT count as asking it
// to stop, so that its exit does not fail the test.
func (s *Server) Signal(sig os.Signal) error {
	if sig == syscall.SIGTERM || sig == os.Interrupt {
		s.asked.Store(true)
	}
	return s.cmd.Process.Signal(sig)
}

// Kill ends the server with SIGKILL, as a crash or a power cut would,
// and waits for it to be gone.
func (s *Server) Kill() {
	s.asked.Store(true)
	s.killed.Store(true)
	s.cmd.Process.Kill()
	<-s.exited
}

// Exited is closed when the process has ended; ExitErr says how.
func (s *Server) Exited() <-chan struct{} { return s.exited }
func (s *Server) ExitErr() error          { return s.exitErr }

func (s *Server) Addr() string { return s.addr }
func (s *Server) URL() string  { return s.BaseURL() + "/derp" }

// TLS reports whether the server speaks HTTPS.
func (s *Server) TLS() bool { return s.Opts.CertDir != "" }

// BaseURL is http://addr or https://addr.
func (s *Server) BaseURL() string {
	if s.TLS() {
		return "https://" + s.addr
	}
	return "http://" + s.addr
}

// HTTPClient talks to the server's main listener: over TLS it sends the
// configured host name as SNI (the server refuses others) and does not
// verify the chain (tests that care verify it themselves).
// It is one client per server, so polling a metric reuses one
// connection instead of leaving an idle one behind per request.
func (s *Server) HTTPClient() *http.Client {
	if !s.TLS() {
		return http.DefaultClient
	}
	s.httpOnce.Do(func() {
		s.http = &http.Client{Transport: &http.Transport{
			TLSClientConfig: &tls.Config{ServerName: s.Opts.Hostname, InsecureSkipVerify: true},
		}}
	})
	return s.http
}
func (s *Server) Output() string       { return s.out.String() }
func (s *Server) Process() *os.Process { return s.cmd.Process }
func (s *Server) KeyFile() string      { return s.keyFile }

// PublicKey is the server's key, derived from its key file.
func (s *Server) PublicKey() (key.NodePublic, error) {
	b, err := os.ReadFile(s.keyFile)
	if err != nil {
		return key.NodePublic{}, err
	}
	var kf struct{ PrivateKey key.NodePrivate }
	if err := json.Unmarshal(b, &kf); err != nil {
		return key.NodePublic{}, err
	}
	return kf.PrivateKey.Public(), nil
}

// Metrics fetches /debug/varz and returns every series by name, labels
// sorted so either server's label order matches.
func (s *Server) Metrics() (map[string]float64, error) {
	res, err := s.HTTPClient().Get(s.BaseURL() + "/debug/varz")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return nil, fmt.Errorf("/debug/varz: %s", res.Status)
	}
	return ParseMetrics(res.Body)
}

// Metric returns one series; a missing series fails the test.
func (s *Server) Metric(tb testing.TB, name string) float64 {
	tb.Helper()
	m, err := s.Metrics()
	if err != nil {
		tb.Fatal(err)
	}
	v, ok := m[NormalizeSeries(name)]
	if !ok {
		tb.Fatalf("metric %s not exported by %s", name, s.Kind)
	}
	return v
}

// WaitMetric polls a series until it equals want, for state the server
// changes on its own time (a disconnect it has yet to notice); it fails
// the test after Wait.
func (s *Server) WaitMetric(tb testing.TB, name string, want float64) {
	tb.Helper()
	s.waitMetric(tb, name, func(v float64) bool { return v == want }, fmt.Sprint(want))
}

// WaitMetricAtLeast is WaitMetric for a series that must reach min.
func (s *Server) WaitMetricAtLeast(tb testing.TB, name string, min float64) {
	tb.Helper()
	s.waitMetric(tb, name, func(v float64) bool { return v >= min }, fmt.Sprint("at least ", min))
}

func (s *Server) waitMetric(tb testing.TB, name string, ok func(float64) bool, want string) {
	tb.Helper()
	deadline := time.Now().Add(Wait)
	for {
		got := s.Metric(tb, name)
		if ok(got) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s = %v after %v, want %s", name, got, Wait, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ParseMetrics reads the Prometheus text format.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[NormalizeSeries(line[:i])] = v
	}
	return out, sc.Err()
}

// NormalizeSeries sorts a series' labels.
func NormalizeSeries(s string) string {
	open := strings.IndexByte(s, '{')
	if open < 0 || !strings.HasSuffix(s, "}") {
		return s
	}
	labels := strings.Split(s[open+1:len(s)-1], ",")
	sort.Strings(labels)
	return s[:open] + "{" + strings.Join(labels, ",") + "}"
}

// MeshKeyHex returns a fresh random mesh key in file form.
func MeshKeyHex() string {
	k := key.NewNode() // any 32 random bytes will do
	b, _ := k.MarshalText()
	raw := strings.TrimPrefix(string(b), "privkey:")
	if _, err := hex.DecodeString(raw); err != nil {
		panic(err)
	}
	return raw
}
