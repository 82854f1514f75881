package main

import (
	"net/http"
	"strings"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// peerView is /debug/peer?key=…: one device, as everything here knows it.
// It answers "why did this device fail?": whether and how it is
// connected, its recent disconnects and why, what it sent and received,
// and what was refused to it or could not reach it.
type peerView struct {
	Key         string           `json:"key"`
	Local       bool             `json:"local"`        // connected to this server now
	ForwardedBy []string         `json:"forwarded_by"` // mesh links that announce it, preferred first
	HeardFrom   int              `json:"heard_from"`   // connections here that were sent packets from it
	Conns       []peerConnView   `json:"conns"`
	Disconnects []disconnectView `json:"disconnects"` // its recent disconnects, newest first
	Rejects     []rejectView     `json:"rejects"`
	FlowsFrom   []flowView       `json:"flows_from"`
	FlowsTo     []flowView       `json:"flows_to"`
	Answered    map[string]bool  `json:"answered"` // registry, rejects, flows: each asked with a timeout
}

type peerConnView struct {
	Conn       uint64           `json:"conn"`
	Addr       string           `json:"addr"`
	Since      time.Time        `json:"since"`
	Active     bool             `json:"active"` // receives its key's packets (a duplicate may not)
	Preferred  bool             `json:"preferred"`
	Mesh       bool             `json:"mesh"`
	Watching   bool             `json:"watching"`
	QueueData  int              `json:"queue_data"`
	QueueDisco int              `json:"queue_disco"`
	Dropped    map[string]int64 `json:"dropped"`
	BytesRecv  int64            `json:"bytes_recv"`
	BytesSent  int64            `json:"bytes_sent"`
}

type disconnectView struct {
	Conn      uint64    `json:"conn"`
	Addr      string    `json:"addr"`
	Since     time.Time `json:"since"`
	Ended     time.Time `json:"ended"`
	Mesh      bool      `json:"mesh"`
	Reason    string    `json:"reason"`
	Close     string    `json:"close_reason,omitempty"`
	Error     string    `json:"error,omitempty"`
	DurationS float64   `json:"duration_s"`
}

func init() {
	registerDebugPage(debugPage{
		Path:        "/debug/peer",
		Title:       "Peer",
		Description: "one device by its key (?key=nodekey:…): connections, recent disconnects and why, flows, rejects, mesh peers that announce it",
		Data: func(s *server, r *http.Request) (any, error) {
			q := r.URL.Query().Get("key")
			if q == "" {
				// Come from the index: nothing to show but how to ask.
				return &peerView{Answered: map[string]bool{}}, nil
			}
			k, err := parsePeerKey(q)
			if err != nil {
				return nil, debugError(http.StatusBadRequest, "key: want nodekey: and 64 hex digits, got %q", q)
			}
			return s.peerView(k), nil
		},
		Body: `{{if not .Key}}<p>Give a key: <code>/debug/peer?key=nodekey:…</code>. Every key on the other pages (<a href="{{debugURL "/debug/actors"}}">actors</a>, <a href="{{debugURL "/debug/flows"}}">flows</a>, <a href="{{debugURL "/debug/rejects"}}">rejects</a>) links here.</p>{{else}}
<h2>{{.Key}}</h2>
<p>{{if .Local}}<span class="up">connected here</span>{{else}}not connected here{{end}}{{with .ForwardedBy}}; reachable through the mesh via {{range $i, $p := .}}{{if $i}}, {{end}}{{$p}}{{end}}{{end}}; {{.HeardFrom}} connections here were sent packets from it.
{{range $what, $ok := .Answered}}{{if not $ok}}<br><span class="down">The {{$what}} did not answer.</span>{{end}}{{end}}</p>
<h2>Connections</h2>
<table><tr><th>conn</th><th>from</th><th>since</th><th>active</th><th>home</th><th>mesh</th><th class="n">queued</th><th>dropped</th><th class="n">received</th><th class="n">sent</th></tr>
{{range .Conns}}<tr><td>{{.Conn}}</td><td>{{.Addr}}</td><td>{{ago .Since}}</td><td>{{.Active}}</td><td>{{.Preferred}}</td><td>{{.Mesh}}</td><td class="n">{{.QueueData}} + {{.QueueDisco}}</td><td>{{range $r, $n := .Dropped}}{{$r}}: {{$n}}<br>{{end}}</td><td class="n">{{bytes .BytesRecv}}</td><td class="n">{{bytes .BytesSent}}</td></tr>
{{else}}<tr><td colspan="10" class="muted">none</td></tr>{{end}}</table>
<h2>Recent disconnects</h2>
<table><tr><th>conn</th><th>from</th><th>ended</th><th class="n">lasted</th><th>how</th><th>why the server closed it</th><th>error</th></tr>
{{range .Disconnects}}<tr><td>{{.Conn}}</td><td>{{.Addr}}</td><td>{{ago .Ended}}</td><td class="n">{{printf "%.1f" .DurationS}} s</td><td>{{.Reason}}</td><td>{{.Close}}</td><td><small>{{.Error}}</small></td></tr>
{{else}}<tr><td colspan="7" class="muted">none recently</td></tr>{{end}}</table>
<h2>Rejects</h2>{{template "rejects" .Rejects}}
<h2>Flows from it</h2>{{template "flows" .FlowsFrom}}
<h2>Flows to it</h2>{{template "flows" .FlowsTo}}{{end}}
{{define "rejects"}}<table><tr><th>direction</th><th>reason</th><th class="n">count</th><th>first</th><th>last</th><th>detail</th></tr>
{{range .}}<tr><td>{{.Direction}}</td><td>{{.Reason}}</td><td class="n">{{.Count}}</td><td>{{ago .First}}</td><td>{{ago .Last}}</td><td><small>{{.Detail}}</small></td></tr>
{{else}}<tr><td colspan="6" class="muted">none</td></tr>{{end}}</table>{{end}}
{{define "flows"}}<table><tr><th>from</th><th>to</th><th>via</th><th class="n">bytes/s</th><th class="n">packets/s</th><th class="n">bytes</th><th class="n">packets</th><th class="n">idle</th></tr>
{{range .}}<tr><td>{{peerLink .Src}}</td><td>{{peerLink .Dst}}</td><td>{{.Via}}</td><td class="n">{{printf "%.0f" .BPS}}</td><td class="n">{{printf "%.1f" .PPS}}</td><td class="n">{{bytes .Bytes}}</td><td class="n">{{.Packets}}</td><td class="n">{{printf "%.0f" .LastActiveS}} s</td></tr>
{{else}}<tr><td colspan="8" class="muted">none</td></tr>{{end}}</table>{{end}}`,
	})
}

// parsePeerKey takes a key as pages and logs show it: nodekey:<hex>, or
// the bare hex.
func parsePeerKey(s string) (wire.NodePublic, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "nodekey:") {
		return wire.ParseNodePublic(s)
	}
	return wire.ParseNodePublicUntyped(s)
}

