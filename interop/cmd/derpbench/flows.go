package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/derpd/derpd/interop/harness"
)

// The "flows" scenario is the cost of derpd's flow counting: every
// reader counts each packet into its connection's flow tally, and the
// flows actor collects the tallies every second. Two derpd servers run
// side by side, one with flows on (the default) and one with -flows=false,
// and carry the load of the capacity scenario's CPU row (20 pairs, 100k
// packets/s, -size bytes) through measureLoad, alternately. Upstream
// derper has no flows and does not run.
//
// The effect looked for is small (the goal is within 5%, and the tally
// costs 13 ns a packet in its benchmark, about 30 ns in the profiles
// here, of the 4-6 µs of CPU a relayed packet costs),
// while derpd's CPU at 100k moves by far more than that on this 2-core
// machine. Within one load it is steady (a few percent from one 2 s
// window to the next); from one load to the next, with new connections,
// it moves by up to a third, and a neighbour busy on the other core moves
// it too (down: a starved server batches more). Longer windows would
// average none of that; more loads do. So the scenario measures many more
// on/off pairs than -rounds alone (flowsInterleave per round), each pair
// back to back and in alternating order (on off, off on, …) so that a
// neighbour's burst tends to fall on both. The goal is judged on the
// median of the pairs' own ratios, the steadiest of the estimates tried:
// resampling 85 pairs of four trial runs, it moved by 2.2% (one standard
// deviation) over 30 pairs and 1.4% over 60, where the ratio of the two
// medians moved by 3.9% and 2.8%. A run of 30 pairs gave 1.04×, which is
// too close to the 5% line for a cost that the profiles put near 1%, so
// a round is 20 pairs: 60 by default, about five minutes. The medians,
// the spread and every pair are in the table too.
//
// What the flow counting costs can also be read off the CPU profiles,
// free of that noise: run with -pprof, then
//
//	go tool pprof -top -focus 'FlowTally|actors/flows' bench-out/pprof/flows-derpd-flows=1_*.prof

const (
	flowsPairs = 20
	flowsRate  = 100e3
	// flowsInterleave is the on/off pairs measured per round of -rounds.
	flowsInterleave = 20
)

// flowsParams is the point of one configuration.
func flowsParams(on bool) metrics {
	f := 0.0
	if on {
		f = 1
	}
	return metrics{"pairs": flowsPairs, "rate": flowsRate, "flows": f}
}

// flowsScenario runs the scenario.
func (b *bench) flowsScenario() {
	b.onOffScenario(onOff{
		name:       "flows",
		interleave: flowsInterleave,
		spec:       loadSpec{pairs: flowsPairs, rate: flowsRate, size: b.size},
		// Flows on is the default; the flag is given both ways so that
		// the command line says which server is which.
		args:   func(on bool, _ string) []string { return []string{fmt.Sprintf("-flows=%v", on)} },
		params: flowsParams,
		measure: func(srv *harness.Server, spec loadSpec, on bool, _ string) (metrics, error) {
			return measureLoadThen(srv, spec, func(l *load, m metrics) error { return checkFlows(srv, l, on, m) })
		},
	})
}

// onOff is a scenario of two derpd servers, one with a feature on and
// one with it off, carrying the same load alternately (flows, record).
type onOff struct {
	name       string
	interleave int // on/off pairs measured per round of -rounds
	spec       loadSpec
	args       func(on bool, dir string) []string // the server's flags; dir is the scenario's temporary directory
	params     func(on bool) metrics
	measure    func(srv *harness.Server, spec loadSpec, on bool, dir string) (metrics, error)
}

