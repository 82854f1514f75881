package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/derpd/derpd/interop/harness"
)

// The "record" scenario is the cost of derpd -record: every reader
// journals each packet it routes and every actor each message it
// receives. As the flows scenario does for flow counting, two derpd
// servers run side by side, one with -record (payloads by size only, the
// default) and one without, and carry 20 pairs at 100k packets/s,
// alternately, recordInterleave on/off pairs per round, each pair back to
// back in alternating order. The figure is the median of the pairs' own
// CPU ratios (see flows.go for why). Upstream derper has no recording and
// does not run. The journal is written to a temporary directory and its
// size reported, so a run that reached -record-max-bytes (and so stopped
// paying for recording) is seen.
const (
	recordPairs      = 20
	recordRate       = 100e3
	recordInterleave = 10
)

func recordParams(on bool) metrics {
	f := 0.0
	if on {
		f = 1
	}
	return metrics{"pairs": recordPairs, "rate": recordRate, "record": f}
}

// recordScenario runs the scenario.
func (b *bench) recordScenario() {
	journal := func(dir string) string { return filepath.Join(dir, "derpd.journal") }
	b.onOffScenario(onOff{
		name:       "record",
		interleave: recordInterleave,
		spec:       loadSpec{pairs: recordPairs, rate: recordRate, size: b.size},
		args: func(on bool, dir string) []string {
			if on {
				return []string{"-record", journal(dir)}
			}
			return nil
		},
		params: recordParams,
		measure: func(srv *harness.Server, spec loadSpec, on bool, dir string) (metrics, error) {
			m, err := measureLoad(srv, spec)
			if m != nil && on {
				if fi, err := os.Stat(journal(dir)); err == nil {
					m["journal_bytes"] = float64(fi.Size())
				}
			}
			return m, err
		},
	})
}

// recordTable is the scenario's own table: derpd with and without -record.
func (b *bench) recordTable() string {
	if !b.hasScenario("record") {
		return ""
	}
	type pair struct{ on, off metrics }
	byRound := map[int]*pair{}
	var journalBytes float64
	for _, r := range b.runs {
		if r.Scenario != "record" || r.Err != "" {
			continue
		}
		p := byRound[r.Round]
		if p == nil {
			p = &pair{}
			byRound[r.Round] = p
		}
		if r.Params["record"] == 1 {
			p.on = r.Metrics
			journalBytes = max(journalBytes, r.Metrics["journal_bytes"])
		} else {
			p.off = r.Metrics
		}
	}
	var ratios []float64
	for _, p := range byRound {
		if p.on != nil && p.off != nil && p.off["server_cores"] > 0 {
			ratios = append(ratios, p.on["server_cores"]/p.off["server_cores"])
		}
	}
	slices.Sort(ratios)
	on, off := recordParams(true), recordParams(false)
	med := func(p metrics, metric string) float64 { return b.median("record", harness.Derpd, p, metric) }
	var sb strings.Builder
	n := len(ratios)
	fmt.Fprintf(&sb, "\nrecord: derpd with -record (payloads by size) and without, %d pairs at %gk packets/s, %d-byte packets; %d on/off pairs measured back to back\n\n", recordPairs, recordRate/1e3, b.size, n)
	fmt.Fprintf(&sb, "| figure | unit | -record | off | on/off |\n|---|---|---:|---:|---:|\n")
	cpuOn, cpuOff := med(on, "server_cores"), med(off, "server_cores")
	fmt.Fprintf(&sb, "| server CPU at %gk packets/s, median | cores | %s | %s | %s |\n", recordRate/1e3, num(cpuOn), num(cpuOff), ratioOrNA(safeRatio(cpuOn, cpuOff)))
	if n > 0 {
		pm := (ratios[(n-1)/2] + ratios[n/2]) / 2
		fmt.Fprintf(&sb, "|   on/off of each pair, median | | | | %s |\n", ratioStr(pm))
		fmt.Fprintf(&sb, "|   on/off of each pair, lowest – highest | | | | %s – %s |\n", ratioStr(ratios[0]), ratioStr(ratios[n-1]))
	}
	dOn, dOff := med(on, "delivered_ratio"), med(off, "delivered_ratio")
	fmt.Fprintf(&sb, "| delivered, median | %% | %s | %s | %s |\n", num(100*dOn), num(100*dOff), ratioOrNA(safeRatio(dOn, dOff)))
	fmt.Fprintf(&sb, "| journal written by the end | MiB | %s | | |\n", num(journalBytes/(1<<20)))
	return sb.String()
}
