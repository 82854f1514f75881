package interop

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/derp"
	"tailscale.com/types/key"
)

// region is a harness.Region whose nodes the test starts and stops.
type region struct {
	*harness.Region
	t *testing.T
}

// newRegion prepares (but does not start) one node per kind.
func newRegion(t *testing.T, kinds ...harness.Kind) *region {
	t.Helper()
	r, err := harness.NewRegion(t.TempDir(), kinds...)
	if err != nil {
		t.Fatal(err)
	}
	return &region{Region: r, t: t}
}

// startAll starts every node with -mesh-with naming every node.
func (r *region) startAll() *region {
	for i := range r.Nodes {
		r.start(i)
	}
	return r
}

// start (re)starts node i with args (nil: as before).
func (r *region) start(i int, args ...string) *harness.Node {
	r.t.Helper()
	n := r.Nodes[i]
	n.Server = harness.Start(r.t, r.Options(i, args))
	return n
}

// connect dials node i as a Tailscale client would, verifying its
// certificate.
func (r *region) connect(i int, priv key.NodePrivate) *harness.Client {
	r.t.Helper()
	c, err := r.Dial(i, priv)
	if err != nil {
		r.t.Fatalf("connecting to %s: %v", r.Nodes[i].Name, err)
	}
	r.t.Cleanup(func() { c.Close() })
	return c
}