// onOffScenario launches both servers and measures interleave pairs per
// round, each pair back to back and in alternating order (on off, off on,
// …), so that a neighbour's burst tends to fall on both (see the flows
// scenario's comment for why pairs).
func (b *bench) onOffScenario(sc onOff) {
	dir, err := os.MkdirTemp("", "derpbench-"+sc.name)
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srvs := map[bool]*harness.Server{}
	defer func() {
		for _, s := range srvs {
			s.Stop()
		}
	}()
	for _, on := range []bool{true, false} {
		opts := harness.Options{Kind: harness.Derpd, Args: sc.args(on, dir)}
		s, err := harness.Launch(opts, filepath.Join(dir, fmt.Sprintf("%s-%v", sc.name, on)))
		if err != nil {
			log.Panic(err) // unlike Fatal, runs the deferred Stop of the other server
		}
		srvs[on] = s
	}
	for r := range b.rounds * sc.interleave {
		order := []bool{true, false}
		if b.turns%2 == 1 {
			order = []bool{false, true}
		}
		b.turns++
		for i, on := range order {
			srv, params := srvs[on], sc.params(on)
			stopProf := b.profiler([]*harness.Server{srv}, sc.name, params, r)
			m, err := sc.measure(srv, sc.spec, on, dir)
			stopProf()
			if m != nil {
				m["first"] = float64(1 - i) // 1 if measured first in its pair
			}
			// Round is the pair's number here, so that the table can
			// pair the two measurements again from runs.json.
			ru := run{Scenario: sc.name, Server: harness.Derpd, Round: r, Params: params, Metrics: m}
			if err != nil {
				ru.Err = err.Error()
				out := srv.Output()
				log.Printf("%s %v: %v\nserver output (tail):\n%s", sc.name, fmtParams(params), err, out[max(0, len(out)-3000):])
			}
			b.runs = append(b.runs, ru)
			log.Printf("%-10s %-6s %v %v", sc.name, harness.Derpd, fmtParams(params), fmtMetrics(m))
		}
	}
}

// flowsPage is the part of derpd's /debug/flows?format=json read here.
type flowsPage struct {
	Enabled  bool `json:"enabled"`
	Answered bool `json:"answered"`
	Tracked  int  `json:"tracked"`
	Flows    []struct {
		Src     string  `json:"src"`
		Dst     string  `json:"dst"`
		Via     string  `json:"via"`
		Packets int64   `json:"packets"`
		PPS     float64 `json:"pps"`
	} `json:"flows"`
}

