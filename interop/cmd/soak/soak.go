package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/interop/internal/procstat"
	"tailscale.com/types/key"
)

// options are one soak's settings, for every target alike.
type options struct {
	load
	duration time.Duration // of the load
	warmup   time.Duration // of the load before the baseline
	interval time.Duration // between report lines
	settle   time.Duration // longest wait for the server to return to baseline

	goroutineSlack float64 // goroutines above baseline still counted as returned
	heapSlack      float64 // heap bytes above baseline still counted as returned
	rssSlack       float64 // resident bytes above baseline still counted as returned

	derpdArgs     []string      // more flags for derpd (after derpdFlowArgs, so they win)
	flowsInactive time.Duration // derpd's -flows-inactive, see derpdFlowArgs
	poll          time.Duration // how often the server is looked at while settling and quiescing

	outDir string
	text   io.Writer // report lines and summaries
	json   io.Writer // if set, a JSON object a line for every report line and summary

	// holdOpen connections are opened before the load and closed only
	// after the leak checks: a leak on purpose, for the test that proves
	// the checks catch one.
	holdOpen int
}

// derpdFlowArgs make derpd forget the flows it counts within the settle
// time: an idle flow after inactive, swept every half of that. By
// default it keeps up to 100,000 (-flows-max) until they have been idle
// for five minutes, swept every ten: bounded memory, kept by design,
// that would otherwise still be there when the soak looks for leaks.
// derper counts no flows.
func derpdFlowArgs(inactive time.Duration) []string {
	return []string{"-flows-inactive=" + inactive.String(), "-flows-sweep=" + (inactive / 2).String()}
}

// sampleEvery is how often the server is looked at for its peaks; report
// lines come every options.interval.
const sampleEvery = 2 * time.Second

// result is everything one soak of one server found.
type result struct {
	Type        string             `json:"type"` // "summary"
	Target      harness.Kind       `json:"target"`
	Duration    float64            `json:"duration_s"`
	Warmup      float64            `json:"warmup_s"`
	Clients     int                `json:"clients"`
	Rate        float64            `json:"rate"`
	Counts      counts             `json:"counts"`
	Latency     latencySummary     `json:"latency"` // of packets to healthy clients
	PeakLive    int64              `json:"peak_live"`
	Server      map[string]float64 `json:"server"`    // counter growth over the load and settle
	Cold        look               `json:"cold"`      // the fresh server
	WarmPeak    look               `json:"warm_peak"` // during the warm-up
	Baseline    look               `json:"baseline"`  // after the warm-up
	Peak        look               `json:"peak"`
	Final       look               `json:"final"`
	SettledIn   float64            `json:"settled_s"` // -1: never, within options.settle
	ServerCores float64            `json:"server_cores"`
	SoakCores   float64            `json:"soak_cores"`
	MachineCore float64            `json:"machine_cores"`
	LoadAverage float64            `json:"load_average"` // the machine's, averaged over the load
	Checks      []check            `json:"checks"`
	TopStacks   []stackGroup       `json:"top_stacks,omitempty"` // the final goroutines, biggest groups
}

// check is one verdict of the leak and health checks.
type check struct {
	Name   string `json:"name"`
	Pass   bool   `json:"pass"`
	Skip   bool   `json:"skip,omitempty"` // the server has no such figure
	Detail string `json:"detail"`
}

// Failed reports whether any check failed.
func (r *result) Failed() bool {
	for _, c := range r.Checks {
		if !c.Pass && !c.Skip {
			return true
		}
	}
	return false
}