// awaitPath sends from one client to another until a packet gets through
// (the mesh links and their announcements take a moment), then drains
// every probe still on its way, so the next message to reads what the
// test sends next.
func awaitPath(t *testing.T, from, to *harness.Client) {
	t.Helper()
	deadline := time.Now().Add(harness.Wait)
	for i := 0; ; i++ {
		if err := from.Send(to.Pub, []byte("probe "+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		if _, err := to.AwaitPacketFrom(from.Pub, 50*time.Millisecond); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no path from %v to %v within %v", from.Pub.ShortString(), to.Pub.ShortString(), harness.Wait)
		}
	}
	marker := []byte("end of probes")
	if err := from.Send(to.Pub, marker); err != nil {
		t.Fatal(err)
	}
	for {
		p := to.RecvPacket(t)
		if p.Source == from.Pub && bytes.Equal(p.Data, marker) {
			return
		}
		if !bytes.HasPrefix(p.Data, []byte("probe ")) {
			t.Fatalf("%v got %q from %v while draining probes", to.Pub.ShortString(), p.Data, p.Source.ShortString())
		}
	}
}

// exchange sends a packet each way between a and b and checks payload
// and source.
func exchange(t *testing.T, a, b *harness.Client, tag string) {
	t.Helper()
	ab, ba := []byte(tag+": a to b"), []byte(tag+": b to a")
	if err := a.Send(b.Pub, ab); err != nil {
		t.Fatal(err)
	}
	b.ExpectPacket(t, a.Pub, ab)
	if err := b.Send(a.Pub, ba); err != nil {
		t.Fatal(err)
	}
	a.ExpectPacket(t, b.Pub, ba)
}

// The mixed region: derpd and upstream derper meshed both ways, each
// linking to the other. Clients on either side reach each other with
// their sources intact, disco and data alike, and PeerGone crosses the
// mesh when a sender leaves. Against the derper target this is a
// derper–derper region: the expectations are upstream's own.
func TestMeshWithUpstreamDerper(t *testing.T) {
	r := newRegion(t, harness.TargetFromEnv(), harness.Derper).startAll()
	a := r.connect(0, key.NodePrivate{})
	b := r.connect(1, key.NodePrivate{})
	awaitPath(t, a, b)
	awaitPath(t, b, a)
	exchange(t, a, b, "data")
	if err := a.Send(b.Pub, disco(1)); err != nil {
		t.Fatal(err)
	}
	b.ExpectPacket(t, a.Pub, disco(1))

	// b heard from a; when a leaves the region, b is told.
	a.Close()
	b.ExpectPeerGone(t, a.Pub, derp.PeerGoneReasonDisconnected)
	b.Sync(t)

	// And the other way: a client on derper that sent to one on derpd.
	c := r.connect(0, key.NodePrivate{})
	d := r.connect(1, key.NodePrivate{})
	awaitPath(t, d, c)
	d.Close()
	c.ExpectPeerGone(t, d.Pub, derp.PeerGoneReasonDisconnected)
	c.Sync(t)

	n0 := r.Nodes[0]
	if n0.Kind == harness.Derpd {
		// derpd's link pings its peer to tell a dead one from a quiet
		// one; derper must answer, or the link would not stay up.
		deadline := time.Now().Add(harness.Wait)
		for l := linkTo(t, n0.Server, r.Nodes[1].Name); l.RTTMillis == 0; l = linkTo(t, n0.Server, r.Nodes[1].Name) {
			if l.State != "up" || l.Sessions != 1 || time.Now().After(deadline) {
				t.Fatalf("link to derper: %+v, want it up on its first session with a round trip from a Pong", l)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if got := n0.Metric(t, "derp_packets_forwarded_out"); got < 2 {
		t.Errorf("%s forwarded_out = %v, want at least 2", n0.Kind, got)
	}
	if got := n0.Metric(t, "derp_packets_forwarded_in"); got < 1 {
		t.Errorf("%s forwarded_in = %v, want at least 1", n0.Kind, got)
	}
}

// A three-node region of the target: every pair of clients on different
// nodes reaches each other, each node's own entry in -mesh-with costs
// nothing (§9.26), and nothing is forwarded twice (§9.24: a forwarded
// packet is delivered, never re-forwarded).
func TestMeshThreeNodeRegion(t *testing.T) {
	target := harness.TargetFromEnv()
	r := newRegion(t, target, target, target).startAll()
	var cs []*harness.Client
	for i := range r.Nodes {
		cs = append(cs, r.connect(i, key.NodePrivate{}))
	}
	for i, a := range cs {
		for j, b := range cs {
			if i != j {
				awaitPath(t, a, b)
			}
		}
	}
	before := make([]float64, len(r.Nodes))
	for i, n := range r.Nodes {
		before[i] = n.Metric(t, "derp_packets_forwarded_out") + n.Metric(t, "derp_packets_forwarded_in")
	}
	for i, a := range cs {
		for j, b := range cs {
			if i < j {
				exchange(t, a, b, fmt.Sprintf("%d-%d", i, j))
			}
		}
	}
	// Six packets crossed the mesh, each forwarded out once by its
	// sender's node and in once by its receiver's: twelve in all, not
	// more (a packet forwarded again, or through a node's own entry,
	// would add to it).
	deadline := time.Now().Add(harness.Wait)
	for {
		total := 0.0
		for i, n := range r.Nodes {
			total += n.Metric(t, "derp_packets_forwarded_out") + n.Metric(t, "derp_packets_forwarded_in") - before[i]
		}
		if total == 12 {
			break
		}
		if total > 12 || time.Now().After(deadline) {
			t.Fatalf("forwarded in+out grew by %v over the region, want 12", total)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if target == harness.Derpd {
		for _, n := range r.Nodes {
			v := meshDebug(t, n.Server)
			for _, l := range v.Links {
				want := "up"
				if strings.HasPrefix(l.Peer, n.Name+":") {
					want = "self"
				}
				if l.State != want {
					t.Errorf("%s: link %s is %q, want %q", n.Name, l.Peer, l.State, want)
				}
			}
		}
	}
}

// A node killed with traffic flowing: its peers drop its keys at once
// (their clients that heard from its clients get PeerGone), traffic
// between the other nodes carries on, and when it comes back with the
// same key the region heals by itself.
func TestMeshNodeKilledAndRestarted(t *testing.T) {
	target := harness.TargetFromEnv()
	r := newRegion(t, target, target, target).startAll()
	a, b, c := r.connect(0, key.NodePrivate{}), r.connect(1, key.NodePrivate{}), r.connect(2, key.NodePrivate{})
	for _, p := range [][2]*harness.Client{{a, b}, {b, a}, {b, c}, {a, c}, {c, a}} {
		awaitPath(t, p[0], p[1])
	}
	r.Nodes[1].Kill()
	b.ExpectClosed(t)
	a.ExpectPeerGone(t, b.Pub, derp.PeerGoneReasonDisconnected)
	c.ExpectPeerGone(t, b.Pub, derp.PeerGoneReasonDisconnected)
	exchange(t, a, c, "while node 2 is down")

	r.start(1)
	b2 := r.connect(1, b.Priv)
	awaitPath(t, a, b2)
	awaitPath(t, b2, a)
	awaitPath(t, c, b2)
	exchange(t, a, b2, "after the restart")
	exchange(t, c, b2, "after the restart")
	a.Sync(t)
	c.Sync(t)
}

// A client that moves from one node to another, connecting to the new one
// before it leaves the old, as tailscaled does when its home changes: its
// peers keep reaching it without a PeerGone, first on the old node and
// then on the new, and the move back is followed too.
func TestMeshClientMovesBetweenNodes(t *testing.T) {
	target := harness.TargetFromEnv()
	r := newRegion(t, target, target).startAll()
	x := r.connect(0, key.NodePrivate{})
	y := r.connect(1, key.NodePrivate{})
	awaitPath(t, x, y)
	awaitPath(t, y, x)

	x2 := r.connect(1, x.Priv) // x arrives on y's node
	x.Close()
	exchange(t, x2, y, "x on node 2")
	y.Sync(t) // and no PeerGone for x: it never left the region

	// And back. Whether y's node hears of x on the other node before x
	// leaves it is a race, upstream's as much as ours: if the departure
	// comes first, x is gone from the region for an instant and y is told
	// so. Either way the next announcement puts x back within reach.
	x3 := r.connect(0, x.Priv)
	x2.Close()
	awaitPath(t, y, x3)
	var data [8]byte
	copy(data[:], "moved-ok")
	if err := y.SendPing(data); err != nil {
		t.Fatal(err)
	}
	for gone := 0; ; {
		switch m := y.Next(t).(type) {
		case derp.PongMessage:
			if m != derp.PongMessage(data) {
				t.Fatalf("pong %x", m)
			}
		case derp.PeerGoneMessage:
			if m.Peer != x.Pub || gone > 0 {
				t.Fatalf("y got %+v", m)
			}
			gone++
			continue
		default:
			t.Fatalf("y got %T %+v", m, m)
		}
		break
	}
	exchange(t, x3, y, "x back on node 1")
	y.Sync(t)
}

// A peer with another mesh key is no peer: the link fails with an error
// that says why, nothing crosses, and the peer counts the mismatch.
func TestMeshWrongMeshKeyIsRefused(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("checks derpd's link state and its mesh-key mismatch counter, which derper does not have")
	}
	r := newRegion(t, harness.Derpd, harness.Derpd)
	r.start(0, "-mesh-with", r.MeshWith())
	good := r.MeshKey
	r.MeshKey = harness.MeshKeyHex()
	r.start(1, "-mesh-with", r.MeshWith())
	r.MeshKey = good
	a, b := r.connect(0, key.NodePrivate{}), r.connect(1, key.NodePrivate{})

	for _, n := range r.Nodes {
		n.WaitMetricAtLeast(t, "derpd_mesh_key_mismatch", 1)
	}
	deadline := time.Now().Add(harness.Wait)
	for {
		l := linkTo(t, r.Nodes[0].Server, r.Nodes[1].Name)
		if l.State != "up" && strings.Contains(l.LastError, "mesh key") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("link to the peer with another key: %+v, want down with an error naming the mesh key", l)
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := r.Nodes[0].Metric(t, `derp_packets_dropped{reason="unknown_dest",kind="other"}`)
	if err := a.Send(b.Pub, []byte("must not cross")); err != nil {
		t.Fatal(err)
	}
	r.Nodes[0].WaitMetric(t, `derp_packets_dropped{reason="unknown_dest",kind="other"}`, before+1)
	b.Sync(t)
}

// -mesh-dns: the region is whatever a DNS name resolves to, here three
// nodes on 127.0.0.2–4 sharing one port, answered by a DNS server the test
// controls. As in a Kubernetes deployment, the name that lists the
// members (members.test) is not the one their certificate is for
// (region.test, the clients' host name). Nodes link to each address of
// the answer (their own recognised by key), add a link when an address
// appears, remove it when one goes (its keys leave with it), and keep
// what they have when the lookup fails.
func TestMeshDNSMembership(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("-mesh-dns is derpd's; upstream derper only has the static -mesh-with")
	}
	const name = "region.test"
	r := newRegion(t, harness.Derpd, harness.Derpd, harness.Derpd)
	port := r.Nodes[0].Port
	ips := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")}
	r.CA.Issue(t, r.CertDir, name, 99)
	for i, n := range r.Nodes {
		n.Name, n.Host, n.Port = name, ips[i].String(), port
	}
	const members = "members.test"
	dns := startDNS(t, members, ips[0], ips[1])
	args := []string{"-mesh-dns", name + ":" + strconv.Itoa(port) + "/" + members, "-mesh-dns-interval", "100ms", "-mesh-dns-resolver", dns.Addr()}
	link := func(n int, ip netip.Addr) string { return members + "/" + ip.String() }

	r.start(0, args...)
	r.start(1, args...)
	a, b := r.connect(0, key.NodePrivate{}), r.connect(1, key.NodePrivate{})
	awaitPath(t, a, b)
	awaitPath(t, b, a)

	// A third node not yet in the answer links to the others, but they
	// do not know it: only its own clients can send across.
	r.start(2, args...)
	c := r.connect(2, key.NodePrivate{})
	awaitPath(t, c, a)
	if l := linkTo(t, r.Nodes[0].Server, link(0, ips[2])); l.Peer != "" {
		t.Fatalf("node 1 links to node 3 before DNS names it: %+v", l)
	}

	dns.set(ips...)
	awaitPath(t, a, c)
	awaitPath(t, b, c)
	awaitPath(t, c, b)
	waitLinks(t, r.Nodes[0].Server, map[string]string{link(0, ips[0]): "self", link(0, ips[1]): "up", link(0, ips[2]): "up"})

	// Node 2 leaves the answer: the others drop their links to it, and
	// with them its client, so those who heard from b are told.
	dns.set(ips[0], ips[2])
	a.ExpectPeerGone(t, b.Pub, derp.PeerGoneReasonDisconnected)
	c.ExpectPeerGone(t, b.Pub, derp.PeerGoneReasonDisconnected)
	waitLinks(t, r.Nodes[0].Server, map[string]string{link(0, ips[0]): "self", link(0, ips[2]): "up"})
	waitLinks(t, r.Nodes[2].Server, map[string]string{link(0, ips[0]): "up", link(0, ips[2]): "self"})

	// A lookup that answers nothing changes nothing.
	dns.set()
	deadline := time.Now().Add(harness.Wait)
	for v := meshDebug(t, r.Nodes[0].Server); v.DNS == nil || v.DNS.LastError == ""; v = meshDebug(t, r.Nodes[0].Server) {
		if time.Now().After(deadline) {
			t.Fatal("node 1 never reported the empty answer")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitLinks(t, r.Nodes[0].Server, map[string]string{link(0, ips[0]): "self", link(0, ips[2]): "up"})
	exchange(t, a, c, "with an empty DNS answer")
}

// waitLinks waits until srv's links are exactly want (name → state).
func waitLinks(t *testing.T, srv *harness.Server, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(harness.Wait)
	for {
		got := map[string]string{}
		for _, l := range meshDebug(t, srv).Links {
			got[l.Peer] = l.State
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("links %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
