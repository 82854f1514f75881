package actorkit

import (
	"testing"
)

// TestMeshLinkLossMovesTheForwarder: real mesh links between three
// nodes. A key connected on two peers is reached through the peer that
// announced it first; when that link is lost (and cannot be redialled),
// the next packet goes through the other peer, to the key's connection
// there.
func TestMeshLinkLossMovesTheForwarder(t *testing.T) {
	Run(t, func(a *Kit) {
		b, c := a.Node(), a.Node()
		key := PrivateKey(1000)
		onB := b.Dial(WithPrivateKey(key))
		links := a.MeshWith(b, c)
		onC := c.Dial(WithPrivateKey(key)) // announced to a after b's
		sender := a.Dial()
		if rt := a.Route(onB.Key); rt == nil || rt.Forward == nil || rt.Forward.Name() != b.name {
			t.Fatalf("route on a: %+v, want forwarding through %s", rt, b.name)
		}
		sender.SendPacket(onB.Key, payloadN(0))
		expectPackets(t, onB, sender.Key, 0)
		expectPackets(t, onC, sender.Key)

		links[0].Refuse(true)
		links[0].Cut()
		if rt := a.Route(onB.Key); rt == nil || rt.Forward == nil || rt.Forward.Name() != c.name {
			t.Fatalf("route on a after losing %s: %+v, want forwarding through %s", b.name, rt, c.name)
		}
		sender.SendPacket(onB.Key, payloadN(1))
		expectPackets(t, onC, sender.Key, 1)
		expectPackets(t, onB, sender.Key)
		a.Check()
	})
}