// checkFlows reads /debug/flows at the end of a window, while the load
// still flows, and records whether the server counted the load's flows:
// with flows on, each of the load's sender → receiver flows must be
// there (flows_counted of flows_expected), with the packets the flows
// actor had collected of them (flows_counted_packets, against what the
// senders had written by then: the actor collects once a second, so up
// to a second's worth is still in the tallies). With flows off the page
// must say so, or the comparison would be of two servers that count.
//
// Flows of earlier windows are still tracked (derpd forgets a flow after
// 5 minutes idle), so the derpd_flows_tracked gauge, recorded as
// flows_tracked, grows by the pair count each window; flows_counted looks
// for this load's keys.
func checkFlows(srv *harness.Server, l *load, on bool, m metrics) error {
	written := l.sent()
	res, err := srv.HTTPClient().Get(srv.BaseURL() + "/debug/flows?format=json&limit=0")
	if err != nil {
		return fmt.Errorf("/debug/flows: %w", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return fmt.Errorf("/debug/flows: %w", err)
	}
	if res.StatusCode != 200 {
		return fmt.Errorf("/debug/flows: %s: %s", res.Status, strings.TrimSpace(string(body)))
	}
	var page flowsPage
	if err := json.Unmarshal(body, &page); err != nil {
		return fmt.Errorf("/debug/flows: %w", err)
	}
	if !on {
		if page.Enabled {
			return fmt.Errorf("the -flows=false server counts flows")
		}
		return nil
	}
	if !page.Enabled || !page.Answered {
		return fmt.Errorf("/debug/flows: enabled %v, answered %v", page.Enabled, page.Answered)
	}
	want := map[[2]string]bool{}
	for i, s := range l.senders {
		want[[2]string{s.rc.pub.String(), l.receivers[i].pub.String()}] = true
	}
	counted, packets, pps := 0, int64(0), 0.0
	for _, f := range page.Flows {
		if f.Via == "" && want[[2]string{f.Src, f.Dst}] && f.Packets > 0 {
			counted++
			packets += f.Packets
			pps += f.PPS
		}
	}
	m["flows_expected"] = float64(len(want))
	m["flows_counted"] = float64(counted)
	m["flows_counted_packets"] = float64(packets)
	m["flows_counted_pps"] = pps
	m["flows_written_packets"] = float64(written)
	m["flows_counted_of_written"] = float64(packets) / float64(max(1, written))
	if vs, err := srv.Metrics(); err == nil {
		m["flows_tracked"] = vs["derpd_flows_tracked"]
	}
	if counted < len(want) {
		return fmt.Errorf("flows on, but /debug/flows shows %d of the load's %d flows", counted, len(want))
	}
	return nil
}

// flowsRound is one on/off pair of the scenario.
type flowsRound struct {
	round     int
	onFirst   bool
	on, off   metrics
	ratio     float64 // CPU on / off
	completed bool    // both measured without error
}

// flowsRounds pairs the scenario's runs by round.
func (b *bench) flowsRounds() []flowsRound {
	byRound := map[int]*flowsRound{}
	var order []int
	for i := range b.runs {
		r := &b.runs[i]
		if r.Scenario != "flows" {
			continue
		}
		fr := byRound[r.Round]
		if fr == nil {
			fr = &flowsRound{round: r.Round}
			byRound[r.Round] = fr
			order = append(order, r.Round)
		}
		if r.Err != "" {
			continue
		}
		if r.Params["flows"] == 1 {
			fr.on = r.Metrics
			fr.onFirst = r.Metrics["first"] == 1
		} else {
			fr.off = r.Metrics
		}
	}
	var out []flowsRound
	for _, n := range order {
		fr := byRound[n]
		if fr.on != nil && fr.off != nil && fr.off["server_cores"] > 0 {
			fr.ratio = fr.on["server_cores"] / fr.off["server_cores"]
			fr.completed = true
		}
		out = append(out, *fr)
	}
	return out
}

// flowsGoal is the issue's: CPU with flows on within 5% of flows off.
const flowsGoal = 1.05

// flowsTable is the scenario's own table: its two columns are derpd with
// flows on and off, not derpd and derper, so it does not share the main
// table's. Then every round, so the spread is in view.
func (b *bench) flowsTable() string {
	if !b.hasScenario("flows") {
		return ""
	}
	on, off := flowsParams(true), flowsParams(false)
	med := func(p metrics, metric string) float64 { return b.median("flows", harness.Derpd, p, metric) }
	rounds := b.flowsRounds()
	var ratios, onCPU, offCPU []float64
	for _, fr := range rounds {
		if fr.completed {
			ratios = append(ratios, fr.ratio)
			onCPU = append(onCPU, fr.on["server_cores"])
			offCPU = append(offCPU, fr.off["server_cores"])
		}
	}
	slices.Sort(ratios)
	slices.Sort(onCPU)
	slices.Sort(offCPU)
	met := func(ratio float64) string {
		if ratio <= 0 || len(ratios) == 0 {
			return ""
		}
		return map[bool]string{true: "yes", false: "NO"}[ratio <= flowsGoal]
	}

	var sb strings.Builder
	n := len(ratios)
	fmt.Fprintf(&sb, "\nflows: derpd with flows counted (the default) and with -flows=false, %d pairs at %gk packets/s, %d-byte packets; %d on/off pairs measured back to back\n\n", flowsPairs, flowsRate/1e3, b.size, n)
	fmt.Fprintf(&sb, "| figure | unit | flows on | flows off | on/off | goal | met |\n|---|---|---:|---:|---:|---|---|\n")
	cpuOn, cpuOff := med(on, "server_cores"), med(off, "server_cores")
	ratio := -1.0
	if cpuOn > 0 && cpuOff > 0 {
		ratio = cpuOn / cpuOff
	}
	fmt.Fprintf(&sb, "| server CPU at %gk packets/s, median | cores | %s | %s | %s | | |\n", flowsRate/1e3, num(cpuOn), num(cpuOff), ratioOrNA(ratio))
	if n > 0 {
		// The middle of an even count is the mean of its two middle
		// pairs; the upper one alone (the tool's medianOf) leans high by
		// half a step, which at 60 pairs can be a percent.
		pm := (ratios[(n-1)/2] + ratios[n/2]) / 2
		costlier := 0
		for _, r := range ratios {
			if r > 1 {
				costlier++
			}
		}
		fmt.Fprintf(&sb, "|   on/off of each pair (measured back to back), median | | | | %s | ≤ %.2f× | %s |\n", ratioStr(pm), flowsGoal, met(pm))
		fmt.Fprintf(&sb, "|   on/off of each pair, middle half | | | | %s – %s | | |\n", ratioStr(ratios[n/4]), ratioStr(ratios[(3*n-1)/4]))
		fmt.Fprintf(&sb, "|   on/off of each pair, lowest – highest | | | | %s – %s | | |\n", ratioStr(ratios[0]), ratioStr(ratios[n-1]))
		fmt.Fprintf(&sb, "|   pairs in which flows on cost more | pairs | %d of %d | | | | |\n", costlier, n)
		fmt.Fprintf(&sb, "|   CPU, lowest – highest | cores | %s – %s | %s – %s | | | |\n", num(onCPU[0]), num(onCPU[n-1]), num(offCPU[0]), num(offCPU[n-1]))
	}
	dOn, dOff := med(on, "delivered_ratio"), med(off, "delivered_ratio")
	fmt.Fprintf(&sb, "| delivered at %gk packets/s, median | %% | %s | %s | %s | | |\n", flowsRate/1e3, num(100*dOn), num(100*dOff), ratioOrNA(safeRatio(dOn, dOff)))
	fmt.Fprintf(&sb, "| load generator CPU, median | cores | %s | %s | | | |\n", num(med(on, "loadgen_cores")), num(med(off, "loadgen_cores")))
	// As in the mesh table: tick-based counts make it a few hundredths
	// negative on a quiet machine, which means none.
	fmt.Fprintf(&sb, "| other work on the machine during the windows, median | cores | %s | %s | | | |\n", num(max(0, med(on, "other_cores"))), num(max(0, med(off, "other_cores"))))
	// Did the flows-on server count? The fewest of the load's flows any
	// window found (a window that found too few failed, and is not in the
	// CPU figures, but counts here), and the median share of the written
	// packets the flows actor had collected by the end of the window.
	fewest := -1.0
	for _, r := range b.runs {
		if r.Scenario == "flows" && r.Params["flows"] == 1 {
			if c, ok := r.Metrics["flows_counted"]; ok && (fewest < 0 || c < fewest) {
				fewest = c
			}
		}
	}
	fmt.Fprintf(&sb, "| load's flows on /debug/flows at the end of a window, fewest | of %d | %s | off | | | |\n", flowsPairs, count(fewest))
	fmt.Fprintf(&sb, "|   their packets collected / packets written by then (collected once a second), median | %% | %s | off | | | |\n", num(100*med(on, "flows_counted_of_written")))
	if errs := b.flowsErrors(); errs > 0 {
		fmt.Fprintf(&sb, "| measurements failed (not in the figures) | | %d | | | | |\n", errs)
	}

	if n > 0 && (ratios[0] < 1/flowsGoal || ratios[n-1] > flowsGoal) {
		fmt.Fprintf(&sb, "\nOne pair's ratio ranges %s – %s here, wider than the %.0f%% looked for: a single pair says nothing, only the medians over the %d pairs do.\n",
			ratioStr(ratios[0]), ratioStr(ratios[n-1]), 100*(flowsGoal-1), n)
	}
	fmt.Fprintf(&sb, "\n| pair | order | flows on, cores | flows off, cores | on/off | delivered on | delivered off | flows counted | collected / written |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, fr := range rounds {
		if !fr.completed {
			fmt.Fprintf(&sb, "| %d | | failed | | | | | | |\n", fr.round+1)
			continue
		}
		order := "off, on"
		if fr.onFirst {
			order = "on, off"
		}
		fmt.Fprintf(&sb, "| %d | %s | %s | %s | %s | %s%% | %s%% | %s | %s%% |\n", fr.round+1, order,
			num(fr.on["server_cores"]), num(fr.off["server_cores"]), ratioStr(fr.ratio),
			num(100*fr.on["delivered_ratio"]), num(100*fr.off["delivered_ratio"]),
			count(fr.on["flows_counted"]), num(100*fr.on["flows_counted_of_written"]))
	}
	return sb.String()
}

func (b *bench) flowsErrors() int {
	n := 0
	for _, r := range b.runs {
		if r.Scenario == "flows" && r.Err != "" {
			n++
		}
	}
	return n
}

func safeRatio(a, b float64) float64 {
	if a < 0 || b <= 0 {
		return -1
	}
	return a / b
}

func ratioOrNA(r float64) string {
	if r < 0 {
		return "n/a"
	}
	return ratioStr(r)
}

// count is a whole number for the table, n/a if negative.
func count(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", v)
}
