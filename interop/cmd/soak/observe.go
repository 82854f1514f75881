package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/interop/internal/procstat"
)

// look is one look at the relay: its gauges from /debug/varz (both
// servers export these names) and its resident memory from /proc.
// A figure the server does not export is -1.
type look struct {
	T            float64 `json:"t"` // seconds since the load started (negative: before)
	Conns        float64 `json:"conns"`
	Goroutines   float64 `json:"goroutines"`
	Actors       float64 `json:"actors"`        // derpd: every live actor
	ClientActors float64 `json:"client_actors"` // derpd: one per connection
	Flows        float64 `json:"flows"`         // derpd: flows it remembers
	// derpd: messages waiting in the registry actor's mailbox, which
	// every registration, departure and first packet between two
	// clients (PeerGone bookkeeping) goes through, and in all mailboxes.
	RegistryMailbox float64 `json:"registry_mailbox"`
	Mailboxes       float64 `json:"mailboxes"`
	DupKeys         float64 `json:"dup_keys"`
	HeapBytes       float64 `json:"heap_bytes"` // memstats HeapAlloc
	RSSBytes        float64 `json:"rss_bytes"`

	// counters are the server's cumulative counters this look read.
	counters map[string]float64
}

// raise lifts every gauge of peak to l's where l's is higher.
func (peak *look) raise(l look) {
	peak.Conns = max(peak.Conns, l.Conns)
	peak.Goroutines = max(peak.Goroutines, l.Goroutines)
	peak.Actors = max(peak.Actors, l.Actors)
	peak.ClientActors = max(peak.ClientActors, l.ClientActors)
	peak.Flows = max(peak.Flows, l.Flows)
	peak.RegistryMailbox = max(peak.RegistryMailbox, l.RegistryMailbox)
	peak.Mailboxes = max(peak.Mailboxes, l.Mailboxes)
	peak.DupKeys = max(peak.DupKeys, l.DupKeys)
	peak.HeapBytes = max(peak.HeapBytes, l.HeapBytes)
	peak.RSSBytes = max(peak.RSSBytes, l.RSSBytes)
}

// The server counters the soak follows, by the names both servers give
// them. Drops are added per reason (derp_packets_dropped, summed over
// kinds) as "drop:<reason>".
var followed = []string{
	"derp_accepts",
	"derp_packets_received",
	"derp_packets_sent",
	"derp_total_dup_client_conns",
	"derp_sclient_write_timeouts",
	"derp_peer_gone_disconnected_frames",
	"derp_peer_gone_not_here_frames",
	"derp_unknown_frames",
	"derpd_handshake_errors",
	"derpd_queue_waits",
	"derpd_queue_wait_timeouts",
}

// observer looks at one running server.
type observer struct {
	srv *harness.Server
}

func (o *observer) look() (look, error) {
	m, err := o.srv.Metrics()
	if err != nil {
		return look{}, err
	}
	l := look{Conns: get(m, "derp_current_connections"), Goroutines: get(m, "goroutines"),
		HeapBytes: get(m, "memstats_heap_alloc"), DupKeys: get(m, "derp_current_dup_client_keys"),
		Flows: get(m, "derpd_flows_tracked"), Actors: -1, ClientActors: -1, counters: map[string]float64{},
		RegistryMailbox: get(m, `derpd_actor_mailbox_depth{kind="registry"}`), Mailboxes: -1}
	for name, v := range m {
		if strings.HasPrefix(name, "derpd_actors{") {
			l.Actors = max(l.Actors, 0) + v
			if strings.Contains(name, `kind="client"`) {
				l.ClientActors = v
			}
		}
		if strings.HasPrefix(name, "derpd_actor_mailbox_depth{") {
			l.Mailboxes = max(l.Mailboxes, 0) + v
		}
		if reason, ok := dropReason(name); ok {
			l.counters["drop:"+reason] += v
		}
	}
	for _, name := range followed {
		if v, ok := m[name]; ok {
			l.counters[name] = v
		}
	}
	l.RSSBytes = -1
	if kib, err := procstat.RSSKiB(o.srv.Process().Pid); err == nil {
		l.RSSBytes = float64(kib) * 1024
	}
	return l, nil
}

