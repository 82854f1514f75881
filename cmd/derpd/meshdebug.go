package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/mesh"
)

// How long the mesh page waits for each actor it asks. An actor that does
// not answer in time is shown as such; the page never hangs on one.
const debugAskTimeout = time.Second

// meshView is /debug/mesh: this server's links to its peers, the peers'
// links to it, and the -mesh-dns lookup.
type meshView struct {
	Links      []meshLinkView `json:"links"`
	Inbound    []meshConnView `json:"inbound"`
	DNS        *meshDNSView   `json:"dns,omitempty"`
	RemoteKeys int            `json:"remote_keys"`
}

type meshLinkView struct {
	Peer         string           `json:"peer"`
	Answered     bool             `json:"answered"` // false: the link actor did not answer in time
	URL          string           `json:"url,omitempty"`
	Dial         string           `json:"dial,omitempty"`
	FromDNS      bool             `json:"from_dns"`
	State        string           `json:"state,omitempty"`
	Since        time.Time        `json:"since,omitzero"`
	LastError    string           `json:"last_error,omitempty"`
	LastErrorAt  time.Time        `json:"last_error_at,omitzero"`
	RetryAt      time.Time        `json:"retry_at,omitzero"`
	Sessions     int              `json:"sessions"`
	Reconnects   int              `json:"reconnects"`
	Failures     int              `json:"failures"`
	PeerKey      string           `json:"peer_key,omitempty"`
	FastStart    bool             `json:"fast_start"`
	RTTMillis    float64          `json:"rtt_ms"`
	Keys         int              `json:"keys"`
	KeysRefused  int64            `json:"keys_refused"`
	ForwardedOut int64            `json:"forwarded_out"`
	ForwardedIn  int64            `json:"forwarded_in"`
	QueueDepth   int              `json:"queue_depth"`
	Dropped      map[string]int64 `json:"dropped,omitempty"`
}

type meshConnView struct {
	Conn        uint64    `json:"conn"`
	Key         string    `json:"key"`
	Addr        string    `json:"addr"`
	Since       time.Time `json:"since"`
	Watching    bool      `json:"watching"`
	ForwardedIn int64     `json:"forwarded_in"`
}

