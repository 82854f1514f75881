package replay

import (
	"container/heap"
	"time"

	"github.com/derpd/derpd/actors/journal"
)

// A live recording is not in Seq order in its file: every actor and every
// reader records into a buffer of its own, and the buffers reach the file
// chunk by chunk, a quiet one only at the recorder's periodic flush. The
// orderer puts records back in Seq order before they are fed. A record
// in sequence goes straight through (a synthesized journal never waits);
// one after a gap waits until the gap is filled, or until the journal has
// moved on by reorderWindow (the gap is then for good: a record made
// after the byte limit, say), or until too many wait.
const (
	// reorderWindow is how far behind in recorded time a record may
	// reach the file: several times the recorder's flush interval.
	reorderWindow = 3 * journal.DefaultFlushEvery
	// maxReordering bounds the records waiting (about 200 bytes each).
	maxReordering = 1 << 20
)

type orderer struct {
	next   uint64        // the Seq that goes through at once
	newest time.Duration // the latest At read
	held   seqHeap
	late   int64 // records that came after a later one had been fed
}

func newOrderer() *orderer { return &orderer{next: 1} }

// push takes a record read from the file and calls feed with every record
// that may now be fed, in Seq order.
func (o *orderer) push(rec *journal.Record, feed func(*journal.Record)) {
	o.newest = max(o.newest, rec.At)
	switch {
	case rec.Seq < o.next:
		o.late++ // its moment has passed: feed it now rather than never
		feed(rec)
		return
	case rec.Seq == o.next && len(o.held) == 0:
		o.next++
		feed(rec)
		return
	}
	heap.Push(&o.held, rec)
	for len(o.held) > 0 {
		first := o.held[0]
		if first.Seq != o.next && o.newest-first.At <= reorderWindow && len(o.held) <= maxReordering {
			return
		}
		heap.Pop(&o.held)
		o.next = first.Seq + 1
		feed(first)
	}
}

// flush feeds every record still waiting, at the end of the journal.
func (o *orderer) flush(feed func(*journal.Record)) {
	for len(o.held) > 0 {
		rec := heap.Pop(&o.held).(*journal.Record)
		o.next = rec.Seq + 1
		feed(rec)
	}
}

type seqHeap []*journal.Record

func (h seqHeap) Len() int           { return len(h) }
func (h seqHeap) Less(i, j int) bool { return h[i].Seq < h[j].Seq }
func (h seqHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *seqHeap) Push(x any)        { *h = append(*h, x.(*journal.Record)) }
func (h *seqHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return x
}
