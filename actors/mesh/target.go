package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultPort is where a mesh link connects when its entry names no port:
// mesh links always speak HTTPS, as upstream's do.
const DefaultPort = 443

// Target is one peer a link connects to.
type Target struct {
	// Name identifies the link in logs, on /debug/mesh and in metrics:
	// the -mesh-with entry as written, or NAME/<ip> for a peer found by
	// -mesh-dns.
	Name string
	// Host is the TLS name: sent as SNI and verified in the peer's
	// certificate, and (with the port, when not 443) the HTTP Host.
	Host string
	Port int
	// DialHost is where the TCP connection goes; Host when empty.
	DialHost string
	// FromDNS marks a peer found by -mesh-dns, which a later answer may
	// remove.
	FromDNS bool
}

// DialAddr is the TCP address the link dials.
func (t Target) DialAddr() string {
	h := t.DialHost
	if h == "" {
		h = t.Host
	}
	return net.JoinHostPort(h, strconv.Itoa(t.Port))
}

// HostHeader is the HTTP Host header of the upgrade request.
func (t Target) HostHeader() string {
	if t.Port == DefaultPort {
		return bracketIPv6(t.Host)
	}
	return net.JoinHostPort(t.Host, strconv.Itoa(t.Port))
}

// URL is the peer's DERP URL, for logs.
func (t Target) URL() string { return "https://" + t.HostHeader() + "/derp" }

func bracketIPv6(h string) string {
	if strings.Contains(h, ":") {
		return "[" + h + "]"
	}
	return h
}

// ParseMeshWith parses upstream's -mesh-with list: comma-separated
// entries of the form host, host:port or host/dialhost (host:port/dialhost
// too). The TLS name is host; the TCP connection goes to dialhost, when
// given, on the same port. Empty entries (a trailing comma) are skipped;
// an entry with more than one "/" is an error, as upstream.
func ParseMeshWith(list string) ([]Target, error) {
	var out []Target
	seen := map[string]bool{}
	for _, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		t, err := parseEntry(entry)
		if err != nil {
			return nil, fmt.Errorf("-mesh-with entry %q: %w", entry, err)
		}
		if seen[t.Name] {
			continue
		}
		seen[t.Name] = true
		out = append(out, t)
	}
	return out, nil
}

func parseEntry(entry string) (Target, error) {
	parts := strings.Split(entry, "/")
	if len(parts) > 2 {
		return Target{}, errors.New("too many '/' (want host[:port][/dialhost])")
	}
	host, port, err := splitHostPort(parts[0])
	if err != nil {
		return Target{}, err
	}
	t := Target{Name: entry, Host: host, Port: port}
	if len(parts) == 2 {
		dial := strings.TrimSuffix(strings.TrimPrefix(parts[1], "["), "]")
		if dial == "" {
			return Target{}, errors.New("empty dial host after '/'")
		}
		if strings.ContainsAny(dial, "/ ") || (strings.Contains(dial, ":") && !isIP(dial)) {
			return Target{}, fmt.Errorf("dial host %q must be a host name or an address, without a port", parts[1])
		}
		t.DialHost = dial
	}
	return t, nil
}

// ParseMeshDNS parses -mesh-dns [TLSNAME[:port]/]NAME or NAME[:port]:
// links go to every address NAME resolves to, on the port (443 unless
// given), each verified for TLSNAME, or for NAME when there is none. The
// TLS name form is for a certificate that names the servers' public host
// name rather than the name that lists them (a Kubernetes headless
// service's, say), as -mesh-with's host/dialhost is. Interval and
// Resolver are left for the caller.
func ParseMeshDNS(s string) (DNS, error) {
	s = strings.TrimSpace(s)
	parts := strings.Split(s, "/")
	var d DNS
	var err error
	switch len(parts) {
	case 1:
		d.Name, d.Port, err = splitHostPort(parts[0])
		d.TLSName = d.Name
	case 2:
		d.TLSName, d.Port, err = splitHostPort(parts[0])
		if err == nil {
			d.Name = parts[1]
			err = validHost(d.Name)
			if err == nil && strings.Contains(d.Name, ":") {
				err = errors.New("the name to look up takes no port (put it on the TLS name)")
			}
		}
	default:
		err = errors.New("too many '/' (want [tlsname[:port]/]name or name[:port])")
	}
	if err == nil && isIP(d.Name) {
		err = errors.New("want a DNS name to look up, not an address (use -mesh-with for a fixed peer)")
	}
	if err != nil {
		return DNS{}, fmt.Errorf("-mesh-dns %q: %w", s, err)
	}
	return d, nil
}

// target is the link to one address of the name.
func (d *DNS) target(ip netip.Addr) Target {
	return Target{
		Name:     d.Name + "/" + ip.String(),
		Host:     d.TLSName,
		Port:     d.Port,
		DialHost: ip.String(),
		FromDNS:  true,
	}
}

// splitHostPort splits host or host:port (IPv6 in brackets when a port
// follows), defaulting the port to 443.
func splitHostPort(s string) (string, int, error) {
	if s == "" {
		return "", 0, errors.New("empty host")
	}
	if isIP(s) {
		return s, DefaultPort, nil // an address without a port, IPv6 included
	}
	if h, ok := strings.CutPrefix(s, "["); ok && strings.HasSuffix(h, "]") && isIP(h[:len(h)-1]) {
		return h[:len(h)-1], DefaultPort, nil
	}
	if !strings.Contains(s, ":") {
		return s, DefaultPort, validHost(s)
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", portStr)
	}
	return host, port, validHost(host)
}

func validHost(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if strings.ContainsAny(h, " /\\@?#") {
		return fmt.Errorf("host %q has characters a host name cannot have", h)
	}
	return nil
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}