func (s *server) peerView(k wire.NodePublic) *peerView {
	v := &peerView{
		Key: k.String(), ForwardedBy: []string{}, Conns: []peerConnView{}, Disconnects: []disconnectView{},
		FlowsFrom: []flowView{}, FlowsTo: []flowView{}, Answered: map[string]bool{},
	}
	root := s.sys.Root
	peerF := root.RequestFuture(s.sys.Registry, &actors.GetPeer{Key: k}, debugAskTimeout)
	var snap *actors.RejectsSnapshot
	if res, err := s.ask(s.sys.Rejects, &actors.GetRejects{Key: k}); err == nil {
		snap = res.(*actors.RejectsSnapshot)
		for _, d := range snap.Disconnects {
			v.Disconnects = append(v.Disconnects, disconnectView{
				Conn: d.Conn, Addr: d.Addr.String(), Since: d.Since, Ended: d.Ended, Mesh: d.Mesh,
				Reason: d.Reason, Close: d.Close, Error: d.Error, DurationS: d.Ended.Sub(d.Since).Seconds(),
			})
		}
	}
	rejects := rejectsViewOf(snap)
	v.Rejects, v.Answered["rejects actor"] = rejects.Rejects, rejects.Answered
	if flows := s.flowsView(k, 0); flows.Enabled {
		v.Answered["flows actor"] = flows.Answered
		ks := k.String()
		for _, f := range flows.Flows {
			if f.Src == ks {
				v.FlowsFrom = append(v.FlowsFrom, f)
			}
			if f.Dst == ks {
				v.FlowsTo = append(v.FlowsTo, f)
			}
		}
	}
	res, err := peerF.Result()
	v.Answered["registry"] = err == nil
	if err != nil {
		return v
	}
	p := res.(*actors.Peer)
	v.Local, v.HeardFrom = len(p.Conns) > 0, p.HeardFrom
	v.ForwardedBy = append(v.ForwardedBy, p.ForwardedBy...)
	for _, e := range p.Conns {
		c := e.Conn
		cv := peerConnView{
			Conn: c.ID, Addr: c.Addr.String(), Since: c.Since, Active: e.Active, Preferred: c.Preferred.Load(),
			Mesh: c.CanMesh, Watching: e.Watching, Dropped: map[string]int64{},
			BytesRecv: c.BytesRecv.Load(), BytesSent: c.BytesSent.Load(),
		}
		for r := range actors.DropReason(len(c.Dropped)) {
			if n := c.Dropped[r].Load(); n > 0 {
				cv.Dropped[r.String()] = n
			}
		}
		if q, ok := c.Sink.(actors.QueueDepther); ok {
			cv.QueueData, cv.QueueDisco = q.QueueDepths()
		}
		v.Conns = append(v.Conns, cv)
	}
	return v
}