// soak runs one server through its cold start, a warm-up, the baseline,
// the load, the settle and the checks.
//
// The warm-up is the load itself, shorter: it takes the server to the
// high-water marks that a Go program keeps once reached and never gives
// back (the runtime's descriptors of every goroutine that ever ran, a
// map's buckets at its largest), so that the baseline after it already
// holds them. Then only what grows with the churn, a leak, shows as a
// difference between the baseline and the end; what the server keeps
// from its first minutes is reported too, as the cold figures.
func soak(ctx context.Context, kind harness.Kind, o options) (*result, error) {
	dir, err := os.MkdirTemp("", "soak-"+string(kind))
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	opts := harness.Options{Kind: kind}
	if kind == harness.Derpd {
		opts.Args = append(derpdFlowArgs(o.flowsInactive), o.derpdArgs...)
	}
	srv, err := harness.Launch(opts, dir)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	obs := &observer{srv: srv}
	logf := func(format string, args ...any) {
		fmt.Fprintf(o.text, "%-6s %s\n", kind, fmt.Sprintf(format, args...))
	}
	r := &result{Type: "summary", Target: kind, Clients: o.clients, Rate: o.rate, Warmup: o.warmup.Seconds()}
	if r.Cold, err = quiesce(ctx, obs, o.poll); err != nil {
		return nil, err
	}
	logf("on %s; cold: %s", srv.Addr(), gauges(r.Cold))

	if o.warmup > 0 {
		w := drive(ctx, kind, "warm-up", srv, obs, o, o.warmup, r.Cold, logf)
		if w.exited {
			r.Checks = append(r.Checks, check{Name: "server", Detail: fmt.Sprintf("%s exited during the warm-up: %v", kind, srv.ExitErr())})
			r.Checks = append(r.Checks, logCheck(srv.Output()))
			return r, nil
		}
		r.WarmPeak = w.peak
		ok, err := settleTo(ctx, obs, settledTo(r.Cold, o), o.settle, o.poll)
		if err != nil {
			return nil, err
		}
		if !ok {
			l, _ := obs.look()
			r.Checks = append(r.Checks, check{Name: "warm-up", Detail: "not back to the cold figures within the settle time: " + gauges(l)})
		}
	}
	base, err := quiesce(ctx, obs, o.poll)
	if err != nil {
		return nil, err
	}
	r.Baseline = base
	logf("baseline: %s", gauges(base))
	// The heap at the baseline, for `go tool pprof -base` against the
	// final one: what a failed heap check kept, by allocation site.
	if err := obs.save("/debug/pprof/heap", filepath.Join(o.outDir, string(kind)+"-heap-baseline.pb.gz")); err != nil {
		logf("heap profile: %v", err)
	}

	var held []*conn
	hp := newPopulation(srv.URL(), o.load, logf)
	for range o.holdOpen {
		c := &client{priv: key.NewNode(), ended: make(chan *conn, 1), stall: -1}
		k, err := hp.dial(ctx, c, nil, 0)
		if err != nil {
			return nil, err
		}
		go hp.read(k)
		held = append(held, k)
	}
	closeHeld := func() {
		for _, k := range held {
			hp.closeConn(k)
		}
		held = nil
	}
	defer closeHeld()

	d := drive(ctx, kind, "", srv, obs, o, o.duration, base, logf)
	r.Duration, r.Counts, r.Peak, r.PeakLive, r.Latency = d.seconds, d.counts, d.peak, d.peakLive, d.latency
	r.ServerCores, r.SoakCores, r.MachineCore, r.LoadAverage = d.cores.Server, d.cores.Soak, d.cores.Machine, d.cores.Load1
	if d.exited {
		r.Checks = append(r.Checks, check{Name: "server", Detail: fmt.Sprintf("%s exited during the load: %v", kind, srv.ExitErr())})
		r.Checks = append(r.Checks, logCheck(srv.Output()))
		return r, nil
	}
	logf("load stopped after %.0fs; every client has left", r.Duration)

	// Settle: wait until the server is back to its baseline, or settle
	// has passed.
	stopped := time.Now()
	r.SettledIn = -1
	if ok, err := settleTo(ctx, obs, settledTo(base, o), o.settle, o.poll); err != nil {
		return nil, err
	} else if ok {
		r.SettledIn = time.Since(stopped).Seconds()
	}
	final, err := quiesce(ctx, obs, o.poll)
	if err != nil {
		return nil, err
	}
	final.T = time.Since(stopped).Seconds()
	r.Final = final
	r.Server = since(base, final)
	r.Checks = append(r.Checks, judge(base, r.Peak, final, o)...)
	r.Checks = append(r.Checks, clientCheck(r.Counts))
	if err := obs.check(); err != nil {
		r.Checks = append(r.Checks, check{Name: "consistency", Detail: "/debug/check: " + err.Error()})
	} else {
		r.Checks = append(r.Checks, check{Name: "consistency", Pass: true, Detail: "/debug/check answers 200"})
	}
	if err := obs.save("/debug/pprof/heap", filepath.Join(o.outDir, string(kind)+"-heap-final.pb.gz")); err != nil {
		logf("heap profile: %v", err)
	}
	dump, err := obs.goroutineDump(filepath.Join(o.outDir, string(kind)+"-goroutines-final.txt"))
	if err != nil {
		logf("goroutine profile: %v", err)
	} else {
		r.TopStacks = parseGoroutines(dump)
		r.TopStacks = r.TopStacks[:min(len(r.TopStacks), 8)]
	}
	if r.Failed() && kind == harness.Derpd {
		// What the relay holds, for whoever looks into the failure.
		if err := obs.save("/debug/actors?format=json", filepath.Join(o.outDir, "derpd-actors-final.json")); err != nil {
			logf("actors: %v", err)
		}
	}

	closeHeld()
	srv.Stop()
	if err := os.WriteFile(filepath.Join(o.outDir, string(kind)+"-server.log"), []byte(srv.Output()), 0o644); err != nil {
		logf("saving the server's output: %v", err)
	}
	r.Checks = append(r.Checks, exitCheck(srv))
	r.Checks = append(r.Checks, logCheck(srv.Output()))
	return r, nil
}