type meshDNSView struct {
	Name        string    `json:"name"`
	Port        int       `json:"port"`
	IntervalS   float64   `json:"interval_s"`
	Answer      []string  `json:"answer"`
	AnsweredAt  time.Time `json:"answered_at,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// meshSnapshot asks the mesh actor, every link and the registry, all at
// once, each with a timeout.
func (s *server) meshSnapshot() *meshView {
	v := &meshView{Links: []meshLinkView{}, Inbound: []meshConnView{}}
	root := s.sys.Root
	connsF := root.RequestFuture(s.sys.Registry, &actors.GetMeshConns{}, debugAskTimeout)
	stateF := root.RequestFuture(s.sys.Registry, &actors.GetRegistryState{}, debugAskTimeout)
	var links *mesh.Links
	if s.mesh != nil {
		if res, err := root.RequestFuture(s.mesh, &mesh.GetLinks{}, debugAskTimeout).Result(); err == nil {
			links = res.(*mesh.Links)
		}
	}
	if res, err := connsF.Result(); err == nil {
		for _, c := range res.(*actors.MeshConns).Conns {
			v.Inbound = append(v.Inbound, meshConnView{
				Conn: c.ID, Key: c.Key.String(), Addr: c.Addr.String(), Since: c.Since,
				Watching: c.Watching, ForwardedIn: c.ForwardedIn,
			})
		}
	}
	if res, err := stateF.Result(); err == nil {
		v.RemoteKeys = res.(*actors.RegistryState).RemoteKeys
	}
	if links == nil {
		return v
	}
	if d := links.DNS; d != nil {
		dv := &meshDNSView{Name: d.Name, Port: d.Port, IntervalS: d.Interval.Seconds(), Answer: []string{},
			AnsweredAt: d.AnsweredAt, LastError: d.LastError, LastErrorAt: d.LastErrorAt}
		for _, a := range d.Answer {
			dv.Answer = append(dv.Answer, a.String())
		}
		v.DNS = dv
	}
	futures := make([]*actor.Future, len(links.Links))
	for i, l := range links.Links {
		futures[i] = root.RequestFuture(l.PID, &mesh.GetLinkState{}, debugAskTimeout)
	}
	for i, l := range links.Links {
		lv := meshLinkView{Peer: l.Name}
		if res, err := futures[i].Result(); err == nil {
			st := res.(*mesh.LinkState)
			lv = meshLinkView{
				Peer: st.Name, Answered: true, URL: st.URL, Dial: st.DialAddr, FromDNS: st.FromDNS,
				State: string(st.Status), Since: st.Since, LastError: st.LastError, LastErrorAt: st.LastErrorAt,
				RetryAt: st.RetryAt, Sessions: st.Sessions, Reconnects: max(st.Sessions-1, 0), Failures: st.Failures,
				FastStart: st.FastStart, RTTMillis: float64(st.RTT.Microseconds()) / 1000,
				Keys: st.Keys, KeysRefused: st.KeysRefused, ForwardedOut: st.ForwardedOut,
				QueueDepth: st.QueueDepth, Dropped: st.DroppedByReason(),
			}
			if !st.PeerKey.IsZero() {
				lv.PeerKey = st.PeerKey.String()
				// What the peer forwards to us arrives on its own link
				// to us, an inbound connection with its key.
				for _, c := range v.Inbound {
					if c.Key == lv.PeerKey {
						lv.ForwardedIn += c.ForwardedIn
					}
				}
			}
		}
		v.Links = append(v.Links, lv)
	}
	return v
}

func init() {
	registerDebugPage(debugPage{
		Path:        "/debug/mesh",
		Title:       "Mesh",
		Description: "the region: this node's links to its peers, their links to it, the -mesh-dns lookup",
		Data:        func(s *server, r *http.Request) (any, error) { return s.meshSnapshot(), nil },
		Body: `<p>keys reachable only through the mesh: {{.RemoteKeys}}</p>
{{with .DNS}}<h2>DNS membership</h2>
<p>{{.Name}} port {{.Port}}, every {{.IntervalS}} s: answer {{range .Answer}}{{.}} {{else}}none yet{{end}}{{with .AnsweredAt}} ({{ago .}}){{end}}
{{with .LastError}}<br><span class="down">last lookup error: {{.}}</span>{{end}}</p>{{end}}
<h2>Links to peers</h2>
<table><tr><th>peer</th><th>state</th><th>since</th><th>peer key</th><th>keys</th><th>forwarded out</th><th>forwarded in</th><th>queue</th><th>dropped</th><th>sessions</th><th>failures</th><th>rtt ms</th><th>last error</th></tr>
{{range .Links}}<tr><td>{{.Peer}}<br><small>{{.URL}} via {{.Dial}}</small></td>
{{if .Answered}}<td class="{{if eq .State "up"}}up{{else}}down{{end}}">{{.State}}</td><td>{{ago .Since}}</td><td>{{peerLink .PeerKey}}</td>
<td class="n">{{.Keys}}{{if .KeysRefused}} (refused {{.KeysRefused}}){{end}}</td><td class="n">{{.ForwardedOut}}</td><td class="n">{{.ForwardedIn}}</td><td class="n">{{.QueueDepth}}</td>
<td>{{range $r, $n := .Dropped}}{{if $n}}{{$r}}: {{$n}}<br>{{end}}{{end}}</td><td class="n">{{.Sessions}}</td><td class="n">{{.Failures}}</td><td class="n">{{.RTTMillis}}</td>
<td>{{.LastError}}{{with .LastErrorAt}}<br><small>{{ago .}}</small>{{end}}</td>
{{else}}<td colspan="12" class="down">the link actor did not answer</td>{{end}}</tr>
{{else}}<tr><td colspan="13">no -mesh-with or -mesh-dns peers</td></tr>{{end}}
</table>
<h2>Peers' links to us</h2>
<table><tr><th>conn</th><th>key</th><th>from</th><th>since</th><th>watching</th><th>forwarded in</th></tr>
{{range .Inbound}}<tr><td class="n">{{.Conn}}</td><td>{{peerLink .Key}}</td><td>{{.Addr}}</td><td>{{ago .Since}}</td><td>{{.Watching}}</td><td class="n">{{.ForwardedIn}}</td></tr>
{{else}}<tr><td colspan="6">none</td></tr>{{end}}
</table>
`,
	})
}

// writeMeshMetrics exports each link's state with the link's name as the
// peer label.
func (s *server) writeMeshMetrics(p actors.PromWriter) {
	if s.mesh == nil {
		return
	}
	v := s.meshSnapshot()
	series := []struct {
		name, typ string
		value     func(l *meshLinkView) float64
	}{
		{"derpd_mesh_link_up", "gauge", func(l *meshLinkView) float64 { return b2f(l.State == string(mesh.StatusUp)) }},
		{"derpd_mesh_link_sessions", "counter", func(l *meshLinkView) float64 { return float64(l.Sessions) }},
		{"derpd_mesh_link_failures", "counter", func(l *meshLinkView) float64 { return float64(l.Failures) }},
		{"derpd_mesh_link_keys", "gauge", func(l *meshLinkView) float64 { return float64(l.Keys) }},
		{"derpd_mesh_link_forwarded_out", "counter", func(l *meshLinkView) float64 { return float64(l.ForwardedOut) }},
		{"derpd_mesh_link_forwarded_in", "counter", func(l *meshLinkView) float64 { return float64(l.ForwardedIn) }},
		{"derpd_mesh_link_queue_depth", "gauge", func(l *meshLinkView) float64 { return float64(l.QueueDepth) }},
		{"derpd_mesh_link_rtt_seconds", "gauge", func(l *meshLinkView) float64 { return l.RTTMillis / 1000 }},
	}
	for _, m := range series {
		p.Header(m.name, m.typ)
		for i := range v.Links {
			if l := &v.Links[i]; l.Answered {
				p.Sample(m.name, fmt.Sprintf("peer=%q", l.Peer), m.value(l))
			}
		}
	}
	// The state as an enumeration, one series per state, 1 for the one
	// the link is in: derpd_mesh_link_up is 0 for a link that is down and
	// for the entry that is this node alike, and an alert must tell them
	// apart.
	p.Header("derpd_mesh_link_state", "gauge")
	for i := range v.Links {
		if l := &v.Links[i]; l.Answered {
			for _, st := range meshLinkStates {
				p.Sample("derpd_mesh_link_state", fmt.Sprintf("peer=%q,state=%q", l.Peer, st), b2f(l.State == string(st)))
			}
		}
	}
	p.Header("derpd_mesh_link_dropped", "counter")
	for i := range v.Links {
		l := &v.Links[i]
		for _, r := range mesh.DropReasons() {
			if l.Answered {
				p.Sample("derpd_mesh_link_dropped", fmt.Sprintf("peer=%q,reason=%q", l.Peer, r.String()), float64(l.Dropped[r.String()]))
			}
		}
	}
}

// meshLinkStates are the states derpd_mesh_link_state enumerates.
var meshLinkStates = []mesh.Status{mesh.StatusUp, mesh.StatusConnecting, mesh.StatusDown, mesh.StatusSelf}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
