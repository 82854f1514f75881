package main

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/interop/internal/procstat"
	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// Timing of one measurement: load runs for warmup before counting starts,
// so connection set-up and queue filling are not measured.
var (
	warmup = 500 * time.Millisecond
	window = 2 * time.Second
)

type metrics map[string]float64

// measureLoad runs spec against srv and returns delivered fraction,
// goodput and server CPU over the window.
func measureLoad(srv *harness.Server, spec loadSpec) (metrics, error) {
	return measureLoadThen(srv, spec, nil)
}

// measureLoadThen is measureLoad with a look at the server at the end of
// the window: after, if set, runs while the load still flows but after
// the window's CPU has been read, so that what it asks the server costs
// the figure nothing. It may add to the metrics, and its error is the
// measurement's.
func measureLoadThen(srv *harness.Server, spec loadSpec, after func(*load, metrics) error) (metrics, error) {
	l, err := startLoad(srv.Addr(), spec)
	if err != nil {
		return nil, err
	}
	defer l.close()
	wait, win := warmup, window
	if spec.stalledPer > 0 {
		// Both servers cut off a receiver whose writes have blocked for
		// 2 s; the window must close before that, or part of it would
		// measure no stalled receiver at all.
		wait, win = 200*time.Millisecond, 1500*time.Millisecond
	}
	time.Sleep(wait)
	windowStarts(win)
	c0 := l.counts()
	cpu := procstat.StartCPU(srv.Process().Pid)
	self := procstat.StartCPU(selfPID)
	machine := procstat.StartMachine()
	time.Sleep(win)
	c1 := l.counts()
	if spec.stalledPer > 0 {
		// Still 2 connections per pair and the stalled receiver?
		m, err := srv.Metrics()
		if err != nil {
			return nil, err
		}
		if got, want := m["derp_current_connections"], float64(2*spec.pairs+1); got != want {
			return nil, fmt.Errorf("%v connections at the end of the window, want %v: the stalled receiver was cut off during it", got, want)
		}
	}
	m := l.figures(c0, c1)
	m["server_cores"] = cpu.Cores()
	m["loadgen_cores"] = self.Cores()
	// What else the machine did meanwhile (other processes, interrupts
	// charged to none), as measureMesh records it: a figure taken next to
	// a busy neighbour says so here.
	m["machine_cores"] = machine.Cores()
	m["other_cores"] = m["machine_cores"] - m["server_cores"] - m["loadgen_cores"]
	if after != nil {
		if err := after(l, m); err != nil {
			return m, err
		}
	}
	return m, nil
}

// loadCounts is a snapshot of what a load has written and delivered.
type loadCounts struct {
	at                     time.Time
	packets, bytes, sent   int64
	sidePackets, sideBytes int64
}

func (l *load) counts() loadCounts {
	return loadCounts{at: time.Now(), packets: l.packets.Load(), bytes: l.bytes.Load(), sent: l.sent(),
		sidePackets: l.sidePackets.Load(), sideBytes: l.sideBytes.Load()}
}

// figures are the delivery figures of a load between two snapshots.
// delivered_ratio is the healthy receivers' share of what the load was
// meant to offer them; packets for a stalled or side receiver are not in
// its denominator.
func (l *load) figures(c0, c1 loadCounts) metrics {
	spec := l.spec
	dt := c1.at.Sub(c0.at).Seconds()
	m := metrics{
		"delivered_pps": float64(c1.packets-c0.packets) / dt,
		"goodput_mbps":  float64(c1.bytes-c0.bytes) * 8 / dt / 1e6,
		"written_pps":   float64(c1.sent-c0.sent) / dt,
		// What the server delivered of what it was actually given: below
		// delivered_ratio's denominator when the load generator falls
		// short of the offered rate.
		"delivered_of_written": float64(c1.packets-c0.packets) / float64(max(1, c1.sent-c0.sent)),
		"offered_pps":          spec.rate,
		"pairs":                float64(spec.pairs),
		"delivered_ratio":      0,
	}
	healthyShare := 1.0
	if every := max(spec.stalledPer, spec.sidePer); every > 0 {
		healthyShare = float64(every-1) / float64(every)
	}
	if spec.sidePer > 0 {
		m["side_delivered_pps"] = float64(c1.sidePackets-c0.sidePackets) / dt
		// Of everything written, healthy and side receivers together.
		m["delivered_of_written"] = float64(c1.packets-c0.packets+c1.sidePackets-c0.sidePackets) / float64(max(1, c1.sent-c0.sent))
		if spec.rate > 0 {
			m["side_delivered_ratio"] = m["side_delivered_pps"] / (spec.rate / float64(spec.sidePer))
		}
	}
	if spec.rate > 0 {
		m["delivered_ratio"] = m["delivered_pps"] / (spec.rate * healthyShare)
	}
	return m
}