// settledTo says whether a look is back to base: no more connections
// and actors, goroutines within their slack, and (derpd) no more flows.
func settledTo(base look, o options) func(look) bool {
	return func(l look) bool {
		return l.Conns <= base.Conns && l.ClientActors <= max(base.ClientActors, 0) && l.Actors <= base.Actors &&
			l.Goroutines <= base.Goroutines+o.goroutineSlack && l.Flows <= max(base.Flows, 0)
	}
}

// driven is what one run of the load saw.
type driven struct {
	seconds  float64
	counts   counts
	peak     look
	peakLive int64
	latency  latencySummary
	cores    cores // averages over the run
	exited   bool  // the server exited during it
}

// drive runs the load on srv for d, looking at the server every
// sampleEvery for its peaks and writing a report line (and JSON record)
// every interval, with phase ("warm-up") in front if set. It returns
// once every client has left.
func drive(ctx context.Context, kind harness.Kind, phase string, srv *harness.Server, obs *observer, o options, d time.Duration, base look, logf func(string, ...any)) driven {
	pop := newPopulation(srv.URL(), o.load, logf)
	// Cancelled by a timer rather than given a deadline: a dial that
	// fails because the load ended then always finds the context
	// already done (a deadline reaches the socket a moment before the
	// context says so), and is not counted as an error.
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	time.AfterFunc(d, stop)
	popDone := make(chan struct{})
	go func() {
		pop.run(lctx)
		close(popDone)
	}()
	start := time.Now()
	pid := srv.Process().Pid
	srvCPU, selfCPU, machine := procstat.StartCPU(pid), procstat.StartCPU(os.Getpid()), procstat.StartMachine()
	iv := newIntervalMeter(pid)
	out := driven{peak: base}
	prevCounts, prevLook := counts{}, base
	every := min(sampleEvery, o.interval)
	tick := time.NewTicker(every)
	defer tick.Stop()
	nextReport := o.interval
	profiled := phase != "" // only the load proper is profiled
	loadSum, loadN := 0.0, 0
	label := string(kind)
	if phase != "" {
		label += " " + phase
	}
loop:
	for {
		select {
		case <-popDone:
			break loop
		case <-srv.Exited():
			out.exited = true
			stop()
			<-popDone
			break loop
		case <-tick.C:
			l, err := obs.look()
			if err != nil {
				logf("looking at the server: %v", err)
				continue
			}
			l.T = time.Since(start).Seconds()
			out.peak.raise(l)
			if la, err := procstat.LoadAverage(); err == nil {
				loadSum += la
				loadN++
			}
			if !profiled && time.Since(start) >= d-every {
				// The heap while loaded, next to the final one: what a
				// server holds per client, and what it keeps after.
				profiled = true
				if err := obs.save("/debug/pprof/heap", filepath.Join(o.outDir, string(kind)+"-heap-loaded.pb.gz")); err != nil {
					logf("heap profile: %v", err)
				}
			}
			c := pop.n.snapshot()
			out.peakLive = max(out.peakLive, c.Live)
			if time.Since(start) >= nextReport {
				nextReport += o.interval
				rec := intervalRecord{Type: "interval", Target: kind, Phase: phase, T: l.T, Counts: c, Latency: pop.latency.summary(), Server: since(base, l), Look: l, Cores: iv.read()}
				fmt.Fprintln(o.text, intervalLine(label, rec, prevCounts, since(base, prevLook)))
				writeJSON(o.json, rec)
				prevCounts, prevLook = c, l
			}
		}
	}
	out.seconds = time.Since(start).Seconds()
	out.cores = cores{Server: srvCPU.Cores(), Soak: selfCPU.Cores(), Machine: machine.Cores(), Load1: loadSum / float64(max(loadN, 1))}
	out.counts = pop.n.snapshot()
	out.latency = pop.latency.summary()
	return out
}

