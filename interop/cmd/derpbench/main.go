// Command derpbench measures derpd and upstream derper side by side: it
// builds both from this module, starts them with the same flags on
// loopback, drives them alternately with the same loads, and prints one
// table of figures with their ratio. Raw runs are written as JSON and the
// curves as PNG plots.
//
//	cd interop && go run ./cmd/derpbench            # full run, ~20 minutes
//	cd interop && go run ./cmd/derpbench -quick     # smoke run, ~3 minutes
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/interop/internal/procstat"
)

var selfPID = os.Getpid()

// run is one measurement of one server.
type run struct {
	Scenario string
	Server   harness.Kind
	Round    int
	Params   metrics
	Metrics  metrics
	Err      string `json:",omitempty"`
}

type bench struct {
	rounds  int
	quick   bool
	size    int
	only    map[string]bool
	outDir  string
	runs    []run
	servers []harness.Kind
	pprof   bool
	turns   int // rounds measured so far, for alternating the order
}

func main() {
	var (
		rounds = flag.Int("rounds", 3, "measurements per point and server (medians are reported)")
		quick  = flag.Bool("quick", false, "small, fast run: one round, fewer points")
		size   = flag.Int("size", 1280, "packet payload bytes")
		only   = flag.String("only", "", "comma-separated scenarios: capacity,overload,isolation,latency,memory,memory-tls,handshakes,flows,record,stalled,scaling,mesh (mesh-capacity and mesh-slow are its two halves)")
		out    = flag.String("out", filepath.Join(harness.ModuleDir(), "bench-out"), "directory for JSON and plots")
		prof   = flag.Bool("pprof", false, "save a CPU profile of each server during each measurement (in -out/pprof)")
		report = flag.String("report", "", "measure nothing: print the table and redraw the plots (in -out) from this runs.json")
	)
	flag.Parse()
	procstat.RaiseFileLimit()
	b := &bench{rounds: *rounds, quick: *quick, size: *size, outDir: *out, servers: []harness.Kind{harness.Derpd, harness.Derper}, pprof: *prof}
	if b.quick {
		b.rounds = 1
		window = time.Second
	}
	if *only != "" {
		b.only = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			b.only[strings.TrimSpace(s)] = true
		}
	}
	if err := os.MkdirAll(b.outDir, 0o755); err != nil {
		log.Fatal(err)
	}
	if *report != "" {
		if err := b.load(*report); err != nil {
			log.Fatal(err)
		}
		b.report()
		return
	}
	for _, k := range b.servers {
		if _, err := harness.Binary(k); err != nil {
			log.Fatal(err)
		}
	}
	start := time.Now()
	b.all()
	b.save()
	b.report()
	harness.RemoveBinaries()
	log.Printf("done in %v; raw runs in %s", time.Since(start).Round(time.Second), b.outDir)
}

// report prints the table and writes it and the plots to the output
// directory.
func (b *bench) report() {
	tab := b.table()
	fmt.Print(tab)
	if err := os.WriteFile(filepath.Join(b.outDir, "table.md"), []byte(tab), 0o644); err != nil {
		log.Print(err)
	}
	if err := b.plots(); err != nil {
		log.Printf("plots: %v", err)
	}
}

// load reads the runs a previous measurement saved, so that the table and
// plots can be redrawn without measuring again.
func (b *bench) load(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var saved struct {
		PacketSize int `json:"packet_size"`
		Runs       []run
	}
	if err := json.Unmarshal(data, &saved); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(saved.Runs) == 0 {
		return fmt.Errorf("%s holds no runs", path)
	}
	b.runs = saved.Runs
	if saved.PacketSize > 0 {
		b.size = saved.PacketSize
	}
	return nil
}

func (b *bench) want(s string) bool { return b.only == nil || b.only[s] }

// withServers starts a fresh pair of servers with the same options (Kind
// aside), runs f, stops them. A fresh start per scenario keeps one
// scenario's leftovers (memory, goroutines) out of the next.
func (b *bench) withServers(opts harness.Options, f func(map[harness.Kind]*harness.Server)) {
	dir, err := os.MkdirTemp("", "derpbench")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srvs := map[harness.Kind]*harness.Server{}
	defer func() {
		for _, s := range srvs {
			s.Stop()
		}
	}()
	for _, k := range b.servers {
		opts.Kind = k
		s, err := harness.Launch(opts, filepath.Join(dir, string(k)))
		if err != nil {
			log.Panic(err) // unlike Fatal, runs the deferred Stop of the other server
		}
		srvs[k] = s
	}
	f(srvs)
}

