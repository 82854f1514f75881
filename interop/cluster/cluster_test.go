// Package cluster runs a DERP region on separate hosts: three derpd nodes
// and one upstream derper, each in its own Docker container, meshed over a
// private network, with Tailscale's client library connecting from the
// test host. It runs only with DERPD_CLUSTER=1 (make test-cluster), and
// then fails, rather than skips, when Docker cannot be reached.
//
// The region looks like a Kubernetes headless service: every node has the
// same network alias, derp.cluster.test, on the mesh network, Docker's
// embedded DNS answers that name with every node's address, and every
// node serves one certificate for that name, issued by a throwaway CA
// that each image trusts as its system's roots. The derpd nodes find
// each other, and derper, with -mesh-dns alone: the first three look up
// the certificate's name, the fourth a second alias every node has
// (members.cluster.test, verifying derp.cluster.test: the TLSNAME/NAME
// form, for a headless service whose name is not the public one).
// derper, which has no such flag, lists every derpd node as
// derp.cluster.test/<address>. Clients reach the nodes over a second
// network, so that cutting a node off the mesh leaves both its clients
// and its debug pages reachable: the test watches both sides of the
// partition. Every image, network and container is named and labelled
// for its run; all are removed at the end, and a later run removes what
// a run that was killed left behind.
//
// The steps, each checked for traffic between clients of every pair of
// nodes (sources intact), PeerGone owed and not owed, and the nodes'
// state back to what the region's shape implies (each derpd node's DNS
// answer and links, one link from every peer to every node,
// derp_current_connections and the client and watcher gauges on all
// four, no duplicate keys left by a connection from before):
//
//  1. A blip: one derpd node is cut off the mesh network just long enough
//     for the others to see its address leave the DNS answer, and healed
//     with its old address and alias. Their clients get PeerGone for its
//     client; its own links outlive the blip, so its client gets none.
//  2. The same node is cut until its own links time out (derpd pings
//     its peers and gives up after 15 s of silence), then healed. Both
//     sides owe PeerGone to whoever heard from the other side, and
//     neither routes to the other meanwhile. derper's links have no such
//     timeout: derper notices a dead link when a read times out (two
//     minutes) or a write is refused, so the PeerGone its client may get
//     for the cut node's client is allowed, never awaited.
//  3. The same node is frozen (docker pause): it stays in the DNS answer
//     and its kernel still acknowledges everything, so only the other
//     derpd nodes' pings can tell, and they do. Its own links may or may
//     not time out while it is frozen, so its client's PeerGone messages
//     are allowed, not owed. Thawed, it is back in the region.
//  4. One derpd node is killed and started again: its client's peers get
//     PeerGone on every node (the kernel closes its sockets, so derper
//     sees it too), and its client, back on it, reaches everyone.
//  5. It is killed and replaced by a fresh container at its address, with
//     a new server key, as a pod replaced without its volume would be.
//     derper's client is not owed PeerGone this time: upstream tells a
//     connection of a peer's departure once, however often the peer
//     comes back (derpd tells it every time).
//  6. A fourth derpd node joins by DNS alone, naming nobody: the others
//     link to it, derper's standing entry for it connects, and its client
//     reaches everyone, as does a client new to an old node.
//
// Durations are never asserted: every wait is for a condition, with a
// deadline far beyond what it takes.
package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/types/key"
)

// sharedName is the region's DNS name: every node's network alias, the
// name in its certificate, the HostName clients verify. membersName is a
// second alias of every node, standing for a Kubernetes headless service
// whose name is not the one in the certificate.
const (
	sharedName  = "derp.cluster.test"
	membersName = "members.cluster.test"
)

// Deadlines: failure bounds, never expectations.
const (
	connectWait = 30 * time.Second
	// pathWait covers a derper link that has to notice its connection
	// is dead before it reconnects: a write into a socket its peer
	// forgot gets a reset at once, then derper waits 5 s to redial.
	pathWait = 60 * time.Second
	// settleWait covers a stale TCP connection from before a cut, which
	// ends when a retransmission reaches a peer that has forgotten it.
	settleWait = 90 * time.Second
	// cutWait covers the derpd link timeout (15 s without a pong).
	cutWait = 60 * time.Second
	// blipMax is how long a cut may last and still be shorter than that
	// timeout, with room for a ping that was due when it began.
	blipMax = 8 * time.Second
)