// quiesce collects the server's garbage until its resident memory stops
// falling, and looks at it then. A collection lowers the heap's goal to
// what is live, and Go's scavenger gives the memory above it back to the
// OS in the background within a second or two; without one, resident
// memory stays near the goal the peak set, which says nothing about
// leaks. Objects a server lets go of only some time after their clients
// have (timers, closing goroutines) need a later collection, hence
// several. The baseline and the final figures are both taken this way.
func quiesce(ctx context.Context, obs *observer, step time.Duration) (look, error) {
	prev := -1.0
	for i := 0; ; i++ {
		if err := obs.gc(); err != nil {
			return look{}, err
		}
		if !sleepCtx(ctx, step) {
			return look{}, ctx.Err()
		}
		l, err := obs.look()
		if err != nil {
			return look{}, err
		}
		if (prev >= 0 && l.RSSBytes >= prev-quiesceFloor) || i == quiesceSteps-1 {
			return l, nil
		}
		prev = l.RSSBytes
	}
}

// Quiescing: a collection and a look every options.poll until resident
// memory falls by less than quiesceFloor in a step, quiesceSteps at most.
const (
	quiesceSteps = 30
	quiesceFloor = 1 << 20
)

// settleTo looks at the server every poll until done says yes or
// limit has passed, and reports which.
func settleTo(ctx context.Context, obs *observer, done func(look) bool, limit, poll time.Duration) (bool, error) {
	deadline := time.Now().Add(limit)
	for {
		l, err := obs.look()
		if err != nil {
			return false, err
		}
		if done(l) {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		if !sleepCtx(ctx, poll) {
			return false, ctx.Err()
		}
	}
}

// judge compares the server after the load with its baseline.
func judge(base, peak, final look, o options) []check {
	var cs []check
	cs = append(cs, gauge("connections", base.Conns, peak.Conns, final.Conns, 0, count))
	cs = append(cs, gauge("goroutines", base.Goroutines, peak.Goroutines, final.Goroutines, o.goroutineSlack, count))
	if base.Actors < 0 {
		cs = append(cs, check{Name: "actors", Skip: true, Detail: "the server has no actors"})
	} else {
		cs = append(cs, gauge("actors", base.Actors, peak.Actors, final.Actors, 0, count))
	}
	cs = append(cs, gauge("heap", base.HeapBytes, peak.HeapBytes, final.HeapBytes, o.heapSlack, mib))
	cs = append(cs, gauge("rss", base.RSSBytes, peak.RSSBytes, final.RSSBytes, o.rssSlack, mib))
	return cs
}

// gauge checks that a figure came back to within slack of its baseline.
func gauge(name string, base, peak, final, slack float64, f func(float64) string) check {
	c := check{Name: name, Pass: final <= base+slack}
	c.Detail = fmt.Sprintf("baseline %s, peak %s, final %s", f(base), f(peak), f(final))
	if slack > 0 {
		c.Detail += fmt.Sprintf(" (allowed: baseline + %s)", f(slack))
	}
	if base < 0 || final < 0 {
		c.Pass, c.Detail = false, name+": not exported by the server"
	}
	return c
}

func clientCheck(c counts) check {
	ch := check{Name: "clients", Pass: c.Errors() == 0}
	ch.Detail = fmt.Sprintf("%d errors: %d failed connects, %d connections closed by the relay for no reason, %d packets misdelivered",
		c.Errors(), c.ConnectErrors, c.Unexpected, c.Misdelivered)
	return ch
}

func exitCheck(srv *harness.Server) check {
	if err := srv.ExitErr(); err != nil {
		return check{Name: "exit", Detail: fmt.Sprintf("%s exited with %v when stopped (SIGTERM)", srv.Kind, err)}
	}
	return check{Name: "exit", Pass: true, Detail: fmt.Sprintf("%s exited with status 0 when stopped", srv.Kind)}
}

// logCheck looks for a panic in the server's output.
func logCheck(out string) check {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(strings.ToLower(line), "panic") {
			return check{Name: "log", Detail: "the server logged: " + strings.TrimSpace(line)}
		}
	}
	return check{Name: "log", Pass: true, Detail: "no panic in the server's output"}
}

