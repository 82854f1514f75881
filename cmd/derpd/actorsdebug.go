package main

import (
	"cmp"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/mesh"
	"github.com/derpd/derpd/actors/verify"
)

// ask asks pid with the debug pages' timeout: a page never waits longer on
// one actor, and shows one that did not answer as such.
func (s *server) ask(pid *actor.PID, msg any) (any, error) {
	if pid == nil {
		return nil, errors.New("not running")
	}
	return s.sys.Root.RequestFuture(pid, msg, debugAskTimeout).Result()
}

// actorsView is /debug/actors: every live actor and what it holds.
type actorsView struct {
	Kinds  []kindView  `json:"kinds"`
	Actors []actorView `json:"actors"`
	// Clients beyond the HTML view's limit are in the JSON view only.
	Shown int `json:"-"`
	// How long the registry took to hand out its connections, from the
	// page's request to its answer: what a snapshot costs the relay.
	RegistrySnapshotMillis float64 `json:"registry_snapshot_ms"`
}

type kindView struct {
	Kind      string `json:"kind"`
	Live      int64  `json:"live"`
	Mailbox   int64  `json:"mailbox"`
	Processed int64  `json:"processed"`
}

type actorView struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Answered  bool   `json:"answered"` // false: it did not answer in time
	Mailbox   int64  `json:"mailbox"`
	Processed int64  `json:"processed"`
	// Key is a client's node key (also in Holds), for the link to its
	// page.
	Key   string         `json:"-"`
	Holds map[string]any `json:"holds,omitempty"`
}

// maxActorsHTML bounds the client rows of the HTML view; a relay of tens
// of thousands of clients would otherwise make a page no browser wants.
const maxActorsHTML = 1000

func init() {
	registerDebugPage(debugPage{
		Path:        "/debug/actors",
		Title:       "Actors",
		Description: "every live actor: its mailbox, the messages it has processed, what it holds",
		Data:        func(s *server, r *http.Request) (any, error) { return s.actorsView(), nil },
		Body: `<h2>By kind</h2>
<table><tr><th>kind</th><th class="n">live</th><th class="n">mailbox</th><th class="n">processed</th></tr>
{{range .Kinds}}<tr><td>{{.Kind}}</td><td class="n">{{.Live}}</td><td class="n">{{.Mailbox}}</td><td class="n">{{.Processed}}</td></tr>{{end}}
</table>
<p class="muted">The registry handed out its connections in {{printf "%.2f" .RegistrySnapshotMillis}} ms.</p>
<h2>Actors</h2>
<table><tr><th>id</th><th>kind</th><th class="n">mailbox</th><th class="n">processed</th><th>holds</th></tr>
{{range $i, $a := .Actors}}{{if lt $i $.Shown}}<tr><td>{{.ID}}</td><td>{{.Kind}}</td>
{{if .Answered}}<td class="n">{{.Mailbox}}</td><td class="n">{{.Processed}}</td>
<td>{{with .Key}}{{peerLink .}}<br>{{end}}{{range $k, $v := .Holds}}{{if ne $k "key"}}<small>{{$k}}</small> {{$v}}; {{end}}{{end}}</td>
{{else}}<td colspan="3" class="down">did not answer</td>{{end}}</tr>{{end}}{{end}}
</table>
{{if lt .Shown (len .Actors)}}<p class="muted">{{len .Actors}} actors; the first {{.Shown}} shown (all of them in the JSON view).</p>{{end}}`,
	})
}