// idleMemorySweep measures idle memory at each connection count, with
// new servers for every round: resident memory only means something in a
// process that has not served the previous round (Go keeps freed memory
// mapped for reuse).
func (b *bench) idleMemorySweep(scenario string, counts []int, opts harness.Options) {
	rounds := b.rounds
	b.rounds = 1
	defer func() { b.rounds = rounds }()
	for _, n := range counts {
		for r := range rounds {
			b.withServers(opts, func(srvs map[harness.Kind]*harness.Server) {
				before := len(b.runs)
				b.measure(scenario, metrics{"conns": float64(n)}, srvs, func(s *harness.Server) (metrics, error) {
					return idleMemory(s, n)
				})
				for i := before; i < len(b.runs); i++ {
					b.runs[i].Round = r
				}
			})
		}
	}
}

// measure runs f for every round and server, alternating which server
// goes first (A B, B A, A B …) across the whole run, so slow drift of the
// machine, and whatever the previous measurement left behind, affects
// both alike.
func (b *bench) measure(scenario string, params metrics, srvs map[harness.Kind]*harness.Server, f func(*harness.Server) (metrics, error)) {
	nodes := map[harness.Kind][]*harness.Server{}
	for k, s := range srvs {
		nodes[k] = []*harness.Server{s}
	}
	b.measureNodes(scenario, params, nodes, func(k harness.Kind) (metrics, error) { return f(srvs[k]) })
}

// measureNodes is measure for servers of several processes each (the
// nodes of a mesh region): f measures kind k, and the processes in nodes
// are the ones profiled and whose output is shown when f fails.
func (b *bench) measureNodes(scenario string, params metrics, nodes map[harness.Kind][]*harness.Server, f func(harness.Kind) (metrics, error)) {
	for r := range b.rounds {
		order := b.servers
		if b.turns%2 == 1 {
			order = []harness.Kind{b.servers[1], b.servers[0]}
		}
		b.turns++
		for _, k := range order {
			stopProf := b.profiler(nodes[k], scenario, params, r)
			m, err := f(k)
			stopProf()
			ru := run{Scenario: scenario, Server: k, Round: r, Params: params, Metrics: m}
			if err != nil {
				ru.Err = err.Error()
				var tails strings.Builder
				for i, s := range nodes[k] {
					out := s.Output()
					fmt.Fprintf(&tails, "server output (node %d of %d, tail):\n%s\n", i+1, len(nodes[k]), out[max(0, len(out)-3000):])
				}
				log.Printf("%s %v %s: %v\n%s", scenario, params, k, err, tails.String())
			}
			b.runs = append(b.runs, ru)
			log.Printf("%-10s %-6s %v %v", scenario, k, fmtParams(params), fmtMetrics(m))
		}
	}
}

