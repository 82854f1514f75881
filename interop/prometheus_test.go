package interop

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/types/key"
)

// busyRegion is a two-node derpd region whose first node has every
// labelled series a dashboard reads: TLS (derper_tls_request_version),
// STUN (stun_*), a mesh link up (derpd_mesh_link_*), clients that relayed
// data and disco packets locally and across the mesh, a packet to a key
// nobody has (a drop), and a -debug-addr listener.
type busyRegion struct {
	*region
	node      *harness.Node // the first node, the one under test
	debugBase string        // its -debug-addr, http://127.0.0.1:port
	local     []*harness.Client
	remote    *harness.Client // on the second node
}

func startBusyRegion(t *testing.T, localClients int) *busyRegion {
	t.Helper()
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("-debug-addr and derpd's own series are derpd's")
	}
	r := newRegion(t, harness.Derpd, harness.Derpd)
	debugPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	stunPort, err := freeUDPPort()
	if err != nil {
		t.Fatal(err)
	}
	debugAddr := "127.0.0.1:" + strconv.Itoa(debugPort)
	opts := r.Options(0, []string{"-mesh-with", r.MeshWith(), "-debug-addr", debugAddr})
	opts.STUNPort = stunPort
	r.Nodes[0].Server = harness.Start(t, opts)
	r.start(1)
	b := &busyRegion{region: r, node: r.Nodes[0], debugBase: "http://" + debugAddr}
	for range localClients {
		b.local = append(b.local, r.connect(0, key.NodePrivate{}))
	}
	b.remote = r.connect(1, key.NodePrivate{})
	if len(b.local) > 0 {
		// Across the mesh both ways (the links are up once this passes).
		awaitPath(t, b.local[0], b.remote)
		awaitPath(t, b.remote, b.local[0])
		if err := b.local[0].Send(b.remote.Pub, disco(1)); err != nil {
			t.Fatal(err)
		}
		b.remote.ExpectPacket(t, b.local[0].Pub, disco(1))
	}
	if len(b.local) > 1 {
		exchange(t, b.local[0], b.local[1], "local")
		if err := b.local[1].Send(harness.NewKey(), []byte("to nobody")); err != nil {
			t.Fatal(err)
		}
		b.node.WaitMetricAtLeast(t, `derp_packets_dropped{kind="other",reason="unknown_dest"}`, 1)
	}
	return b
}

// varz fetches the node's exposition from its -debug-addr.
func (b *busyRegion) varz(t *testing.T) string {
	t.Helper()
	res, err := http.Get(b.debugBase + "/debug/varz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("/debug/varz on -debug-addr: %s %v", res.Status, err)
	}
	return string(body)
}

// upstreamCounters are derper's counter names that derpd exports. They
// are a compatibility promise (dashboards and alerts written for derper
// work on derpd unchanged), so promtool's advice that a counter's name end
// in _total is noted and not taken for them.
var upstreamCounters = map[string]bool{
	"derp_accepts": true, "derp_websocket_accepts": true, "derp_total_dup_client_conns": true,
	"derp_home_moves_in": true, "derp_home_moves_out": true, "derp_got_ping": true, "derp_sent_pong": true,
	"derp_peer_gone_disconnected_frames": true, "derp_peer_gone_not_here_frames": true,
	"derp_unknown_frames": true, "derp_sclient_write_timeouts": true,
	"derp_packets_forwarded_in": true, "derp_packets_forwarded_out": true,
	"derp_multiforwarder_created": true, "derp_multiforwarder_deleted": true,
	"derp_packet_forwarder_delete_other_value": true,
	"derp_packets_received":                    true, "derp_packets_sent": true, "derp_bytes_received": true, "derp_bytes_sent": true,
	"derp_packets_received_kind": true, "derp_packets_dropped": true, "derp_bytes_dropped": true,
	"stun_requests": true, "stun_addrfamily": true,
	"tls_listener_accepted_connections": true, "tls_listener_rejected_connections": true,
	"derper_tls_request_version": true,
	"bootstrap_dns_requests":     true, "bootstrap_dns_published_hits": true, "bootstrap_dns_published_misses": true,
	"bootstrap_dns_unpublished_hits": true, "bootstrap_dns_unpublished_misses": true,
	"bootstrap_dns_unpublished_percent_misses": true,
	"memstats_num_gc":                          true,
}