func TestCluster(t *testing.T) {
	if os.Getenv("DERPD_CLUSTER") != "1" {
		t.Skip("the Docker cluster suite runs only with DERPD_CLUSTER=1 (make test-cluster)")
	}
	c := newCluster(t)
	d1 := c.addNode(t, harness.Derpd, 11)
	d2 := c.addNode(t, harness.Derpd, 12)
	d3 := c.addNode(t, harness.Derpd, 13)
	// derper's entries name every derpd node the test will ever run, the
	// fourth among them: derper retries an entry that does not answer.
	// d4 is prepared now so that its address is known, and started later.
	// It looks up the members' name and verifies the shared one, as in
	// Kubernetes with a headless service: the other form of -mesh-dns.
	d4 := c.prepareDNSNode(harness.Derpd, 14, sharedName+":443/"+membersName)
	dr := c.prepareNode(harness.Derper, 20)
	c.startNode(t, dr)

	a1 := c.connect(t, "a1", d1, key.NodePrivate{})
	// q only sends: having heard from nobody, it must never get PeerGone.
	q := c.connect(t, "q", d1, key.NodePrivate{})
	a2 := c.connect(t, "a2", d2, key.NodePrivate{})
	a3 := c.connect(t, "a3", d3, key.NodePrivate{})
	dc := c.connect(t, "d", dr, key.NodePrivate{})
	c.quiet = map[*client]bool{q: true}

	t.Run("start", func(t *testing.T) {
		c.settle(t, "the region came up", false)
		c.checkPaths(t)
		c.checkGone(t)
	})
	if t.Failed() {
		return
	}

	t.Run("blip", func(t *testing.T) {
		// A cut shorter than derpd's link timeout: d2's address leaves
		// the DNS answer, so d1 and d3 drop their links to it at once
		// (a2 is gone for their clients), but d2's own links outlive it
		// and a2 hears of nobody leaving. Healed, d1 and d3 link to d2
		// again while d2 may still hold their old connections, which end
		// when a retransmission gets through.
		owed := c.owed([]*client{a1, q, a3}, []*client{a2})
		cutAt := time.Now()
		c.cut(t, d2)
		c.awaitGone(t, owed, cutWait)
		c.heal(t, d2)
		if took := time.Since(cutAt); took > blipMax {
			// Too slow a machine for a blip: d2's links may have timed
			// out after all. Then a2 may hear of everyone leaving.
			t.Logf("the blip lasted %v, long enough for d2's links to time out", took.Round(time.Millisecond))
			for _, p := range c.clientsExcept(d2) {
				c.allowGone(a2, p)
			}
		}
		c.settle(t, "d2 is back on the mesh", false)
		c.checkPaths(t)
		c.checkGone(t)
	})
	if t.Failed() {
		return
	}

	t.Run("cut and heal", func(t *testing.T) {
		// Both sides of the partition owe PeerGone to whoever heard from
		// the other side: derpd's links notice within their ping timeout.
		// derper's client may or may not get one for d2's client, as
		// derper's link may or may not time out before the heal.
		owed := c.owed([]*client{a1, q, a3}, []*client{a2})
		owed = append(owed, c.owed([]*client{a2}, c.clientsExcept(d2))...)
		c.allowGone(dc, a2)

		c.cut(t, d2)
		c.awaitGone(t, owed, cutWait)
		// The derpd nodes on the other side dropped their links to d2
		// (its address left the DNS answer) and with them a2's key; d2
		// lost every link it had, and every key they brought.
		c.settle(t, "d2 is cut off", true)
		c.awaitUnroutable(t, a1, a2, cutWait)
		c.awaitUnroutable(t, a3, a2, cutWait)
		c.awaitNoLinkUp(t, d2, cutWait)
		c.awaitUnroutable(t, a2, a1, cutWait)
		c.awaitUnroutable(t, a2, dc, cutWait)
		// The rest of the region carries on.
		c.checkPathsAmong(t, c.clientsExcept(d2))

		c.heal(t, d2)
		c.settle(t, "d2 is back on the mesh", false)
		c.checkPaths(t)
		c.checkGone(t)
	})
	if t.Failed() {
		return
	}

	t.Run("pause", func(t *testing.T) {
		// Frozen (a stalled VM, a SIGSTOP): the node stays in the DNS
		// answer and its kernel still acknowledges every byte, so only
		// the other derpd nodes' pings can tell it is gone, and they do
		// within their timeout. Its own links' deadlines may pass while
		// it is frozen, so its client may hear of everyone leaving.
		owed := c.owed([]*client{a1, q, a3}, []*client{a2})
		c.allowGone(dc, a2)
		for _, p := range c.clientsExcept(d2) {
			c.allowGone(a2, p)
		}
		c.pause(t, d2)
		c.awaitGone(t, owed, cutWait)
		c.awaitUnroutable(t, a1, a2, cutWait)
		c.awaitUnroutable(t, a3, a2, cutWait)
		c.checkPathsAmong(t, c.clientsExcept(d2))
		c.unpause(t, d2)
		c.settle(t, "d2 runs again", false)
		c.checkPaths(t)
		c.checkGone(t)
	})
	if t.Failed() {
		return
	}

	t.Run("kill and restart", func(t *testing.T) {
		c.checkPaths(t) // traffic before, so everyone has heard from a3
		owed := c.owed(c.clientsExcept(d3), []*client{a3})
		c.kill(t, d3)
		if err := a3.awaitBroken(connectWait); err != nil {
			t.Fatalf("%v: %v after its node was killed", a3, err)
		}
		c.drop(a3)
		c.awaitGone(t, owed, cutWait)
		c.settle(t, "d3 is down", false)
		c.checkPaths(t)

		c.restart(t, d3)
		a3 = c.connect(t, "a3", d3, a3.priv) // the same device, back
		c.settle(t, "d3 is back", false)
		c.checkPaths(t)
		c.checkGone(t)
	})
	if t.Failed() {
		return
	}

	t.Run("replace", func(t *testing.T) {
		// As a pod replaced without its volume: the node's container is
		// killed and removed, and a fresh one takes its address with a
		// new server key. The links to that address must take the new
		// key, and the region must forget the old one.
		c.checkPaths(t)
		owed := c.owed(c.clientsExcept(d3), []*client{a3})
		c.remove(t, d3)
		if err := a3.awaitBroken(connectWait); err != nil {
			t.Fatalf("%v: %v after its node was removed", a3, err)
		}
		c.drop(a3)
		c.awaitGone(t, owed, cutWait)
		c.settle(t, "d3 is gone", false)

		c.startNode(t, d3)
		a3 = c.connect(t, "a3", d3, a3.priv)
		c.settle(t, "d3 is replaced", false)
		c.checkPaths(t)
		c.checkGone(t)
	})
	if t.Failed() {
		return
	}

	t.Run("join by DNS", func(t *testing.T) {
		c.startNode(t, d4)
		a4 := c.connect(t, "a4", d4, key.NodePrivate{})
		c.settle(t, "d4 joined", false)
		c.checkPaths(t)
		c.checkGone(t)
		// And a client that arrives on an old node now, after all the
		// changes, is announced to every peer, d4 included.
		a1b := c.connect(t, "a1b", d1, key.NodePrivate{})
		c.settle(t, "a1b connected", false)
		for _, p := range []*client{a2, a3, a4, dc} {
			c.awaitPath(t, a1b, p)
			c.awaitPath(t, p, a1b)
		}
		c.checkGone(t)
	})
}

