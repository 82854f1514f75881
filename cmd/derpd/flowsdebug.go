package main

import (
	"net/http"
	"strconv"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// flowsView is /debug/flows: the flows the flows actor tracks, busiest
// first.
type flowsView struct {
	Enabled  bool       `json:"enabled"` // false: -flows=false
	Answered bool       `json:"answered"`
	Flows    []flowView `json:"flows"`
	Tracked  int        `json:"tracked"`
	Evicted  int64      `json:"evicted"`
	Swept    int64      `json:"swept"`
	WindowS  float64    `json:"window_s"` // the rates' window
	Limit    int        `json:"limit"`
}

type flowView struct {
	Src         string  `json:"src"`
	Dst         string  `json:"dst"`
	Via         string  `json:"via"` // the mesh peer it came from or went to; "" when both ends are here
	Bytes       int64   `json:"bytes"`
	Packets     int64   `json:"packets"`
	BPS         float64 `json:"bps"` // bytes per second over the window
	PPS         float64 `json:"pps"`
	LastActiveS float64 `json:"last_active_s"` // seconds since it was last active
}

// defaultFlowsShown is how many flows a page shows unless ?limit= says.
const defaultFlowsShown = 500

func init() {
	registerDebugPage(debugPage{
		Path:        "/debug/flows",
		Title:       "Flows",
		Description: "traffic per source, destination and mesh peer: totals, and rates over the last few seconds, busiest first",
		Data: func(s *server, r *http.Request) (any, error) {
			limit := defaultFlowsShown
			if l := r.URL.Query().Get("limit"); l != "" {
				n, err := strconv.Atoi(l)
				if err != nil || n < 0 {
					return nil, debugError(http.StatusBadRequest, "limit must be a number of flows, 0 for all")
				}
				limit = n
			}
			return s.flowsView(wire.NodePublic{}, limit), nil
		},
		Body: `{{if not .Enabled}}<p>Flows are not counted (<code>-flows=false</code>).</p>
{{else if not .Answered}}<p class="down">The flows actor did not answer.</p>
{{else}}<p class="muted">{{.Tracked}} flows tracked ({{.Evicted}} forgotten to stay within -flows-max, {{.Swept}} swept as inactive); rates over the last {{.WindowS}} s.</p>
{{template "flows" .Flows}}{{end}}
{{define "flows"}}<table><tr><th>from</th><th>to</th><th>via</th><th class="n">bytes/s</th><th class="n">packets/s</th><th class="n">bytes</th><th class="n">packets</th><th class="n">idle</th></tr>
{{range .}}<tr><td>{{peerLink .Src}}</td><td>{{peerLink .Dst}}</td><td>{{.Via}}</td><td class="n">{{printf "%.0f" .BPS}}</td><td class="n">{{printf "%.1f" .PPS}}</td><td class="n">{{bytes .Bytes}}</td><td class="n">{{.Packets}}</td><td class="n">{{printf "%.0f" .LastActiveS}} s</td></tr>
{{else}}<tr><td colspan="8" class="muted">none</td></tr>{{end}}</table>{{end}}`,
	})
}

// flowsView asks the flows actor, for every flow or only those of key.
func (s *server) flowsView(key wire.NodePublic, limit int) *flowsView {
	v := &flowsView{Enabled: s.sys.Flows != nil, Flows: []flowView{}, Limit: limit}
	if !v.Enabled {
		return v
	}
	res, err := s.ask(s.sys.Flows, &actors.GetFlows{Key: key, Limit: limit})
	if err != nil {
		return v
	}
	snap := res.(*actors.FlowsSnapshot)
	v.Answered, v.Tracked, v.Evicted, v.Swept, v.WindowS = true, snap.Tracked, snap.Evicted, snap.Swept, snap.Window.Seconds()
	now := s.sys.Clock.Now()
	for _, f := range snap.Flows {
		v.Flows = append(v.Flows, flowView{
			Src: keyText(f.Src), Dst: keyText(f.Dst), Via: f.Via, Bytes: f.Bytes, Packets: f.Packets,
			BPS: f.BPS, PPS: f.PPS, LastActiveS: now.Sub(f.LastActive).Round(time.Millisecond).Seconds(),
		})
	}
	return v
}
