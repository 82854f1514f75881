package replay

import (
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
)

// deliveredReceiver is the connection a recorded Delivered is about.
func deliveredReceiver(m *actors.Delivered) *actors.Conn { return m.Receiver }

// cloneDelivered is a recorded Delivered as clone recv would send it:
// its sources mapped to the same clone index. The recorder took the
// sources before encoding (Delivered.Take), so they are in the record;
// the replay fills Sources itself, as a sender with no outbox behind the
// receiver does.
func cloneDelivered(m *actors.Delivered, recv *actors.Conn, key func(wire.NodePublic) wire.NodePublic) *actors.Delivered {
	out := &actors.Delivered{Receiver: recv, Sources: make([]actors.DeliveredSource, len(m.Sources))}
	for i, s := range m.Sources {
		out.Sources[i] = actors.DeliveredSource{Source: key(s.Source), Forwarded: s.Forwarded}
	}
	return out
}