// latency measures round trips through Tailscale's own client library:
// pairs of clients echo a small packet back and forth, one in flight per
// pair (closed loop).
func latency(srv *harness.Server, pairs int, d time.Duration) (metrics, error) {
	type pair struct{ a, b *harness.Client }
	var ps []pair
	defer func() {
		for _, p := range ps {
			p.a.Close()
			p.b.Close()
		}
	}()
	for range pairs {
		a, err := harness.Dial(srv.URL(), key.NewNode())
		if err != nil {
			return nil, err
		}
		b, err := harness.Dial(srv.URL(), key.NewNode())
		if err != nil {
			a.Close()
			return nil, err
		}
		ps = append(ps, pair{a, b})
	}
	var mu sync.Mutex
	var rtts []time.Duration
	var failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	windowStarts(d)
	deadline := time.Now().Add(d)
	for _, p := range ps {
		wg.Add(1)
		go func() { // echo side; ends when its client is closed
			for {
				m, err := p.b.NextErr()
				if err != nil {
					return
				}
				if pkt, ok := m.(derp.ReceivedPacket); ok {
					if p.b.Send(pkt.Source, pkt.Data) != nil {
						return
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			payload := make([]byte, 64)
			var local []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := p.a.Send(p.b.Pub, payload); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				}
				m, err := p.a.NextErr()
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				}
				if _, ok := m.(derp.ReceivedPacket); ok {
					local = append(local, time.Since(t0))
				}
			}
			mu.Lock()
			rtts = append(rtts, local...)
			mu.Unlock()
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d + 30*time.Second):
		return nil, fmt.Errorf("latency round did not finish")
	}
	if len(rtts) == 0 {
		return nil, fmt.Errorf("no round trips completed: %v", firstErr.Load())
	}
	slices.Sort(rtts)
	q := func(f float64) float64 {
		return float64(rtts[min(len(rtts)-1, int(f*float64(len(rtts))))].Microseconds())
	}
	return metrics{
		"rtt_p50_us": q(0.50),
		"rtt_p99_us": q(0.99),
		"rtt_max_us": float64(rtts[len(rtts)-1].Microseconds()),
		"samples":    float64(len(rtts)),
		"failures":   float64(failures.Load()),
	}, nil
}

// forceGC asks the server to collect garbage, so resident memory reflects
// live data. Both servers serve /debug/gc to loopback.
func forceGC(srv *harness.Server) {
	res, err := srv.HTTPClient().Get(srv.BaseURL() + "/debug/gc")
	if err == nil {
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
}

// idleMemory opens n handshaken connections that then do nothing, and
// reports the resident memory they added, per connection.
func idleMemory(srv *harness.Server, n int) (metrics, error) {
	pid := srv.Process().Pid
	forceGC(srv)
	time.Sleep(200 * time.Millisecond)
	rss0, err := procstat.RSSKiB(pid)
	if err != nil {
		return nil, err
	}
	serverName := ""
	if srv.TLS() {
		serverName = srv.Opts.Hostname
	}
	conns, err := dialMany(srv.Addr(), serverName, n, 16)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		return nil, err
	}
	// Let per-connection goroutines settle into their idle state.
	time.Sleep(time.Second)
	forceGC(srv)
	time.Sleep(500 * time.Millisecond)
	rss1, err := procstat.RSSKiB(pid)
	if err != nil {
		return nil, err
	}
	return metrics{
		"conns":            float64(n),
		"rss_kib":          float64(rss1),
		"rss_per_conn_kib": float64(rss1-rss0) / float64(n),
		"baseline_rss_kib": float64(rss0),
	}, nil
}

// dialMany opens n connections with workers in parallel.
func dialMany(addr, serverName string, n, workers int) ([]*rawClient, error) {
	out := make([]*rawClient, n)
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || firstErr.Load() != nil {
					return
				}
				c, err := dialRawTLS(addr, serverName)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				out[i] = c
			}
		}()
	}
	wg.Wait()
	var conns []*rawClient
	for _, c := range out {
		if c != nil {
			conns = append(conns, c)
		}
	}
	if err, _ := firstErr.Load().(error); err != nil {
		return conns, err
	}
	return conns, nil
}

// handshakes measures complete connection set-ups per second: TCP
// connect, HTTP upgrade, ServerKey, ClientInfo, ServerInfo, close.
func handshakes(srv *harness.Server, workers int, d time.Duration) (metrics, error) {
	var count, fails atomic.Int64
	var wg sync.WaitGroup
	windowStarts(d)
	cpu := procstat.StartCPU(srv.Process().Pid)
	deadline := time.Now().Add(d)
	t0 := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				c, err := dialRaw(srv.Addr())
				if err != nil {
					fails.Add(1)
					continue
				}
				c.Close()
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	dt := time.Since(t0).Seconds()
	return metrics{
		"handshakes_per_sec": float64(count.Load()) / dt,
		"failures":           float64(fails.Load()),
		"server_cores":       cpu.Cores(),
	}, nil
}
