package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"tailscale.com/types/key"
)

// Region is a set of servers meshed on loopback. Every node has a
// certificate for a name of its own (nodeN.derp.test) from one throwaway
// CA, which every node trusts as its system's roots through
// SSL_CERT_FILE: mesh links verify their peers as they would in
// production, with no flag to loosen it. By default each node's
// -mesh-with lists every node, itself included, as name:port/127.0.0.1.
type Region struct {
	CA      *CA
	CertDir string
	CAFile  string
	MeshKey string
	Nodes   []*Node
}

// Node is one server of a Region. Server is nil until it is started.
type Node struct {
	*Server
	Kind    Kind
	Name    string // TLS name
	Host    string // listen address; 127.0.0.1 unless set
	Port    int
	KeyFile string   // kept across restarts, so a node keeps its key
	Args    []string // the flags it was last started with
}

// NewRegion prepares (but does not start) one node per kind, keeping
// certificates and keys in dir.
func NewRegion(dir string, kinds ...Kind) (*Region, error) {
	ca, err := MakeCA()
	if err != nil {
		return nil, err
	}
	r := &Region{CA: ca, CertDir: filepath.Join(dir, "certs"), MeshKey: MeshKeyHex()}
	r.CAFile = filepath.Join(r.CertDir, "ca.pem")
	if err := mkdirs(r.CertDir, filepath.Join(dir, "keys")); err != nil {
		return nil, err
	}
	if err := ca.WritePEM(r.CAFile); err != nil {
		return nil, err
	}
	for i, k := range kinds {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		n := &Node{Kind: k, Name: fmt.Sprintf("node%d.derp.test", i+1), Port: port,
			KeyFile: filepath.Join(dir, "keys", fmt.Sprintf("node%d.key", i+1))}
		if err := ca.IssueFiles(r.CertDir, n.Name, int64(10+i)); err != nil {
			return nil, err
		}
		r.Nodes = append(r.Nodes, n)
	}
	return r, nil
}

// MeshWith is the -mesh-with list naming every node.
func (r *Region) MeshWith() string {
	var entries []string
	for _, n := range r.Nodes {
		host := n.Host
		if host == "" {
			host = "127.0.0.1"
		}
		entries = append(entries, n.Name+":"+strconv.Itoa(n.Port)+"/"+host)
	}
	return strings.Join(entries, ",")
}

// Options are the server options of node i with args (nil: the flags it
// had before, or -mesh-with every node the first time).
func (r *Region) Options(i int, args []string) Options {
	n := r.Nodes[i]
	if args != nil {
		n.Args = args
	} else if n.Args == nil {
		n.Args = []string{"-mesh-with", r.MeshWith()}
	}
	return Options{
		Kind: n.Kind, MeshKey: r.MeshKey, CertDir: r.CertDir, Hostname: n.Name,
		Host: n.Host, Port: n.Port, KeyFile: n.KeyFile, Args: n.Args,
		Env: []string{"SSL_CERT_FILE=" + r.CAFile},
	}
}

// Dial connects to node i as a Tailscale client would, verifying its
// certificate against the region's CA.
func (r *Region) Dial(i int, priv key.NodePrivate, opts ...ClientOption) (*Client, error) {
	return DialRegion(r.Nodes[i].Server, priv, r.CA.Pool, "", opts...)
}

func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}
