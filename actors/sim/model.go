package sim

import (
	"slices"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// model is what one node's registry must believe, rebuilt by the
// simulation from the messages the registry has handled, in the order it
// handled them, from the rules the registry documents rather than from
// its code: the newest registration of a key receives until another of
// its connections speaks (the last writer receives), and when the
// receiving one leaves, the one that registered or spoke most recently
// takes over; a key not connected here goes to the first mesh session
// that announced it; a registry that recovers from a panic starts empty.
// After every step of the registry the route table must say what the
// model says.
type model struct {
	seq      uint64
	conns    map[*actors.Conn]*mconn
	keys     map[wire.NodePublic][]*mconn // registration order
	active   map[wire.NodePublic]*mconn
	watchers map[*actors.Conn]bool
	sessions map[uint64]*msession
	fwd      map[wire.NodePublic][]*msession // announcement order
}

type mconn struct {
	c   *actors.Conn
	seq uint64 // of its registration or its latest activity
}

type msession struct {
	id   uint64
	fwd  actors.Forwarder
	keys map[wire.NodePublic]bool
}

func newModel() *model {
	return &model{
		conns:    make(map[*actors.Conn]*mconn),
		keys:     make(map[wire.NodePublic][]*mconn),
		active:   make(map[wire.NodePublic]*mconn),
		watchers: make(map[*actors.Conn]bool),
		sessions: make(map[uint64]*msession),
		fwd:      make(map[wire.NodePublic][]*msession),
	}
}

// apply records that the registry handled msg.
func (m *model) apply(msg any, serverKey wire.NodePublic) {
	switch msg := msg.(type) {
	case *actors.Register:
		c := msg.Conn
		if m.conns[c] != nil {
			return
		}
		m.seq++
		mc := &mconn{c: c, seq: m.seq}
		m.conns[c] = mc
		m.keys[c.Key] = append(m.keys[c.Key], mc)
		m.active[c.Key] = mc
	case *actors.Unregister:
		c := msg.Conn
		mc := m.conns[c]
		if mc == nil {
			return
		}
		delete(m.conns, c)
		delete(m.watchers, c)
		list := slices.DeleteFunc(m.keys[c.Key], func(x *mconn) bool { return x == mc })
		if len(list) == 0 {
			delete(m.keys, c.Key)
			delete(m.active, c.Key)
			return
		}
		m.keys[c.Key] = list
		if m.active[c.Key] == mc {
			latest := list[0]
			for _, x := range list[1:] {
				if x.seq > latest.seq {
					latest = x
				}
			}
			m.active[c.Key] = latest
		}
	case *actors.Activity:
		mc := m.conns[msg.Conn]
		if mc == nil {
			return
		}
		m.seq++
		mc.seq = m.seq
		m.active[mc.c.Key] = mc
	case *actors.WatchConns:
		if m.conns[msg.Conn] != nil && msg.Conn.Key != serverKey {
			m.watchers[msg.Conn] = true
		}
	case *actors.MeshLinkUp:
		if m.sessions[msg.Link] == nil {
			m.sessions[msg.Link] = &msession{id: msg.Link, fwd: msg.Forward, keys: make(map[wire.NodePublic]bool)}
		}
	case *actors.MeshUpdate:
		s := m.sessions[msg.Link]
		if s == nil {
			return
		}
		for _, u := range msg.Updates {
			switch {
			case u.Present && !s.keys[u.Key]:
				s.keys[u.Key] = true
				m.fwd[u.Key] = append(m.fwd[u.Key], s)
			case !u.Present && s.keys[u.Key]:
				delete(s.keys, u.Key)
				m.dropFwd(s, u.Key)
			}
		}
	case *actors.MeshLinkDown:
		s := m.sessions[msg.Link]
		if s == nil {
			return
		}
		delete(m.sessions, msg.Link)
		for k := range s.keys {
			m.dropFwd(s, k)
		}
	}
}

func (m *model) dropFwd(s *msession, k wire.NodePublic) {
	list := slices.DeleteFunc(m.fwd[k], func(x *msession) bool { return x == s })
	if len(list) == 0 {
		delete(m.fwd, k)
	} else {
		m.fwd[k] = list
	}
}

// route is where the model sends packets for k: the sink of its receiving
// connection, and the forwarder of its first announcer.
func (m *model) route(k wire.NodePublic) (actors.PacketSink, actors.Forwarder) {
	var local actors.PacketSink
	var fwd actors.Forwarder
	if a := m.active[k]; a != nil {
		local = a.c.Sink
	}
	if list := m.fwd[k]; len(list) > 0 {
		fwd = list[0].fwd
	}
	return local, fwd
}

// inRegion reports whether the registry knows k as connected here or
// announced by a mesh session.
func (m *model) inRegion(k wire.NodePublic) bool {
	return len(m.keys[k]) > 0 || len(m.fwd[k]) > 0
}

// gauges are the registry's gauges as the model has them.
func (m *model) gauges() (local, remote, dupKeys, dupConns, watchers int64) {
	local = int64(len(m.keys))
	for _, list := range m.keys {
		if len(list) > 1 {
			dupKeys++
			dupConns += int64(len(list))
		}
	}
	for k := range m.fwd {
		if len(m.keys[k]) == 0 {
			remote++
		}
	}
	return local, remote, dupKeys, dupConns, int64(len(m.watchers))
}
