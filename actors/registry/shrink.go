package registry

import "github.com/derpd/derpd/actors"

// mapPeaks is the most each of the registry's process-long maps has held
// since it was made (actors.Shrink). The per-connection heardFrom sets
// and the per-session key sets keep theirs beside them.
type mapPeaks struct {
	keys, conns, watchers, recipients, forwarders, unknownSources actors.MapPeak
}

// shrinkMaps gives back the buckets of every registry map that has fallen
// far below the most it has held: without it a burst of clients (or of a
// mesh peer's keys, or of made-up forwarded sources) would set the size
// of these maps until the process exits. It runs after every message
// instead of at each of the dozen places that insert and delete: six
// comparisons a message, and a copy only after the deletions that pay
// for it. A message that both adds and removes (a mesh update, a link
// going down) can hide its peak from it; that only makes a copy later.
//
// The recipients' inner sets are left alone: each goes, buckets and all,
// when its source leaves the region or its probation ends.
func (r *Registry) shrinkMaps() {
	p := &r.peaks
	r.keys = actors.Shrink(r.keys, &p.keys)
	r.conns = actors.Shrink(r.conns, &p.conns)
	r.watchers = actors.Shrink(r.watchers, &p.watchers)
	r.recipients = actors.Shrink(r.recipients, &p.recipients)
	r.forwarders = actors.Shrink(r.forwarders, &p.forwarders)
	r.unknownSources = actors.Shrink(r.unknownSources, &p.unknownSources)
}
