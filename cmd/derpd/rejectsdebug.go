package main

import (
	"net/http"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// rejectsView is /debug/rejects: what the server refused or could not
// deliver, by direction, peer and reason, most recent first.
type rejectsView struct {
	Answered bool             `json:"answered"`
	Rejects  []rejectView     `json:"rejects"`
	Evicted  map[string]int64 `json:"evicted"` // entries forgotten to stay within -rejects-max, by direction
	Max      int              `json:"max"`     // entries kept per direction
}

type rejectView struct {
	Direction string    `json:"direction"`
	Peer      string    `json:"peer"` // nodekey:…, or an address before a key was known
	Reason    string    `json:"reason"`
	Detail    string    `json:"detail,omitempty"`
	Count     int64     `json:"count"`
	First     time.Time `json:"first"`
	Last      time.Time `json:"last"`
	keyed     bool      // Peer is a key: linked to its page
}

func init() {
	registerDebugPage(debugPage{
		Path:        "/debug/rejects",
		Title:       "Rejects",
		Description: "refused connections and packets that could not be routed or delivered, by peer and reason",
		Data:        func(s *server, r *http.Request) (any, error) { return s.rejectsView(wire.NodePublic{}), nil },
		Body: `{{if not .Answered}}<p class="down">The rejects actor did not answer.</p>{{else}}
<p class="muted">Up to {{.Max}} entries per direction, the least recently seen forgotten first{{range $d, $n := .Evicted}}{{if $n}}; {{$n}} forgotten ({{$d}}){{end}}{{end}}.</p>
{{template "rejects" .Rejects}}{{end}}
{{define "rejects"}}<table><tr><th>direction</th><th>peer</th><th>reason</th><th class="n">count</th><th>first</th><th>last</th><th>detail</th></tr>
{{range .}}<tr><td>{{.Direction}}</td><td>{{if .IsKey}}{{peerLink .Peer}}{{else}}{{.Peer}}{{end}}</td><td>{{.Reason}}</td><td class="n">{{.Count}}</td><td>{{ago .First}}</td><td>{{ago .Last}}</td><td><small>{{.Detail}}</small></td></tr>
{{else}}<tr><td colspan="7" class="muted">none</td></tr>{{end}}</table>{{end}}`,
	})
}

// IsKey reports whether the peer is a node key, for the template.
func (r rejectView) IsKey() bool { return r.keyed }

func (s *server) rejectsView(key wire.NodePublic) *rejectsView {
	res, err := s.ask(s.sys.Rejects, &actors.GetRejects{Key: key})
	if err != nil {
		return rejectsViewOf(nil)
	}
	return rejectsViewOf(res.(*actors.RejectsSnapshot))
}

// rejectsViewOf renders the rejects actor's answer; nil if it did not
// answer.
func rejectsViewOf(snap *actors.RejectsSnapshot) *rejectsView {
	v := &rejectsView{Rejects: []rejectView{}, Evicted: map[string]int64{}}
	if snap == nil {
		return v
	}
	v.Answered, v.Max = true, snap.Max
	for d, n := range snap.Evicted {
		v.Evicted[actors.RejectDirection(d).String()] = n
	}
	for _, r := range snap.Rejects {
		v.Rejects = append(v.Rejects, rejectView{
			Direction: r.Dir.String(), Peer: r.Peer, Reason: r.Reason.String(), Detail: r.Detail,
			Count: r.Count, First: r.First, Last: r.Last, keyed: !r.Key.IsZero(),
		})
	}
	return v
}