func writeJSON(w io.Writer, v any) {
	if w == nil {
		return
	}
	b, _ := json.Marshal(v)
	w.Write(append(b, '\n'))
}

// intervalMeter measures the cores used between two report lines.
type intervalMeter struct {
	pid       int
	srv, self *procstat.CPUMeter
	machine   *procstat.MachineMeter
}

func newIntervalMeter(pid int) *intervalMeter {
	m := &intervalMeter{pid: pid}
	m.restart()
	return m
}

func (m *intervalMeter) restart() {
	m.srv, m.self, m.machine = procstat.StartCPU(m.pid), procstat.StartCPU(os.Getpid()), procstat.StartMachine()
}

func (m *intervalMeter) read() cores {
	c := cores{Server: m.srv.Cores(), Soak: m.self.Cores(), Machine: m.machine.Cores()}
	c.Load1, _ = procstat.LoadAverage()
	m.restart()
	return c
}

// cores are the CPU used over an interval: by the server, by the soak
// (its clients), and by the whole machine (everyone else's work too).
type cores struct {
	Server  float64 `json:"server"`
	Soak    float64 `json:"soak"`
	Machine float64 `json:"machine"`
	Load1   float64 `json:"load1"` // the machine's one-minute load average at the end
}

// intervalRecord is one report line's figures: cumulative counts, the
// server's counters since the baseline, its gauges now, and the cores
// used since the previous line.
type intervalRecord struct {
	Type    string             `json:"type"` // "interval"
	Target  harness.Kind       `json:"target"`
	Phase   string             `json:"phase,omitempty"` // "warm-up", or the load proper
	T       float64            `json:"t"`
	Counts  counts             `json:"counts"`
	Latency latencySummary     `json:"latency"` // so far
	Server  map[string]float64 `json:"server"`
	Look    look               `json:"look"`
	Cores   cores              `json:"cores"`
}