func (s *server) actorsView() *actorsView {
	v := &actorsView{}
	for _, k := range actors.ActorKinds {
		ks := s.sys.Kind(k)
		v.Kinds = append(v.Kinds, kindView{Kind: string(k), Live: ks.Live(), Mailbox: ks.Depth(), Processed: ks.Processed()})
	}
	// Ask everyone at once; each answer is awaited with its own timeout.
	root := s.sys.Root
	asked := time.Now()
	connsF := root.RequestFuture(s.sys.Registry, &actors.GetConns{}, debugAskTimeout)
	stateF := root.RequestFuture(s.sys.Registry, &actors.GetRegistryState{}, debugAskTimeout)
	var flowsF, rejectsF, meshF, verifyF *actor.Future
	if s.sys.Flows != nil {
		flowsF = root.RequestFuture(s.sys.Flows, &actors.GetFlows{Limit: 1}, debugAskTimeout)
	}
	if s.sys.Rejects != nil {
		rejectsF = root.RequestFuture(s.sys.Rejects, &actors.GetRejects{}, debugAskTimeout)
	}
	if s.mesh != nil {
		meshF = root.RequestFuture(s.mesh, &mesh.GetLinks{}, debugAskTimeout)
	}
	if s.verify != nil {
		verifyF = root.RequestFuture(s.verify.verifier.PID(), &verify.GetState{}, debugAskTimeout)
	}

	reg := actorView{ID: s.sys.Registry.Id, Kind: string(actors.ActorRegistry)}
	if res, err := stateF.Result(); err == nil {
		st := res.(*actors.RegistryState)
		reg.Answered, reg.Mailbox, reg.Processed = true, st.Mailbox.Depth, st.Mailbox.Processed
		reg.Holds = map[string]any{
			"keys": st.Keys, "conns": st.Conns, "watchers": st.Watchers, "dup_keys": st.DupKeys,
			"routes": st.Routes, "remote_keys": st.RemoteKeys, "mesh_sessions": st.MeshSessions,
		}
	}
	v.Actors = append(v.Actors, reg)

	if meshF != nil {
		v.Actors = append(v.Actors, s.meshActors(meshF)...)
	}
	if flowsF != nil {
		a := actorView{ID: s.sys.Flows.Id, Kind: string(actors.ActorFlows)}
		if res, err := flowsF.Result(); err == nil {
			st := res.(*actors.FlowsSnapshot)
			a.Answered, a.Mailbox, a.Processed = true, st.Mailbox.Depth, st.Mailbox.Processed
			a.Holds = map[string]any{"flows": st.Tracked, "tallies": st.Tallies, "evicted": st.Evicted, "swept": st.Swept}
		}
		v.Actors = append(v.Actors, a)
	}
	if rejectsF != nil {
		a := actorView{ID: s.sys.Rejects.Id, Kind: string(actors.ActorRejects)}
		if res, err := rejectsF.Result(); err == nil {
			st := res.(*actors.RejectsSnapshot)
			a.Answered, a.Mailbox, a.Processed = true, st.Mailbox.Depth, st.Mailbox.Processed
			a.Holds = map[string]any{"entries": len(st.Rejects), "disconnects": len(st.Disconnects), "max_per_direction": st.Max}
		}
		v.Actors = append(v.Actors, a)
	}
	if verifyF != nil {
		a := actorView{ID: s.verify.verifier.PID().Id, Kind: string(actors.ActorVerify)}
		if res, err := verifyF.Result(); err == nil {
			st := res.(*verify.State)
			a.Answered, a.Mailbox, a.Processed = true, st.Mailbox.Depth, st.Mailbox.Processed
			a.Holds = map[string]any{"cached": st.Entries, "calls": st.Calls, "queued": st.Queued,
				"status_fallback": st.StatusFallback, "status_keys": st.StatusKeys, "tailscaled_answering": st.Healthy}
			if st.LastError != "" {
				a.Holds["last_error"] = st.LastError
			}
		}
		v.Actors = append(v.Actors, a)
	}

	// Clients: the registry hands out handles; their counters are read
	// here, off the registry's goroutine.
	others := len(v.Actors)
	if res, err := connsF.Result(); err == nil {
		v.RegistrySnapshotMillis = float64(time.Since(asked).Microseconds()) / 1000
		list := res.(*actors.Conns).List
		slices.SortFunc(list, func(a, b actors.ConnEntry) int { return cmp.Compare(a.Conn.ID, b.Conn.ID) })
		for _, e := range list {
			v.Actors = append(v.Actors, clientActorView(e))
		}
	} else {
		v.Actors = append(v.Actors, actorView{ID: "client…", Kind: string(actors.ActorClient)})
	}
	v.Shown = min(len(v.Actors), others+maxActorsHTML)
	return v
}

func (s *server) meshActors(f *actor.Future) []actorView {
	m := actorView{ID: s.mesh.Id, Kind: string(actors.ActorMesh)}
	res, err := f.Result()
	if err != nil {
		return []actorView{m}
	}
	links := res.(*mesh.Links)
	m.Answered, m.Mailbox, m.Processed = true, links.Mailbox.Depth, links.Mailbox.Processed
	m.Holds = map[string]any{"links": len(links.Links)}
	if links.DNS != nil {
		m.Holds["dns_name"] = links.DNS.Name
	}
	out := []actorView{m}
	futures := make([]*actor.Future, len(links.Links))
	for i, l := range links.Links {
		futures[i] = s.sys.Root.RequestFuture(l.PID, &mesh.GetLinkState{}, debugAskTimeout)
	}
	for i, l := range links.Links {
		a := actorView{ID: l.PID.Id, Kind: string(actors.ActorMeshLink), Holds: map[string]any{"peer": l.Name}}
		if res, err := futures[i].Result(); err == nil {
			st := res.(*mesh.LinkState)
			a.Answered, a.Mailbox, a.Processed = true, st.Mailbox.Depth, st.Mailbox.Processed
			a.Holds["state"] = string(st.Status)
			a.Holds["keys"] = st.Keys
			a.Holds["queue"] = st.QueueDepth
			if !st.PeerKey.IsZero() {
				a.Holds["peer_key"] = st.PeerKey.String()
			}
		}
		out = append(out, a)
	}
	return out
}

func clientActorView(e actors.ConnEntry) actorView {
	c := e.Conn
	a := actorView{ID: "client#" + strconv.FormatUint(c.ID, 10), Kind: string(actors.ActorClient), Answered: true, Key: c.Key.String()}
	if c.PID != nil {
		a.ID = c.PID.Id
	}
	counts := c.Mailbox.Counts()
	a.Mailbox, a.Processed = counts.Depth, counts.Processed
	dropped := map[string]int64{}
	for r := range actors.DropReason(len(c.Dropped)) {
		if n := c.Dropped[r].Load(); n > 0 {
			dropped[r.String()] = n
		}
	}
	a.Holds = map[string]any{
		"key": c.Key.String(), "conn": c.ID, "addr": c.Addr.String(), "since": c.Since.UTC().Format(time.RFC3339),
		"preferred": c.Preferred.Load(), "mesh": c.CanMesh, "active": e.Active, "watching": e.Watching,
		"packets_recv": c.PacketsRecv.Load(), "packets_sent": c.PacketsSent.Load(),
		"bytes_recv": c.BytesRecv.Load(), "bytes_sent": c.BytesSent.Load(),
	}
	if len(dropped) > 0 {
		a.Holds["dropped"] = dropped
	}
	if q, ok := c.Sink.(actors.QueueDepther); ok {
		data, disco := q.QueueDepths()
		a.Holds["queue_data"], a.Holds["queue_disco"] = data, disco
	}
	return a
}