func get(m map[string]float64, name string) float64 {
	if v, ok := m[name]; ok {
		return v
	}
	return -1
}

// dropReason reads the reason label of a derp_packets_dropped series.
func dropReason(series string) (string, bool) {
	labels, ok := strings.CutPrefix(series, "derp_packets_dropped{")
	if !ok {
		return "", false
	}
	for _, l := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
		if v, ok := strings.CutPrefix(l, "reason="); ok {
			return strings.Trim(v, `"`), true
		}
	}
	return "", false
}

// since is the growth of every followed counter from base to l.
func since(base, l look) map[string]float64 {
	d := map[string]float64{}
	for k, v := range l.counters {
		d[k] = v - base.counters[k]
	}
	return d
}

// get fetches a debug path from the server.
func (o *observer) get(path string) (int, []byte, error) {
	res, err := o.srv.HTTPClient().Get(o.srv.BaseURL() + path)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}

// gc asks the server to collect garbage (both serve /debug/gc), twice:
// the first cycle's finalizers and sync.Pool victims go in the second,
// so the heap that is left is what the server still holds.
func (o *observer) gc() error {
	for range 2 {
		code, _, err := o.get("/debug/gc")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/debug/gc: status %d", code)
		}
	}
	return nil
}

// check runs the server's own consistency check (/debug/check on both).
func (o *observer) check() error {
	code, body, err := o.get("/debug/check")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("status %d: %s", code, strings.TrimSpace(string(body)))
	}
	return nil
}

// save writes what the server serves at path to file.
func (o *observer) save(path, file string) error {
	code, body, err := o.get(path)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("%s: status %d", path, code)
	}
	return os.WriteFile(file, body, 0o644)
}

// goroutineDump saves the server's goroutines, grouped by stack
// (/debug/pprof/goroutine?debug=1, which both serve), to path.
func (o *observer) goroutineDump(path string) ([]byte, error) {
	code, body, err := o.get("/debug/pprof/goroutine?debug=1")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("goroutine profile: status %d", code)
	}
	return body, os.WriteFile(path, body, 0o644)
}

// stackGroup is one stack of a goroutine profile and how many
// goroutines are on it.
type stackGroup struct {
	Count int      `json:"count"`
	Funcs []string `json:"funcs"` // innermost first
}

// parseGoroutines reads the debug=1 goroutine profile: groups of
// "<count> @ <pcs>" followed by "#\t<pc>\t<func>+<off>\t<file>:<line>"
// lines, separated by blank lines. The biggest groups come first.
func parseGoroutines(profile []byte) []stackGroup {
	var out []stackGroup
	var cur *stackGroup
	sc := bufio.NewScanner(strings.NewReader(string(profile)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, " @ ") && !strings.HasPrefix(line, "#"):
			n, err := strconv.Atoi(strings.TrimSpace(line[:strings.Index(line, " @ ")]))
			if err != nil {
				cur = nil
				continue
			}
			out = append(out, stackGroup{Count: n})
			cur = &out[len(out)-1]
		case strings.HasPrefix(line, "#\t") && cur != nil:
			f := strings.Split(line, "\t")
			if len(f) >= 3 {
				fn := f[2]
				if i := strings.LastIndex(fn, "+0x"); i > 0 {
					fn = fn[:i]
				}
				cur.Funcs = append(cur.Funcs, fn)
			}
		case line == "":
			cur = nil
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	return out
}

// where names a stack by its innermost frames outside the runtime and
// the standard library's plumbing, which say little on their own.
func (g stackGroup) where() string {
	var keep []string
	for _, f := range g.Funcs {
		if strings.HasPrefix(f, "runtime.") || strings.HasPrefix(f, "internal/") || strings.HasPrefix(f, "sync.") {
			continue
		}
		keep = append(keep, f)
		if len(keep) == 3 {
			break
		}
	}
	if len(keep) == 0 && len(g.Funcs) > 0 {
		keep = g.Funcs[:1]
	}
	return strings.Join(keep, " ← ")
}
