package mesh

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseMeshWith(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []Target // Name, Host, Port, DialHost
		err  string
	}{
		{in: "", want: nil},
		{in: "derp2.example.com", want: []Target{{Name: "derp2.example.com", Host: "derp2.example.com", Port: 443}}},
		{in: "localhost:8443", want: []Target{{Name: "localhost:8443", Host: "localhost", Port: 8443}}},
		{in: "derp3.example.com/10.0.0.3", want: []Target{{Name: "derp3.example.com/10.0.0.3", Host: "derp3.example.com", Port: 443, DialHost: "10.0.0.3"}}},
		{in: "derp4.example.com:8443/derp4.internal", want: []Target{{Name: "derp4.example.com:8443/derp4.internal", Host: "derp4.example.com", Port: 8443, DialHost: "derp4.internal"}}},
		{in: "a.example, b.example ,", want: []Target{{Name: "a.example", Host: "a.example", Port: 443}, {Name: "b.example", Host: "b.example", Port: 443}}},
		{in: "a.example,a.example", want: []Target{{Name: "a.example", Host: "a.example", Port: 443}}},
		{in: "[2001:db8::1]:8443", want: []Target{{Name: "[2001:db8::1]:8443", Host: "2001:db8::1", Port: 8443}}},
		{in: "2001:db8::1", want: []Target{{Name: "2001:db8::1", Host: "2001:db8::1", Port: 443}}},
		{in: "a.example/[2001:db8::2]", want: []Target{{Name: "a.example/[2001:db8::2]", Host: "a.example", Port: 443, DialHost: "2001:db8::2"}}},
		{in: "a/b/c", err: "too many '/'"},
		{in: "a.example/", err: "empty dial host"},
		{in: "a.example/b.example:443", err: "without a port"},
		{in: "a.example:0", err: "bad port"},
		{in: "a.example:http", err: "bad port"},
		{in: ":443", err: "empty host"},
	} {
		got, err := ParseMeshWith(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseMeshWith(%q) error %v, want one saying %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseMeshWith(%q): %v", c.in, err)
			continue
		}
		if len(got) != len(c.want) {
			t.Errorf("ParseMeshWith(%q) = %+v, want %+v", c.in, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("ParseMeshWith(%q)[%d] = %+v, want %+v", c.in, i, got[i], c.want[i])
			}
		}
	}
}

func TestTargetAddresses(t *testing.T) {
	for _, c := range []struct {
		t                  Target
		dial, host, urlStr string
	}{
		{Target{Host: "derp.example.com", Port: 443}, "derp.example.com:443", "derp.example.com", "https://derp.example.com/derp"},
		{Target{Host: "derp.example.com", Port: 8443, DialHost: "10.0.0.2"}, "10.0.0.2:8443", "derp.example.com:8443", "https://derp.example.com:8443/derp"},
		{Target{Host: "2001:db8::1", Port: 443}, "[2001:db8::1]:443", "[2001:db8::1]", "https://[2001:db8::1]/derp"},
		{(&DNS{Name: "derp.svc", TLSName: "derp.example.com", Port: 443}).target(netip.MustParseAddr("10.1.2.3")), "10.1.2.3:443", "derp.example.com", "https://derp.example.com/derp"},
	} {
		if got := c.t.DialAddr(); got != c.dial {
			t.Errorf("%+v DialAddr = %q, want %q", c.t, got, c.dial)
		}
		if got := c.t.HostHeader(); got != c.host {
			t.Errorf("%+v HostHeader = %q, want %q", c.t, got, c.host)
		}
		if got := c.t.URL(); got != c.urlStr {
			t.Errorf("%+v URL = %q, want %q", c.t, got, c.urlStr)
		}
	}
	if tg := (&DNS{Name: "derp.svc", TLSName: "derp.svc", Port: 8443}).target(netip.MustParseAddr("10.1.2.3")); tg.Name != "derp.svc/10.1.2.3" || !tg.FromDNS || tg.Port != 8443 {
		t.Errorf("DNSTarget = %+v", tg)
	}
}

func TestParseMeshDNS(t *testing.T) {
	for _, c := range []struct {
		in, name, tls string
		port          int
	}{
		{"derp.default.svc.cluster.local", "derp.default.svc.cluster.local", "derp.default.svc.cluster.local", 443},
		{"derp.svc:8443", "derp.svc", "derp.svc", 8443},
		{"derp.example.com/derp-mesh.ns.svc", "derp-mesh.ns.svc", "derp.example.com", 443},
		{"derp.example.com:8443/derp-mesh.ns.svc", "derp-mesh.ns.svc", "derp.example.com", 8443},
	} {
		d, err := ParseMeshDNS(c.in)
		if err != nil || d.Name != c.name || d.TLSName != c.tls || d.Port != c.port {
			t.Errorf("ParseMeshDNS(%q) = %+v, %v; want name %q, TLS name %q, port %d", c.in, d, err, c.name, c.tls, c.port)
		}
	}
	for _, bad := range []string{"", "10.0.0.1", "[::1]:443", "derp.svc:x", "a/b/c", "derp.example.com/derp.svc:443", "derp.example.com/10.0.0.1"} {
		if _, err := ParseMeshDNS(bad); err == nil {
			t.Errorf("ParseMeshDNS(%q) accepted", bad)
		}
	}
}