// cluster is one run's images, networks, nodes and clients.
type cluster struct {
	id        string // prefix of every name, label of every resource
	labels    []string
	ca        *harness.CA
	images    map[harness.Kind]string
	mesh, lan *network // the nodes' private network; the one clients use
	nodes     []*node

	clients []*client // every client ever connected, for names in messages
	live    []*client // connected, not yet dropped
	quiet   map[*client]bool
	want    map[owedKey]int  // PeerGone owed
	allowed map[owedKey]bool // one PeerGone more is allowed
	probes  int
}

// owedKey is a PeerGone a connection is owed: the recipient is one
// connection, the peer a key, whichever connections held it.
type owedKey struct {
	r    *client
	peer key.NodePublic
}

// node is one container. The flags it runs with are fixed when it is
// prepared, so a restart runs it the same way.
type node struct {
	kind    harness.Kind
	name    string // the container's
	meshIP  netip.Addr
	lanIP   netip.Addr
	args    []string
	lookup  string // the name its -mesh-dns looks up, which names its links
	created bool
	running bool // the process runs
	onMesh  bool // attached to the mesh network
	http    *http.Client
}

func (n *node) String() string { return n.name }

func (n *node) live() bool { return n.running && n.onMesh }

// newCluster checks that Docker answers, removes what aborted runs left,
// builds the static binaries and their images, and makes the networks.
// Everything it makes is removed when the test ends, passed or failed.
func newCluster(t *testing.T) *cluster {
	if _, err := docker("version", "--format", "{{.Server.Version}}"); err != nil {
		t.Fatalf("DERPD_CLUSTER=1 but Docker is not reachable: %v", err)
	}
	if removed, err := reapStale(); err != nil {
		t.Logf("removing leftovers of aborted runs: %v", err)
	} else if len(removed) > 0 {
		t.Logf("removed %d leftovers of aborted runs: %v", len(removed), removed)
	}
	c := &cluster{
		id:      newRunID(),
		images:  map[harness.Kind]string{},
		want:    map[owedKey]int{},
		allowed: map[owedKey]bool{},
	}
	c.labels = []string{labelRun + "=" + c.id, labelOwner + "=" + ownerStamp(os.Getpid())}
	t.Logf("run %s", c.id)
	t.Cleanup(func() { c.teardown(t) })

	ca, err := harness.MakeCA()
	if err != nil {
		t.Fatal(err)
	}
	c.ca = ca
	dir := t.TempDir()
	if err := c.buildImages(dir); err != nil {
		t.Fatal(err)
	}
	if c.mesh, err = createNetwork(c.id+"-mesh", c.labels); err != nil {
		t.Fatal(err)
	}
	if c.lan, err = createNetwork(c.id+"-lan", c.labels); err != nil {
		t.Fatal(err)
	}
	t.Logf("mesh network %s, client network %s", c.mesh.subnet, c.lan.subnet)
	return c
}