// acceptedLint says whether one of promtool's complaints is one derpd
// takes on purpose. Only three classes are, each for named metrics:
//
//   - counters not ending in _total: upstream's counters, and derpd's
//     own (derpd_*), which are named the way upstream's are so that
//     derpd_queue_waits reads like the derp_packets_dropped beside it
//     (renaming those now would break what operators already query);
//   - abbreviated units: upstream's derp_average_queue_duration_ms and
//     uptime_sec;
//   - a gauge ending in _total: upstream's derp_clients_total.
//
// Anything else promtool reports (a missing HELP or TYPE line, a bad
// name, an unparsable line, a histogram without its parts) fails.
func acceptedLint(name, problem string) bool {
	switch problem {
	case `counter metrics should have "_total" suffix`:
		return upstreamCounters[name] || strings.HasPrefix(name, "derpd_")
	case "metric names should not contain abbreviated units":
		return name == "derp_average_queue_duration_ms" || name == "uptime_sec"
	case `non-counter metrics should not have "_total" suffix`:
		return name == "derp_clients_total"
	}
	return false
}

// promtool's `check metrics` on the exposition of a node with clients
// and a mesh link up: every family and labelled series is there, and
// promtool finds nothing wrong beyond what acceptedLint lists.
func TestVarzPassesPromtool(t *testing.T) {
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("the exposition is checked by Prometheus's own tool: install Debian's prometheus (.ci/run does): %v", err)
	}
	b := startBusyRegion(t, 2)
	body := b.varz(t)
	// The series that only a busy node has must be there, or promtool
	// would be checking less than operators scrape.
	for _, want := range []string{
		`derpd_mesh_link_up{peer="` + b.Nodes[1].Name, `derpd_mesh_link_dropped{peer="`, `derpd_mesh_link_rtt_seconds{peer="`,
		`derp_packets_dropped{kind="other",reason="unknown_dest"}`, `derp_packets_received_kind{kind="disco"}`,
		`stun_requests{disposition="success"}`, `derper_tls_request_version{version="1.3"}`,
		`derp_buffered_write_frames_bucket{le="+Inf"}`, `derp_current_connections 3`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the exposition lacks %s", want)
		}
	}
	checkExpositionShape(t, body)

	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	// 3 is promtool's exit status for lint findings; the findings are
	// judged one by one below. Anything else is a failure to parse.
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 3) {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	accepted := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		name, problem, _ := strings.Cut(line, " ")
		if acceptedLint(name, problem) {
			accepted[problem] = append(accepted[problem], name)
			continue
		}
		t.Errorf("promtool: %s", line)
	}
	for problem, names := range accepted {
		t.Logf("promtool, accepted: %q for %d metrics (%s)", problem, len(names), strings.Join(names, " "))
	}
	if t.Failed() {
		t.Logf("the exposition:\n%s", body)
	}
}

// checkExpositionShape checks what promtool's linter does not: each
// family has one TYPE line, comes in one piece, and has no series twice.
func checkExpositionShape(t *testing.T, body string) {
	t.Helper()
	typed := map[string]bool{}
	seen := map[string]bool{}
	done := map[string]bool{} // families already left behind
	current := ""
	for _, line := range strings.Split(body, "\n") {
		switch {
		case line == "":
		case strings.HasPrefix(line, "# TYPE "):
			name := strings.Fields(line)[2]
			if typed[name] {
				t.Errorf("%s has a second TYPE line", name)
			}
			typed[name] = true
			if current != "" {
				done[current] = true
			}
			current = name
		case strings.HasPrefix(line, "#"):
		default:
			i := strings.LastIndexByte(line, ' ')
			series := harness.NormalizeSeries(line[:i])
			if seen[series] {
				t.Errorf("series %s appears twice", series)
			}
			seen[series] = true
			family := familyOf(line[:i], typed)
			if family != current {
				t.Errorf("series %s is not under its family's TYPE line (%s)", series, family)
			}
		}
	}
}

// familyOf is the family a series belongs to: its name, or for a
// histogram's parts the name without _bucket, _sum or _count.
func familyOf(series string, typed map[string]bool) string {
	name, _, _ := strings.Cut(series, "{")
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && typed[base] && !typed[name] {
			return base
		}
	}
	return name
}

// prometheus is a real Prometheus server (Debian's package) scraping
// targets every second, with its own configuration and storage in the
// test's temporary directory.
type prometheus struct {
	base string // http://127.0.0.1:port
	cmd  *exec.Cmd
	out  *strings.Builder
}

