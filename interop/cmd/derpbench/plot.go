package main

import (
	"fmt"
	"image/color"
	"path/filepath"
	"sort"

	"github.com/derpd/derpd/interop/harness"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

var serverColors = map[harness.Kind]color.Color{
	harness.Derpd:  color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	harness.Derper: color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
}

// plots draws delivered-vs-offered for the main capacity sweep, the mesh
// sweep and the scaling curves, one line per server.
func (b *bench) plots() error {
	if b.hasScenario("capacity") {
		if err := b.linePlot("capacity.png", fmt.Sprintf("Delivered vs offered load, 20 pairs, %d-byte packets", b.size),
			"offered (thousand packets/s)", "delivered (thousand packets/s)",
			func(k harness.Kind) plotter.XYs { return b.sweep("capacity", 20, k, "delivered_pps") }, true); err != nil {
			return err
		}
		if err := b.linePlot("capacity-cpu.png", "Server CPU vs offered load, 20 pairs",
			"offered (thousand packets/s)", "server CPU (cores)",
			func(k harness.Kind) plotter.XYs { return b.sweep("capacity", 20, k, "server_cores") }, false); err != nil {
			return err
		}
	}
	if b.hasScenario("mesh") {
		if err := b.linePlot("mesh-capacity.png", fmt.Sprintf("Across the mesh: delivered vs offered, %d pairs node 1 → node 2, TLS", meshPairs),
			"offered (thousand packets/s)", "delivered (thousand packets/s)",
			func(k harness.Kind) plotter.XYs { return b.sweep("mesh", meshPairs, k, "delivered_pps") }, true); err != nil {
			return err
		}
		if err := b.linePlot("mesh-capacity-cpu.png", "Across the mesh: CPU of both nodes vs offered load",
			"offered (thousand packets/s)", "server CPU, both nodes (cores)",
			func(k harness.Kind) plotter.XYs { return b.sweep("mesh", meshPairs, k, "server_cores") }, false); err != nil {
			return err
		}
	}
	if b.hasScenario("scaling") {
		for _, n := range []int{1, 10, 100, 1000} {
			if !b.hasPairs("scaling", float64(n)) {
				continue
			}
			name := fmt.Sprintf("scaling-%d-pairs.png", n)
			if err := b.linePlot(name, fmt.Sprintf("Delivered vs offered, %d pairs", n),
				"offered (thousand packets/s)", "delivered (thousand packets/s)",
				func(k harness.Kind) plotter.XYs { return b.sweep("scaling", n, k, "delivered_pps") }, true); err != nil {
				return err
			}
		}
		if err := b.scalingPlot(); err != nil {
			return err
		}
	}
	if b.hasScenario("scaling-memory") || b.hasScenario("memory") {
		if err := b.linePlot("scaling-memory.png", "Resident memory vs idle connections",
			"idle connections", "resident memory (MiB)",
			func(k harness.Kind) plotter.XYs {
				var xy plotter.XYs
				for _, sc := range []string{"memory", "scaling-memory"} {
					for _, n := range []float64{1000, 5000, 10000, 15000} {
						if v := b.median(sc, k, metrics{"conns": n}, "rss_kib"); v > 0 {
							xy = append(xy, plotter.XY{X: n, Y: v / 1024})
						}
					}
				}
				sort.Slice(xy, func(i, j int) bool { return xy[i].X < xy[j].X })
				return xy
			}, false); err != nil {
			return err
		}
	}
	return nil
}

// sweep returns (offered, metric) points of a capacity sweep, in
// thousands of packets per second where the metric is a rate.
func (b *bench) sweep(scenario string, pairs int, k harness.Kind, metric string) plotter.XYs {
	seen := map[float64]bool{}
	var xy plotter.XYs
	for _, r := range b.runs {
		if r.Scenario != scenario || r.Server != k || r.Params["pairs"] != float64(pairs) || seen[r.Params["rate"]] {
			continue
		}
		seen[r.Params["rate"]] = true
		v := b.median(scenario, k, r.Params, metric)
		if v < 0 {
			continue
		}
		if metric == "delivered_pps" {
			v /= 1e3
		}
		xy = append(xy, plotter.XY{X: r.Params["rate"] / 1e3, Y: v})
	}
	sort.Slice(xy, func(i, j int) bool { return xy[i].X < xy[j].X })
	return xy
}

func (b *bench) linePlot(name, title, xlabel, ylabel string, data func(harness.Kind) plotter.XYs, diagonal bool) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	maxX := 0.0
	for _, k := range b.servers {
		xy := data(k)
		if len(xy) == 0 {
			continue
		}
		if err := addLine(p, xy, k, string(k), false); err != nil {
			return err
		}
		for _, v := range xy {
			maxX = max(maxX, v.X)
		}
	}
	if diagonal && maxX > 0 {
		ideal := plotter.NewFunction(func(x float64) float64 { return x })
		ideal.Dashes = plotutil.Dashes(2)
		ideal.XMin, ideal.XMax = 0, maxX
		p.Add(ideal)
		p.Legend.Add("offered = delivered", ideal)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	return p.Save(7*vg.Inch, 4.5*vg.Inch, filepath.Join(b.outDir, name))
}

// scalingPlot draws, per server, zero-loss capacity and peak delivered
// rate against the number of pairs, on a logarithmic pairs axis. Both are
// shown because with many pairs the load generator cannot offer even the
// lowest rate on two cores, and then only the peak says anything.
func (b *bench) scalingPlot() error {
	p := plot.New()
	p.Title.Text = "Throughput vs number of pairs"
	p.X.Label.Text = "pairs"
	p.Y.Label.Text = "thousand packets/s"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	for _, k := range b.servers {
		for i, series := range []struct {
			label string
			value func(n int) float64
		}{
			{"zero-loss capacity", func(n int) float64 { return b.zeroLossCapacity("scaling", n, k) }},
			{"peak delivered", func(n int) float64 { return b.peak("scaling", n, k, "delivered_pps") }},
		} {
			var xy plotter.XYs
			for _, n := range []int{1, 10, 100, 1000} {
				if v := series.value(n); b.hasPairs("scaling", float64(n)) && v >= 0 {
					xy = append(xy, plotter.XY{X: float64(n), Y: v / 1e3})
				}
			}
			if len(xy) == 0 {
				continue
			}
			if err := addLine(p, xy, k, string(k)+", "+series.label, i == 1); err != nil {
				return err
			}
		}
	}
	p.Legend.Top = true
	return p.Save(7*vg.Inch, 4.5*vg.Inch, filepath.Join(b.outDir, "scaling-capacity.png"))
}

// addLine draws xy as one server's line with points, in its colour,
// dashed if asked, and names it in the legend.
func addLine(p *plot.Plot, xy plotter.XYs, k harness.Kind, label string, dashed bool) error {
	l, pts, err := plotter.NewLinePoints(xy)
	if err != nil {
		return err
	}
	l.Color, pts.Color = serverColors[k], serverColors[k]
	if dashed {
		l.Dashes = plotutil.Dashes(2)
	}
	p.Add(l, pts)
	p.Legend.Add(label, l, pts)
	return nil
}