// buildImages builds derpd and derper without cgo (a scratch image has
// no C library) and wraps each in an image holding nothing else but the
// region's CA as the system's roots, the certificate for the shared name,
// and the mesh key.
func (c *cluster) buildImages(dir string) error {
	bin := filepath.Join(dir, "bin")
	// One go build for both, so that what they share is compiled once.
	build := exec.Command("go", "build", "-o", bin+"/", "github.com/derpd/derpd/cmd/derpd", "tailscale.com/cmd/derper")
	build.Dir = harness.ModuleDir()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the servers: %v\n%s", err, out)
	}
	for _, kind := range []harness.Kind{harness.Derpd, harness.Derper} {
		if err := c.buildImage(filepath.Join(dir, string(kind)), kind, filepath.Join(bin, string(kind))); err != nil {
			return err
		}
	}
	return nil
}

// buildImage builds kind's image from a context dir of its own.
func (c *cluster) buildImage(ctx string, kind harness.Kind, binary string) error {
	for _, d := range []string{"certs", "keys"} {
		if err := os.MkdirAll(filepath.Join(ctx, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Rename(binary, filepath.Join(ctx, string(kind))); err != nil {
		return err
	}
	if err := c.ca.WritePEM(filepath.Join(ctx, "ca.pem")); err != nil {
		return err
	}
	if err := c.ca.IssueFiles(filepath.Join(ctx, "certs"), sharedName, 2); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(ctx, "keys", "mesh.key"), []byte(meshKey()+"\n"), 0o600); err != nil {
		return err
	}
	dockerfile := "FROM scratch\n" +
		"COPY ca.pem /etc/ssl/certs/ca-certificates.crt\n" +
		"COPY certs/ /certs/\n" +
		"COPY keys/ /keys/\n" +
		"COPY " + string(kind) + " /" + string(kind) + "\n" +
		"ENTRYPOINT [\"/" + string(kind) + "\"]\n"
	if err := os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return err
	}
	image := c.id + "-" + string(kind) + ":test"
	args := []string{"build", "-q", "-t", image}
	for _, l := range c.labels {
		args = append(args, "--label", l)
	}
	if _, err := dockerIn(ctx, append(args, ".")...); err != nil {
		return err
	}
	c.images[kind] = image
	return nil
}

var meshKey = sync.OnceValue(harness.MeshKeyHex)

// teardown writes the nodes' logs if the test failed (or
// DERPD_CLUSTER_LOGS=1), then removes every container, network and image
// of the run.
func (c *cluster) teardown(t *testing.T) {
	for _, cl := range c.live {
		cl.dc.Close()
	}
	for _, n := range c.nodes {
		if !n.created {
			continue
		}
		if t.Failed() || os.Getenv("DERPD_CLUSTER_LOGS") == "1" {
			logs, err := dockerLogs(n.name)
			if err != nil {
				logs = err.Error()
			}
			t.Logf("logs of %s (%s, mesh %s, clients %s):\n%s", n.name, n.kind, n.meshIP, n.lanIP, logs)
		}
		if _, err := docker("rm", "-f", "-v", n.name); err != nil {
			t.Errorf("removing container: %v", err)
		}
	}
	for _, nw := range []*network{c.mesh, c.lan} {
		if nw == nil {
			continue
		}
		if _, err := docker("network", "rm", nw.name); err != nil {
			t.Errorf("removing network: %v", err)
		}
	}
	for _, image := range c.images {
		if _, err := docker("rmi", "-f", image); err != nil {
			t.Errorf("removing image: %v", err)
		}
	}
}

// dockerLogs is the container's output, both streams.
func dockerLogs(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "logs", name).CombinedOutput()
	return string(out), err
}

// prepareNode assigns a node its addresses (host part last on both
// networks) and flags without starting it.
func (c *cluster) prepareNode(kind harness.Kind, last byte) *node {
	return c.prepareDNSNode(kind, last, sharedName+":443")
}