func startPrometheus(t *testing.T, targets ...string) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("the scrape is tested with a real Prometheus: install Debian's prometheus (.ci/run does): %v", err)
	}
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: derpd
    metrics_path: /debug/varz
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := &prometheus{base: "http://127.0.0.1:" + strconv.Itoa(port), out: &strings.Builder{}}
	p.cmd = exec.Command(bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port),
		"--log.level=warn")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { p.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(harness.Wait):
			p.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus output:\n%s", p.out.String())
		}
	})
	return p
}

// query runs an instant query; it returns Prometheus's error for a query
// it refuses, and the samples' values otherwise.
func (p *prometheus) query(q string) ([]float64, error) {
	res, err := http.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("query %s: %s: %v", q, res.Status, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, r.Error)
	}
	var out []float64
	for _, s := range r.Data.Result {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v", q, s.Value[1])
		}
		out = append(out, v)
	}
	return out, nil
}

// waitValue polls q until it has one sample equal to want.
func (p *prometheus) waitValue(t *testing.T, q string, want float64) {
	t.Helper()
	// Prometheus takes a moment to start and scrapes every second: the
	// bound is a failure deadline, not a measurement.
	deadline := time.Now().Add(2 * harness.Wait)
	for {
		got, err := p.query(q)
		if err == nil && len(got) == 1 && got[0] == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: %s = %v (%v), want %v", q, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// target is what Prometheus says of its one scrape target.
func (p *prometheus) target(t *testing.T) (health, lastError string) {
	t.Helper()
	res, err := http.Get(p.base + "/api/v1/targets")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var r struct {
		Data struct {
			ActiveTargets []struct {
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil || len(r.Data.ActiveTargets) != 1 {
		t.Fatalf("prometheus targets: %v %+v", err, r)
	}
	return r.Data.ActiveTargets[0].Health, r.Data.ActiveTargets[0].LastError
}

// A real Prometheus scrapes derpd's -debug-addr listener (never the
// relay's port) and sees what the server sees: the connection count
// after clients connect, and again after one more does. Then every query
// of the Grafana dashboard in docs/ runs against what it scraped.
func TestPrometheusScrapesDebugListener(t *testing.T) {
	b := startBusyRegion(t, 2)
	p := startPrometheus(t, strings.TrimPrefix(b.debugBase, "http://"))
	// Two local clients and the second node's mesh link to this one.
	b.node.WaitMetric(t, "derp_current_connections", 3)
	p.waitValue(t, `derp_current_connections{job="derpd"}`, 3)
	b.connect(0, key.NodePrivate{})
	b.node.WaitMetric(t, "derp_current_connections", 4)
	p.waitValue(t, `derp_current_connections{job="derpd"}`, 4)
	p.waitValue(t, `derpd_mesh_link_up{job="derpd",peer=~"`+b.Nodes[1].Name+`.*"}`, 1)
	if health, lastErr := p.target(t); health != "up" || lastErr != "" {
		t.Errorf("prometheus reports the target %s: %q", health, lastErr)
	}

	t.Run("dashboard", func(t *testing.T) {
		d := loadDashboard(t)
		// rate() needs two samples in its window: wait for a few scrapes.
		p.waitValue(t, `count_over_time(derp_current_connections{job="derpd"}[30s]) >= bool 5`, 1)
		var empty []string
		for _, q := range d.queries() {
			expr := substituteGrafanaVars(q.Expr)
			got, err := p.query(expr)
			if err != nil {
				t.Errorf("panel %q: %v", q.Panel, err)
				continue
			}
			if len(got) == 0 {
				empty = append(empty, fmt.Sprintf("%q: %s", q.Panel, expr))
			}
		}
		// Every series the dashboard draws exists on a busy node, so an
		// empty answer is a query that can never show anything.
		sort.Strings(empty)
		for _, e := range empty {
			t.Errorf("panel %s: no data", e)
		}
	})
}

// substituteGrafanaVars replaces the dashboard's variables with what
// Grafana would put there for this test's one target.
func substituteGrafanaVars(expr string) string {
	return strings.NewReplacer(
		"$__rate_interval", "30s",
		"$__interval", "5s",
		"${instance:regex}", ".*",
		"$instance", ".*",
		"${job}", "derpd",
		"$job", "derpd",
	).Replace(expr)
}