func fmtParams(p metrics) string {
	var parts []string
	for k, v := range p {
		parts = append(parts, fmt.Sprintf("%s=%g", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func fmtMetrics(m metrics) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s=%.3g", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func (b *bench) rates() []float64 {
	if b.quick {
		return []float64{50e3, 100e3, 200e3, 400e3}
	}
	return []float64{50e3, 100e3, 200e3, 300e3, 400e3, 600e3, 800e3, 1000e3, 1200e3, 1600e3, 2000e3, 2500e3, 3000e3}
}

func (b *bench) all() {
	if b.want("capacity") || b.want("latency") {
		b.withServers(harness.Options{}, func(srvs map[harness.Kind]*harness.Server) {
			b.capacitySweep("capacity", 20, b.rates(), srvs)
		})
	}
	if b.want("overload") {
		pairs := []int{1, 4, 20, 100}
		if b.quick {
			pairs = []int{1, 20}
		}
		b.withServers(harness.Options{}, func(srvs map[harness.Kind]*harness.Server) {
			for _, n := range pairs {
				b.measure("overload", metrics{"pairs": float64(n)}, srvs, func(s *harness.Server) (metrics, error) {
					return measureLoad(s, loadSpec{pairs: n, size: b.size})
				})
			}
		})
	}
	if b.want("isolation") {
		b.withServers(harness.Options{}, func(srvs map[harness.Kind]*harness.Server) {
			b.measure("isolation", metrics{"pairs": 20, "rate": 100e3}, srvs, func(s *harness.Server) (metrics, error) {
				return measureLoad(s, loadSpec{pairs: 20, rate: 100e3, size: b.size, stalledPer: 10})
			})
		})
	}
	if b.want("latency") {
		d := 3 * time.Second
		if b.quick {
			d = time.Second
		}
		// Under load, both servers carry the same background traffic:
		// 80% of the smaller zero-loss capacity (upstream's). Loading each
		// at 80% of its own capacity would load the stronger server many
		// times harder on the same two cores; that figure is reported
		// too, separately.
		common := 0.8 * min(b.zeroLossCapacity("capacity", 20, harness.Derpd), b.zeroLossCapacity("capacity", 20, harness.Derper))
		if common <= 0 {
			common = 50e3
		}
		loaded := func(rate func(k harness.Kind) float64) func(s *harness.Server) (metrics, error) {
			return func(s *harness.Server) (metrics, error) {
				r := rate(s.Kind)
				l, err := startLoad(s.Addr(), loadSpec{pairs: 20, rate: r, size: b.size})
				if err != nil {
					return nil, err
				}
				defer l.close()
				time.Sleep(warmup)
				m, err := latency(s, 10, d)
				if m != nil {
					m["background_pps"] = r
				}
				return m, err
			}
		}
		b.withServers(harness.Options{}, func(srvs map[harness.Kind]*harness.Server) {
			b.measure("latency", metrics{"pairs": 10, "loaded": 0}, srvs, func(s *harness.Server) (metrics, error) {
				return latency(s, 10, d)
			})
			b.measure("latency", metrics{"pairs": 10, "loaded": 1}, srvs, loaded(func(harness.Kind) float64 { return common }))
			b.measure("latency", metrics{"pairs": 10, "loaded": 2}, srvs, loaded(func(k harness.Kind) float64 {
				if c := 0.8 * b.zeroLossCapacity("capacity", 20, k); c > 0 {
					return c
				}
				return common
			}))
		})
	}
	memoryCounts := []int{1000, 10000}
	if b.quick {
		memoryCounts = []int{1000}
	}
	if b.want("memory") {
		b.idleMemorySweep("memory", memoryCounts, harness.Options{})
	}
	if b.want("memory-tls") {
		// The same over TLS, how public relays run: TLS connections
		// cannot use the raw-socket read that lets a plain TCP reader
		// give its buffer back, so they take another path to the same
		// end (wire.Reader.waitIdle); this checks it.
		certDir, err := os.MkdirTemp("", "derpbench-certs")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(certDir)
		ca, err := harness.MakeCA()
		if err == nil {
			err = ca.IssueFiles(certDir, benchHostname, 2)
		}
		if err != nil {
			log.Fatal(err)
		}
		b.idleMemorySweep("memory-tls", memoryCounts, harness.Options{CertDir: certDir, Hostname: benchHostname})
	}
	if b.want("handshakes") {
		b.withServers(harness.Options{}, func(srvs map[harness.Kind]*harness.Server) {
			b.measure("handshakes", metrics{"workers": 8}, srvs, func(s *harness.Server) (metrics, error) {
				return handshakes(s, 8, 2*time.Second)
			})
		})
	}
	if b.want("flows") {
		b.flowsScenario()
	}
	if b.want("record") {
		b.recordScenario()
	}
	if b.want("stalled") {
		b.stalledScenario()
	}
	if b.want("mesh") || b.want("mesh-capacity") || b.want("mesh-slow") {
		b.mesh()
	}
	if b.want("scaling") {
		pairs := []int{1, 10, 100, 1000}
		rates := []float64{25e3, 50e3, 100e3, 200e3, 400e3, 800e3, 1200e3, 1600e3}
		counts := []int{1000, 5000, 15000}
		if b.quick {
			pairs, rates, counts = []int{1, 100}, []float64{50e3, 200e3}, []int{1000, 5000}
		}
		for _, n := range pairs {
			b.withServers(harness.Options{}, func(srvs map[harness.Kind]*harness.Server) {
				b.capacitySweep("scaling", n, rates, srvs)
			})
		}
		b.idleMemorySweep("scaling-memory", counts, harness.Options{})
	}
}

// capacitySweep measures delivered fraction at each offered rate on one
// server per kind.
func (b *bench) capacitySweep(scenario string, pairs int, rates []float64, srvs map[harness.Kind]*harness.Server) {
	nodes := map[harness.Kind][]*harness.Server{}
	for k, s := range srvs {
		nodes[k] = []*harness.Server{s}
	}
	b.rateSweep(scenario, pairs, rates, nodes, func(k harness.Kind, rate float64) (metrics, error) {
		return measureLoad(srvs[k], loadSpec{pairs: pairs, rate: rate, size: b.size})
	})
}

// rateSweep measures point(k, rate) at each offered rate. Once a server
// delivers under 80% at two rates in a row, higher rates are skipped for
// it: it is past capacity and the time is better spent elsewhere.
func (b *bench) rateSweep(scenario string, pairs int, rates []float64, nodes map[harness.Kind][]*harness.Server, point func(k harness.Kind, rate float64) (metrics, error)) {
	failing := map[harness.Kind]int{}
	for _, rate := range rates {
		live := map[harness.Kind]bool{}
		for _, k := range b.servers {
			if failing[k] < 2 {
				live[k] = true
			}
		}
		if len(live) == 0 {
			return
		}
		b.measureNodes(scenario, metrics{"pairs": float64(pairs), "rate": rate}, nodes, func(k harness.Kind) (metrics, error) {
			if !live[k] {
				return nil, fmt.Errorf("skipped: past capacity")
			}
			return point(k, rate)
		})
		for k := range live {
			// Past capacity means the server loses what it is given, not
			// that the load generator could not offer the rate (with
			// 1,000 pairs on two cores it cannot), so the server's own
			// share delivered decides.
			if med := b.median(scenario, k, metrics{"pairs": float64(pairs), "rate": rate}, "delivered_of_written"); med < 0.8 {
				failing[k]++
			} else {
				failing[k] = 0
			}
		}
	}
}

// median of one metric over the rounds of a point.
func (b *bench) median(scenario string, k harness.Kind, params metrics, metric string) float64 {
	return b.medianOf(metric, func(r *run) bool {
		return r.Scenario == scenario && r.Server == k && sameParams(r.Params, params)
	})
}

// medianOf is the median of one metric over the successful runs that
// match, or -1 if none has it.
func (b *bench) medianOf(metric string, match func(*run) bool) float64 {
	var vs []float64
	for i := range b.runs {
		r := &b.runs[i]
		if r.Err == "" && match(r) {
			if v, ok := r.Metrics[metric]; ok {
				vs = append(vs, v)
			}
		}
	}
	if len(vs) == 0 {
		return -1
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}

func sameParams(a, b metrics) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// zeroLossCapacity is the highest swept rate a server delivered ≥ 99% of.
func (b *bench) zeroLossCapacity(scenario string, pairs int, k harness.Kind) float64 {
	best := 0.0
	for _, r := range b.runs {
		if r.Scenario != scenario || r.Server != k || r.Params["pairs"] != float64(pairs) {
			continue
		}
		rate := r.Params["rate"]
		if b.median(scenario, k, r.Params, "delivered_ratio") >= 0.99 && rate > best {
			best = rate
		}
	}
	return best
}

// peak is the highest median of metric over the rates measured for a
// pair count.
func (b *bench) peak(scenario string, pairs int, k harness.Kind, metric string) float64 {
	best := -1.0
	for _, r := range b.runs {
		if r.Scenario != scenario || r.Server != k || r.Params["pairs"] != float64(pairs) {
			continue
		}
		best = max(best, b.median(scenario, k, r.Params, metric))
	}
	return best
}

func (b *bench) save() {
	f, err := os.Create(filepath.Join(b.outDir, "runs.json"))
	if err != nil {
		log.Print(err)
		return
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	enc.SetIndent("", " ")
	enc.Encode(map[string]any{"when": time.Now().UTC(), "packet_size": b.size, "rounds": b.rounds, "runs": b.runs})
}

// benchHostname is the name both servers serve TLS for in the TLS
// scenarios; clients send it as SNI and skip verification.
const benchHostname = "derp.bench.test"

// windowStarts is called by a scenario when its measured window begins,
// with the window's length; with -pprof it starts a CPU profile of the
// server for that window, so that set-up (dialling, handshakes) stays out
// of the profile.
var windowStarts = func(time.Duration) {}

// profiler arms windowStarts for one measurement of srvs (one server, or
// the nodes of a region), when -pprof is set, and returns a function that
// waits for the profiles to be saved.
func (b *bench) profiler(srvs []*harness.Server, scenario string, params metrics, round int) (wait func()) {
	if !b.pprof || len(srvs) == 0 {
		windowStarts = func(time.Duration) {}
		return func() {}
	}
	dir := filepath.Join(b.outDir, "pprof")
	os.MkdirAll(dir, 0o755)
	var wg sync.WaitGroup
	started := false
	windowStarts = func(d time.Duration) {
		if started {
			return
		}
		started = true
		for i, srv := range srvs {
			kind := string(srv.Kind)
			if len(srvs) > 1 {
				kind = fmt.Sprintf("%s-node%d", srv.Kind, i+1)
			}
			name := fmt.Sprintf("%s-%s-%s-r%d.prof", scenario, kind, strings.ReplaceAll(fmtParams(params), " ", "_"), round)
			wg.Add(1)
			go func() {
				defer wg.Done()
				secs := max(1, int(d.Seconds()))
				// The server's own client: the mesh nodes speak only
				// HTTPS.
				res, err := srv.HTTPClient().Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", srv.BaseURL(), secs))
				if err != nil {
					log.Printf("pprof %s: %v", kind, err)
					return
				}
				defer res.Body.Close()
				f, err := os.Create(filepath.Join(dir, name))
				if err != nil {
					log.Print(err)
					return
				}
				io.Copy(f, res.Body)
				f.Close()
			}()
		}
	}
	return func() {
		windowStarts = func(time.Duration) {}
		wg.Wait()
	}
}