// prepareDNSNode is prepareNode with derpd's -mesh-dns argument.
func (c *cluster) prepareDNSNode(kind harness.Kind, last byte, meshDNS string) *node {
	n := &node{
		kind:   kind,
		name:   fmt.Sprintf("%s-%s%d", c.id, kind, last),
		meshIP: c.mesh.ip(last),
		lanIP:  c.lan.ip(last),
	}
	n.args = []string{
		"-a", ":443", "-certmode", "manual", "-certdir", "/certs", "-hostname", sharedName,
		"-c", "/keys/" + string(kind) + ".key", "-mesh-psk-file", "/keys/mesh.key",
		"-stun=false", "-http-port", "-1",
	}
	switch kind {
	case harness.Derpd:
		// The system resolver: in a container on a user-defined network
		// Docker writes /etc/resolv.conf naming its embedded DNS server,
		// even in a scratch image.
		n.args = append(n.args, "-mesh-dns", meshDNS, "-mesh-dns-interval", "1s")
		n.lookup = sharedName
		if _, name, ok := strings.Cut(meshDNS, "/"); ok {
			n.lookup = name
		}
	case harness.Derper:
		var entries []string
		for _, last := range []byte{11, 12, 13, 14} {
			entries = append(entries, sharedName+"/"+c.mesh.ip(last).String())
		}
		n.args = append(n.args, "-mesh-with", strings.Join(entries, ","))
	}
	ip := n.lanIP.String()
	n.http = &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, net.JoinHostPort(ip, "443"))
			},
			TLSClientConfig: &tls.Config{ServerName: sharedName, RootCAs: c.ca.Pool},
			// A fresh connection each time: none lingers across a cut,
			// and none is pooled in the node's connection counts.
			DisableKeepAlives: true,
		},
	}
	c.nodes = append(c.nodes, n)
	return n
}

// addNode prepares and starts a node.
func (c *cluster) addNode(t *testing.T, kind harness.Kind, last byte) *node {
	n := c.prepareNode(kind, last)
	c.startNode(t, n)
	return n
}

// startNode creates the container on both networks, the mesh one with the
// shared alias, and starts it.
func (c *cluster) startNode(t *testing.T, n *node) {
	t.Helper()
	args := []string{"create", "--name", n.name, "--network", c.mesh.name, "--ip", n.meshIP.String(),
		"--network-alias", sharedName, "--network-alias", membersName,
		"-e", "TS_DEBUG_TRUSTED_CIDRS=" + c.lan.subnet.String() + "," + c.mesh.subnet.String()}
	for _, l := range c.labels {
		args = append(args, "--label", l)
	}
	args = append(args, c.images[n.kind])
	if _, err := docker(append(args, n.args...)...); err != nil {
		t.Fatal(err)
	}
	n.created = true
	if _, err := docker("network", "connect", "--ip", n.lanIP.String(), c.lan.name, n.name); err != nil {
		t.Fatal(err)
	}
	n.onMesh = true
	c.start(t, n)
}

