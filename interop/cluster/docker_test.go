package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Every image, network and container the suite makes carries these
// labels: the run it belongs to, and the process that owns it, so that a
// later run can tell the leftovers of an aborted run (owner gone) from
// those of a run still going in parallel (owner alive).
const (
	labelRun   = "derpd-cluster.run"
	labelOwner = "derpd-cluster.owner"
)

// dockerTimeout bounds one docker command: a wedged daemon fails the
// suite instead of hanging it until the go test timeout.
const dockerTimeout = 2 * time.Minute

// docker runs the docker CLI and returns its standard output, trimmed.
// The error carries the command and its standard error.
func docker(args ...string) (string, error) {
	return dockerIn("", args...)
}

// dockerIn is docker run in dir (the build context).
func dockerIn(dir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Dir = dir
	// The legacy builder: BuildKit would want to fetch its frontend, and
	// there is no registry to fetch anything from.
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// newRunID names this run: derpd-cluster-<8 hex digits>. Names are
// lowercase, as image names must be.
func newRunID() string {
	var b [4]byte
	rand.Read(b[:])
	return "derpd-cluster-" + hex.EncodeToString(b[:])
}

// ownerStamp identifies a process on this host: host name, pid and the
// process's start time in clock ticks since boot, so that a recycled pid
// does not pass for the process that made the resources.
func ownerStamp(pid int) string {
	host, _ := os.Hostname()
	return host + ":" + strconv.Itoa(pid) + ":" + procStart(pid)
}

// procStart is field 22 of /proc/<pid>/stat, or "" when there is no such
// process. The command name (field 2) may hold spaces and parentheses, so
// fields are counted from the last ')'.
func procStart(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return ""
	}
	return fields[19] // field 3 is fields[0]
}

// ownerGone reports whether stamp names a process of this host that no
// longer runs. Stamps of other hosts (a shared daemon) are never judged.
func ownerGone(stamp string) bool {
	parts := strings.Split(stamp, ":")
	if len(parts) != 3 {
		return false
	}
	if host, _ := os.Hostname(); parts[0] != host {
		return false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil {
		return false
	}
	return procStart(pid) != parts[2]
}

// reapStale removes what aborted earlier runs left behind: containers,
// then networks, then images whose owner label names a process that is
// gone. A run still going in parallel keeps everything it has. It returns
// what it removed, for the log.
func reapStale() ([]string, error) {
	var removed []string
	var errs []error
	reap := func(list, inspect, remove []string) error {
		out, err := docker(list...)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, id := range lines(out) {
			if seen[id] { // an image listed once per tag
				continue
			}
			seen[id] = true
			stamp, err := docker(append(inspect, id)...)
			if err != nil || !ownerGone(stamp) {
				continue // gone meanwhile, or not ours to judge
			}
			if _, err := docker(append(remove, id)...); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, id)
		}
		return nil
	}
	owner := `{{index .Config.Labels "` + labelOwner + `"}}`
	filter := "label=" + labelOwner
	steps := [][3][]string{
		{{"ps", "-a", "-q", "--filter", filter}, {"inspect", "--format", owner}, {"rm", "-f", "-v"}},
		{{"network", "ls", "-q", "--filter", filter}, {"network", "inspect", "--format", `{{index .Labels "` + labelOwner + `"}}`}, {"network", "rm"}},
		{{"images", "-q", "--filter", filter}, {"image", "inspect", "--format", owner}, {"rmi", "-f"}},
	}
	for _, s := range steps {
		if err := reap(s[0], s[1], s[2]); err != nil {
			return removed, err
		}
	}
	return removed, errors.Join(errs...)
}

func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// network is a user-defined bridge network with a subnet of our choosing:
// `docker network connect --ip`, which heals a cut node at its old
// address, works only on such networks. It is internal: the host reaches
// the containers on it, but nothing is routed out, so the nodes talk to
// nobody but each other and the test.
type network struct {
	name    string
	subnet  netip.Prefix
	gateway netip.Addr // the host's address on it
}

// ip is the address with last byte n on the network.
func (n *network) ip(last byte) netip.Addr {
	a := n.subnet.Addr().As4()
	a[3] = last
	return netip.AddrFrom4(a)
}

// createNetwork makes a /24 somewhere in 10.64.0.0–10.249.255.0 that
// overlaps no route of this host; the daemon refuses one that overlaps
// another network (a parallel run's), and then the next candidate is
// tried.
func createNetwork(name string, labels []string) (*network, error) {
	var lastErr error
	for range 20 {
		var b [2]byte
		rand.Read(b[:])
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 64 + b[0]%186, b[1], 0}), 24)
		if routed(p) {
			continue
		}
		gw := p.Addr().As4()
		gw[3] = 1
		args := []string{"network", "create", "--driver", "bridge", "--internal", "--subnet", p.String(), "--gateway", netip.AddrFrom4(gw).String()}
		for _, l := range labels {
			args = append(args, "--label", l)
		}
		if _, err := docker(append(args, name)...); err != nil {
			lastErr = err
			continue
		}
		return &network{name: name, subnet: p, gateway: netip.AddrFrom4(gw)}, nil
	}
	return nil, fmt.Errorf("no free subnet for network %s: %v", name, lastErr)
}

// routed reports whether p overlaps a route in the host's IPv4 table.
func routed(p netip.Prefix) bool {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return false
	}
	for _, line := range lines(string(b))[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		dst, err1 := strconv.ParseUint(f[1], 16, 32)
		mask, err2 := strconv.ParseUint(f[7], 16, 32)
		if err1 != nil || err2 != nil || mask == 0 {
			continue // the default route overlaps everything and matters not
		}
		// The table is in host byte order, little-endian here.
		le := func(v uint64) [4]byte { return [4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }
		m := le(mask)
		bits := 0
		for _, x := range m {
			for ; x != 0; x <<= 1 {
				bits++
			}
		}
		if netip.PrefixFrom(netip.AddrFrom4(le(dst)), bits).Overlaps(p) {
			return true
		}
	}
	return false
}