// start starts the container and waits until it answers its probe.
func (c *cluster) start(t *testing.T, n *node) {
	t.Helper()
	if _, err := docker("start", n.name); err != nil {
		t.Fatal(err)
	}
	n.running = true
	deadline := time.Now().Add(connectWait)
	for {
		res, err := n.http.Head("https://" + sharedName + "/derp/probe")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return
			}
			err = fmt.Errorf("status %s", res.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer /derp/probe: %v", n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cut takes the node off the mesh network; its clients and the test
// still reach it on the other network.
func (c *cluster) cut(t *testing.T, n *node) {
	t.Helper()
	if _, err := docker("network", "disconnect", c.mesh.name, n.name); err != nil {
		t.Fatal(err)
	}
	n.onMesh = false
}

// heal puts it back, with its old address and the shared alias.
func (c *cluster) heal(t *testing.T, n *node) {
	t.Helper()
	if _, err := docker("network", "connect", "--ip", n.meshIP.String(), "--alias", sharedName, "--alias", membersName, c.mesh.name, n.name); err != nil {
		t.Fatal(err)
	}
	n.onMesh = true
}

// pause freezes the node's process; its sockets stay open.
func (c *cluster) pause(t *testing.T, n *node) {
	t.Helper()
	if _, err := docker("pause", n.name); err != nil {
		t.Fatal(err)
	}
	n.running = false
}

// unpause lets it run again.
func (c *cluster) unpause(t *testing.T, n *node) {
	t.Helper()
	if _, err := docker("unpause", n.name); err != nil {
		t.Fatal(err)
	}
	n.running = true
}

// kill ends the node's process with SIGKILL, as a crash would.
func (c *cluster) kill(t *testing.T, n *node) {
	t.Helper()
	if _, err := docker("kill", n.name); err != nil {
		t.Fatal(err)
	}
	n.running = false
}

// remove kills the node and removes its container, key file and all.
func (c *cluster) remove(t *testing.T, n *node) {
	t.Helper()
	c.kill(t, n)
	if _, err := docker("rm", "-f", "-v", n.name); err != nil {
		t.Fatal(err)
	}
	n.created = false
}

// restart starts a killed node again: same container, so the same
// addresses and the key file it wrote on its first start.
func (c *cluster) restart(t *testing.T, n *node) {
	t.Helper()
	c.start(t, n)
}

// connect dials n as a new client (a fresh key if priv is zero).
func (c *cluster) connect(t *testing.T, name string, n *node, priv key.NodePrivate) *client {
	t.Helper()
	cl, err := dialClient(name, n, n.lanIP, c.ca.Pool, priv)
	if err != nil {
		t.Fatal(err)
	}
	c.clients = append(c.clients, cl)
	c.live = append(c.live, cl)
	return cl
}

// drop closes a client and forgets it: it is no longer expected
// anywhere.
func (c *cluster) drop(cl *client) {
	cl.close()
	c.live = slices.DeleteFunc(c.live, func(x *client) bool { return x == cl })
}

func (c *cluster) clientsOn(nodes ...*node) []*client {
	var out []*client
	for _, cl := range c.live {
		if slices.Contains(nodes, cl.node) {
			out = append(out, cl)
		}
	}
	return out
}

func (c *cluster) clientsExcept(n *node) []*client {
	var out []*client
	for _, cl := range c.live {
		if cl.node != n {
			out = append(out, cl)
		}
	}
	return out
}

// checkPaths proves a path between every two live clients on different
// live nodes, both ways (the quiet client only sends).
func (c *cluster) checkPaths(t *testing.T) {
	t.Helper()
	var cs []*client
	for _, cl := range c.live {
		if cl.node.live() {
			cs = append(cs, cl)
		}
	}
	c.checkPathsAmong(t, cs)
}

func (c *cluster) checkPathsAmong(t *testing.T, cs []*client) {
	t.Helper()
	for _, a := range cs {
		for _, b := range cs {
			if a.node != b.node && !c.quiet[b] {
				c.awaitPath(t, a, b)
			}
		}
	}
}

// awaitPath sends from one client to another until a probe arrives: the
// mesh links and their announcements may still be on their way. Every
// probe is unique, so one that arrives is known to be the one sent, and
// the source it arrived with must be the sender's.
func (c *cluster) awaitPath(t *testing.T, from, to *client) {
	t.Helper()
	deadline := time.Now().Add(pathWait)
	for {
		c.probes++
		probe := fmt.Sprintf("probe %d %s to %s", c.probes, from, to)
		if err := from.send(to, probe); err != nil {
			t.Fatalf("%v sending to %v: %v", from, to, err)
		}
		for wait := time.Now().Add(250 * time.Millisecond); time.Now().Before(wait); time.Sleep(5 * time.Millisecond) {
			if src := to.sources(probe); len(src) > 0 {
				if len(src) > 1 || src[0] != from.pub {
					t.Fatalf("%v got %q %d times from %v, want once from %v", to, probe, len(src), src, from.pub)
				}
				return
			}
		}
		for _, cl := range []*client{from, to} {
			if err := cl.broken(); err != nil {
				t.Fatalf("no path from %v to %v: %v's connection ended: %v", from, to, cl, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no path from %v to %v within %v", from, to, pathWait)
		}
	}
}

// owed lists the PeerGone messages the departure of the departed clients
// owes the recipients: one for every departed client a recipient has
// heard from since its last PeerGone. It must be taken before the
// departure, and the debt is recorded at once.
func (c *cluster) owed(recipients, departed []*client) []owedKey {
	var out []owedKey
	for _, r := range recipients {
		for _, d := range departed {
			if r.node.kind == harness.Derper && r.goneCount(d.pub) > 0 {
				// Upstream tells a connection of a peer's departure
				// once: the note that it heard from the peer outlives
				// the PeerGone, so hearing from it again does not
				// subscribe it again (sclient.sawSrc in derpserver).
				continue
			}
			if r != d && r.hasHeard(d) {
				k := owedKey{r, d.pub}
				c.want[k]++
				out = append(out, k)
			}
		}
	}
	return out
}

// allowGone allows one PeerGone more than owed to recipient about peer,
// for a departure some node may or may not have noticed in time.
func (c *cluster) allowGone(recipient, peer *client) {
	c.allowed[owedKey{recipient, peer.pub}] = true
}

// awaitGone waits until every owed PeerGone has come.
func (c *cluster) awaitGone(t *testing.T, owed []owedKey, d time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for _, k := range owed {
		for {
			got := k.r.goneCount(k.peer)
			if got >= c.want[k] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v got %d PeerGone(%s) within %v, want %d; its PeerGone so far: %s",
					k.r, got, c.nameOf(k.peer), d, c.want[k], goneSummary(k.r, c.clients))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("%d PeerGone messages owed came within %v", len(owed), time.Since(start).Round(10*time.Millisecond))
}

// checkGone requires every client to have had exactly the PeerGone
// messages owed to it (an allowed extra one is absorbed into what is
// owed), and no message a plain client never gets.
func (c *cluster) checkGone(t *testing.T) {
	t.Helper()
	for _, r := range c.clients {
		for _, peer := range c.keys() {
			if peer == r.pub {
				continue
			}
			k := owedKey{r, peer}
			got, want := r.goneCount(peer), c.want[k]
			if got == want+1 && c.allowed[k] {
				c.want[k]++
				delete(c.allowed, k)
				t.Logf("%v got the allowed PeerGone(%s)", r, c.nameOf(peer))
				continue
			}
			if got != want {
				t.Errorf("%v got %d PeerGone(%s), want %d", r, got, c.nameOf(peer), want)
			}
		}
		if odd := r.oddities(); len(odd) > 0 {
			t.Errorf("%v got unexpected messages: %v", r, odd)
		}
	}
	// An allowance covers the step that made it, not the ones after.
	for k := range c.allowed {
		t.Logf("%v did not get the allowed PeerGone(%s)", k.r, c.nameOf(k.peer))
		delete(c.allowed, k)
	}
}

// keys are the keys of every client ever connected, once each.
func (c *cluster) keys() []key.NodePublic {
	var out []key.NodePublic
	for _, cl := range c.clients {
		if !slices.Contains(out, cl.pub) {
			out = append(out, cl.pub)
		}
	}
	return out
}

// nameOf names a client's key for messages.
func (c *cluster) nameOf(k key.NodePublic) string {
	for _, cl := range c.clients {
		if cl.pub == k {
			return cl.name
		}
	}
	return k.ShortString()
}

// --- node state ---

func (n *node) meshDebug() (*harness.MeshView, error) {
	v, err := harness.GetMeshView(n.http, "https://"+sharedName)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", n, err)
	}
	return v, nil
}

func (n *node) metrics() (map[string]float64, error) {
	res, err := n.http.Get("https://" + sharedName + "/debug/varz")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return nil, fmt.Errorf("%s /debug/varz: %s", n, res.Status)
	}
	return harness.ParseMetrics(res.Body)
}

// liveNodes are the running nodes on the mesh network.
func (c *cluster) liveNodes() []*node {
	var out []*node
	for _, n := range c.nodes {
		if n.live() {
			out = append(out, n)
		}
	}
	return out
}

// settle waits until every running node's state is what the region's
// shape implies, and fails the test with what still differs if it does
// not get there. With linksOnly it checks only the derpd nodes' DNS
// answers and links (during a cut, connections from before it are still
// ending). It logs how long it took: for the reader, not asserted.
func (c *cluster) settle(t *testing.T, what string, linksOnly bool) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(settleWait)
	var waited []string // what was last seen unsettled, for the log
	for {
		problems := c.mismatches(linksOnly)
		if len(problems) == 0 {
			t.Logf("%s: settled in %v", what, time.Since(start).Round(10*time.Millisecond))
			if len(waited) > 0 {
				t.Logf("  last unsettled:\n  %s", strings.Join(waited, "\n  "))
			}
			return
		}
		waited = problems
		if time.Now().After(deadline) {
			t.Fatalf("%s: not settled within %v:\n  %s", what, settleWait, strings.Join(problems, "\n  "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mismatches compares every live node's state with the expected one.
//
// A derpd node's DNS answer is every live node's mesh address; it has one
// link per address in it, "self" for its own and "up" for the others,
// and nothing else (no link left over from an address that went away).
// Every live node has one inbound mesh connection from each other live
// node (derper's links, and derpd's found by DNS, reach every node), and
// derp_current_connections counts those and its clients.
func (c *cluster) mismatches(linksOnly bool) []string {
	var problems []string
	live := c.liveNodes()
	var answer []string
	for _, n := range live {
		answer = append(answer, n.meshIP.String())
	}
	slices.SortFunc(answer, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
	for _, n := range live {
		if n.kind == harness.Derpd {
			problems = append(problems, c.meshMismatches(n, answer, linksOnly)...)
		}
		if linksOnly {
			continue
		}
		m, err := n.metrics()
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		clients, peers := len(c.clientsOn(n)), len(live)-1
		remote := 0
		for _, cl := range c.live {
			if cl.node != n && cl.node.live() {
				remote++
			}
		}
		for _, w := range []struct {
			series string
			want   int
			why    string
		}{
			{"derp_current_connections", clients + peers, fmt.Sprintf("%d clients, %d peers' links", clients, peers)},
			{"derp_clients_local", clients + peers, "a peer's link is a local client with the peer's key"},
			{"derp_watchers", peers, "every peer's link watches"},
			{"derp_current_dup_client_keys", 0, "a link left over from before would be a duplicate"},
			// Each peer announces every local connection, our own link to
			// it among them: our own key comes back as a remote one.
			{"derp_clients_remote", remote + 1, fmt.Sprintf("%d clients elsewhere, and our own key", remote)},
		} {
			if got, ok := m[w.series]; !ok || got != float64(w.want) {
				problems = append(problems, fmt.Sprintf("%s: %s = %v, want %d (%s)", n, w.series, got, w.want, w.why))
			}
		}
		if n.kind == harness.Derpd {
			// Exactly one derpd_mesh_link_up series per expected link,
			// 1 for a link that is up, 0 for the node's own address.
			want := map[string]float64{}
			for _, a := range answer {
				up := 1.0
				if a == n.meshIP.String() {
					up = 0
				}
				want[harness.NormalizeSeries(fmt.Sprintf("derpd_mesh_link_up{peer=%q}", n.lookup+"/"+a))] = up
			}
			for series, v := range m {
				if strings.HasPrefix(series, "derpd_mesh_link_up{") {
					if w, ok := want[series]; !ok {
						problems = append(problems, fmt.Sprintf("%s: %s = %v, for no link it should have", n, series, v))
					} else if w != v {
						problems = append(problems, fmt.Sprintf("%s: %s = %v, want %v", n, series, v, w))
					}
					delete(want, series)
				}
			}
			for series := range want {
				problems = append(problems, fmt.Sprintf("%s: no series %s", n, series))
			}
		}
	}
	return problems
}

func (c *cluster) meshMismatches(n *node, answer []string, linksOnly bool) []string {
	v, err := n.meshDebug()
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, n.name+": "+fmt.Sprintf(format, args...))
	}
	if v.DNS == nil {
		bad("no DNS section in /debug/mesh")
	} else if !slices.Equal(v.DNS.Answer, answer) {
		bad("DNS answer %v, want %v (last error %q)", v.DNS.Answer, answer, v.DNS.LastError)
	}
	var names []string
	for _, l := range v.Links {
		names = append(names, l.Peer)
		want := "up"
		if l.Peer == n.lookup+"/"+n.meshIP.String() {
			want = "self"
		}
		if !l.Answered || l.State != want {
			bad("link %s is %q (answered %v, last error %q), want %q", l.Peer, l.State, l.Answered, l.LastError, want)
		}
	}
	var wantNames []string
	for _, a := range answer {
		wantNames = append(wantNames, n.lookup+"/"+a)
	}
	slices.Sort(names)
	slices.Sort(wantNames)
	if !slices.Equal(names, wantNames) {
		bad("links %v, want %v", names, wantNames)
	}
	if linksOnly {
		return problems
	}
	keys := map[string]bool{}
	for _, in := range v.Inbound {
		if !in.Watching {
			bad("inbound mesh connection %s from %s is not watching", in.Key, in.Addr)
		}
		if keys[in.Key] {
			bad("two inbound mesh connections with key %s", in.Key)
		}
		keys[in.Key] = true
	}
	if want := len(answer) - 1; len(v.Inbound) != want {
		bad("%d inbound mesh connections, want %d", len(v.Inbound), want)
	}
	return problems
}

// awaitUnroutable proves that from's node has no route to to: a packet
// from one to the other is dropped there as addressed to an unknown key.
// Until the node has caught up, the packet may still be forwarded, so
// it sends again until one is dropped.
func (c *cluster) awaitUnroutable(t *testing.T, from, to *client, d time.Duration) {
	t.Helper()
	const series = `derp_packets_dropped{kind="other",reason="unknown_dest"}`
	n := from.node
	deadline := time.Now().Add(d)
	for {
		m, err := n.metrics()
		if err != nil {
			t.Fatal(err)
		}
		before := m[series]
		c.probes++
		if err := from.send(to, fmt.Sprintf("probe %d %s to %s, not to arrive", c.probes, from, to)); err != nil {
			t.Fatal(err)
		}
		for wait := time.Now().Add(time.Second); time.Now().Before(wait); time.Sleep(20 * time.Millisecond) {
			if m, err = n.metrics(); err != nil {
				t.Fatal(err)
			}
			if m[series] > before {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still routes packets from %v to %v after %v", n, from, to, d)
		}
	}
}

// awaitNoLinkUp waits until none of n's links is up.
func (c *cluster) awaitNoLinkUp(t *testing.T, n *node, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		v, err := n.meshDebug()
		var up []string
		if err == nil {
			for _, l := range v.Links {
				if l.State == "up" {
					up = append(up, l.Peer)
				}
			}
			if len(up) == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatal(err)
			}
			t.Fatalf("%s still has links up after %v: %v", n, d, up)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
