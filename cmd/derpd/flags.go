package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/derpd/derpd/actors/flows"
	"github.com/derpd/derpd/actors/mesh"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/actors/rejects"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/acme"
)

// options are derpd's command line: upstream derper's flags with the same
// names, meanings and defaults, so that a unit file or container written
// for derper runs derpd unchanged, plus a few of our own (logging).
type options struct {
	addr            string
	httpPort        int
	stunPort        int
	runSTUN         bool
	runDERP         bool
	configPath      string
	dev             bool
	printVersion    bool
	hostname        string
	certMode        string
	certDir         string
	acmeEmail       string
	acmeEABKid      string
	acmeEABKey      string
	acmeIPCerts     bool
	home            string
	meshPSKFile     string
	meshWith        string
	secretsURL      string
	secretsPrefix   string
	secretsCacheDir string
	bootstrapDNS    string
	unpublishedDNS  string
	verifyClients   bool
	socketPath      string
	verifyURL       string
	verifyFailOpen  bool
	acceptLimit     float64
	acceptBurst     int
	rateConfig      string
	tcpKeepAlive    time.Duration
	tcpUserTimeout  time.Duration
	tcpWriteTimeout time.Duration
	ace             bool

	// derpd's own.
	logLevel        string
	logFormat       string
	verbose         bool
	meshDNS         string
	meshDNSInterval time.Duration
	meshDNSResolver string
	meshMaxPeerKeys int

	// derpd's own: the ACME CA's directory (see acmeDirectory).
	acmeDirectoryURL string

	// derpd's own: the debug pages' listener and who may see them
	// (debuglisten.go).
	debugAddr  string
	debugAllow string

	// derpd's own: what -verify-clients does when tailscaled cannot be
	// asked (upstream always refuses).
	verifyClientsFailOpen bool

	// derpd's own: the flows and rejects the debug pages show.
	flows         bool
	flowsMax      int
	flowsInactive time.Duration
	flowsSweep    time.Duration
	rejectsMax    int

	// derpd's own: the graceful shutdown on SIGTERM (shutdown.go).
	restartReconnectIn time.Duration
	restartTryFor      time.Duration
	shutdownSpread     time.Duration

	// derpd's own: the journal of every actor message and routed packet
	// (record.go).
	record         string
	recordMaxBytes int64
	recordPayloads bool

	// set records which flags appeared on the command line, to tell an
	// explicit value from a default.
	set map[string]bool
}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("derpd", flag.ContinueOnError)
	fs.StringVar(&o.addr, "a", ":443", "server HTTP/HTTPS listen address, in form \":port\", \"ip:port\", or for IPv6 \"[ip]:port\"; TLS is served when the port is 443 or -certmode=manual")
	fs.IntVar(&o.httpPort, "http-port", 80, "port for the plain-HTTP listener when serving TLS (captive-portal checks, ACME, redirects); -1 disables it")
	fs.IntVar(&o.stunPort, "stun-port", 3478, "UDP port of the STUN server")
	fs.BoolVar(&o.runSTUN, "stun", true, "run a STUN server, which clients use to learn their public address")
	fs.BoolVar(&o.runDERP, "derp", true, "relay DERP traffic on /derp; when false, /derp answers 404 while STUN, the probes and the other pages are still served")
	fs.StringVar(&o.configPath, "c", "", "config file holding the server's private key; created on first start (default /var/lib/derper/derper.key when run as root)")
	fs.BoolVar(&o.dev, "dev", false, "development mode: plain HTTP on :3340, a fresh in-memory key, mesh key only from $TAILSCALE_DERPER_MESH_KEY")
	fs.BoolVar(&o.printVersion, "version", false, "print the version and exit")
	fs.StringVar(&o.hostname, "hostname", "derp.tailscale.com", "TLS host name for the certificate; may be an IP address with -certmode=manual (a self-signed certificate) or with -acme-ip-certs (an IP-only server)")
	fs.StringVar(&o.certMode, "certmode", "letsencrypt", "where the TLS certificate comes from: letsencrypt, gcp or manual")
	fs.StringVar(&o.certDir, "certdir", defaultCertDir(), "directory of the ACME certificate cache, or of <hostname>.crt and <hostname>.key with -certmode=manual")
	fs.StringVar(&o.acmeEmail, "acme-email", "", "contact e-mail for the ACME account (required for gcp)")
	fs.StringVar(&o.acmeEABKid, "acme-eab-kid", "", "ACME External Account Binding key id (gcp)")
	fs.StringVar(&o.acmeEABKey, "acme-eab-key", "", "ACME External Account Binding HMAC key, base64url or standard base64 (gcp)")
	fs.BoolVar(&o.acmeIPCerts, "acme-ip-certs", false, "with -certmode=letsencrypt, also serve ACME certificates for the server's own IP addresses: a client that connects by IP (no SNI, or an IP SNI equal to the connection's local address) gets a short-lived certificate for that address, obtained on first use with HTTP-01 on -http-port, cached in -certdir and renewed")
	fs.StringVar(&o.home, "home", "", "what / serves: empty for the default page, \"blank\" for an empty page, or an http(s) URL to redirect to")
	fs.StringVar(&o.meshPSKFile, "mesh-psk-file", defaultMeshPSKFile(), "file holding the region's mesh pre-shared key, 64 hex digits")
	fs.StringVar(&o.meshWith, "mesh-with", "", "comma-separated host[/dialhost] list of region peers to mesh with")
	fs.StringVar(&o.secretsURL, "secrets-url", "", "setec server to fetch the mesh key from")
	fs.StringVar(&o.secretsPrefix, "secrets-path-prefix", "prod/derp", "setec path prefix of the mesh key secret")
	fs.StringVar(&o.secretsCacheDir, "secrets-cache-dir", defaultSecretsCacheDir(), "setec cache directory")
	fs.StringVar(&o.bootstrapDNS, "bootstrap-dns-names", "", "comma-separated host names to resolve and publish at /bootstrap-dns")
	fs.StringVar(&o.unpublishedDNS, "unpublished-bootstrap-dns-names", "", "comma-separated host names answered at /bootstrap-dns only when asked for with ?q=")
	fs.BoolVar(&o.verifyClients, "verify-clients", false, "admit only node keys the local tailscaled knows (asked over its LocalAPI socket, answers cached; mesh-key clients are not asked)")
	fs.StringVar(&o.socketPath, "socket", "", "tailscaled's LocalAPI socket for -verify-clients; empty means tailscaled's default (/var/run/tailscale/tailscaled.sock on Linux)")
	fs.StringVar(&o.verifyURL, "verify-client-url", "", "admission controller URL; receives a POST of {\"NodePublic\":…,\"Source\":…} and must answer {\"Allow\":true}")
	fs.BoolVar(&o.verifyFailOpen, "verify-client-url-fail-open", true, "admit clients when the admission controller cannot be reached")
	fs.Float64Var(&o.acceptLimit, "accept-connection-limit", math.Inf(+1), "new connections accepted per second; excess sockets are closed at once")
	fs.IntVar(&o.acceptBurst, "accept-connection-burst", math.MaxInt, "burst of new connections allowed above -accept-connection-limit")
	fs.StringVar(&o.rateConfig, "rate-config", "", "JSON file with per-client receive rate limits ({\"PerClientRateLimitBytesPerSec\": N, \"PerClientRateBurstBytes\": M}); reloaded on SIGHUP")
	fs.DurationVar(&o.tcpKeepAlive, "tcp-keepalive-time", 10*time.Minute, "idle time before TCP keepalive probes start on accepted connections")
	fs.DurationVar(&o.tcpUserTimeout, "tcp-user-timeout", 15*time.Second, "TCP_USER_TIMEOUT of accepted connections: how long unacknowledged data may linger before the kernel drops the peer")
	fs.DurationVar(&o.tcpWriteTimeout, "tcp-write-timeout", 2*time.Second, "how long a write to a client may block before the client is disconnected as stalled (mesh peers get 30s); 0 disables it")
	fs.BoolVar(&o.ace, "ace", false, "enable the experimental CONNECT proxy")

	fs.StringVar(&o.acmeDirectoryURL, "acme-directory-url", acme.LetsEncryptURL, "ACME directory of the CA that issues -certmode=letsencrypt certificates (a private CA such as step-ca, or Let's Encrypt's staging directory); with -certmode=gcp the default is Google's directory")
	fs.StringVar(&o.meshDNS, "mesh-dns", "", "[TLSNAME[:port]/]NAME or NAME[:port]: mesh with every address NAME resolves to (a Kubernetes headless service, a DNS round-robin name), each verified for TLSNAME (NAME if not given), re-resolved every -mesh-dns-interval; our own addresses are recognised by key")
	fs.DurationVar(&o.meshDNSInterval, "mesh-dns-interval", mesh.DefaultDNSInterval, "how often -mesh-dns looks its name up again")
	fs.StringVar(&o.meshDNSResolver, "mesh-dns-resolver", "", "host:port of the DNS server -mesh-dns asks; empty means the system's resolver")
	fs.IntVar(&o.meshMaxPeerKeys, "mesh-max-peer-keys", registry.DefaultMaxSessionKeys, "most client keys one mesh peer may announce; more are ignored and counted (derpd_mesh_keys_refused)")

	fs.StringVar(&o.debugAddr, "debug-addr", "", "host:port of a plain-HTTP listener serving /debug/ only (metrics for a Prometheus host, the debug pages), beside /debug/ on the main listener; the debug key is not accepted on it")
	fs.StringVar(&o.debugAllow, "debug-allow", "", "comma-separated CIDRs (or addresses) admitted to /debug/ on every listener, besides loopback, Tailscale addresses, $TS_ALLOW_DEBUG_IP and $TS_DEBUG_TRUSTED_CIDRS")

	fs.BoolVar(&o.verifyClientsFailOpen, "verify-clients-fail-open", false, "with -verify-clients, admit clients when the local tailscaled cannot be asked (down, wedged, erring) instead of refusing them")

	fs.BoolVar(&o.flows, "flows", true, "count traffic per flow (source, destination, mesh peer) for /debug/flows and /debug/peer")
	fs.IntVar(&o.flowsMax, "flows-max", flows.DefaultMax, "most flows tracked; the least recently active are forgotten first (derpd_flows_evicted)")
	fs.DurationVar(&o.flowsInactive, "flows-inactive", flows.DefaultInactive, "a flow idle this long is forgotten at the next sweep")
	fs.DurationVar(&o.flowsSweep, "flows-sweep", flows.DefaultSweep, "how often inactive flows are swept")
	fs.IntVar(&o.rejectsMax, "rejects-max", rejects.DefaultMax, "entries /debug/rejects keeps per direction (inbound connection, inbound packet, outbound delivery); the least recently seen are forgotten first")

	fs.DurationVar(&o.restartReconnectIn, "restart-reconnect-in", defaultRestartReconnectIn, "on SIGTERM or SIGINT: how long the Restarting frame sent to every client says to wait before reconnecting (advisory; Tailscale's clients reconnect when closed)")
	fs.DurationVar(&o.restartTryFor, "restart-try-for", defaultRestartTryFor, "on SIGTERM or SIGINT: how long the Restarting frame says to keep trying to reconnect before giving up (advisory); cover -shutdown-spread and the restart")
	fs.DurationVar(&o.shutdownSpread, "shutdown-spread", defaultShutdownSpread, "on SIGTERM or SIGINT: the window over which client connections are closed, one by one, so they do not all reconnect at once; derpd exits within this plus 2s; 0 closes them all at once")

	fs.StringVar(&o.record, "record", "", "journal every message delivered to every actor and every packet routed to FILE, for derpd replay; flushed and closed on SIGTERM")
	fs.Int64Var(&o.recordMaxBytes, "record-max-bytes", defaultRecordMaxBytes, "with -record, stop recording (and say so in the log) once the journal holds this many bytes; 0 for no limit")
	fs.BoolVar(&o.recordPayloads, "record-payloads", false, "with -record, journal packet payloads too, not only their sizes (the journal then holds clients' encrypted traffic)")

	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.verbose, "v", false, "verbose logging (same as -log-level=debug)")
	fs.StringVar(&o.logFormat, "log-format", "auto", "log format: json, console, or auto (console on a terminal, JSON otherwise)")
	return fs
}

func parseFlags(args []string) (*options, error) {
	o := &options{set: map[string]bool{}}
	fs := newFlagSet(o)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	if o.dev {
		// As upstream: dev mode always serves on :3340.
		o.addr = ":3340"
	}
	return o, nil
}

// acmeDirectory is the directory URL the ACME client uses: the flag's,
// except that -certmode=gcp keeps Google's directory unless the flag was
// given.
func (o *options) acmeDirectory() string {
	if o.certMode == "gcp" && !o.set["acme-directory-url"] {
		return gcpDirectory
	}
	return o.acmeDirectoryURL
}

// serveTLS reports whether the main listener speaks TLS: on port 443, or
// whenever certificates are configured by hand.
func (o *options) serveTLS() bool {
	_, port, err := net.SplitHostPort(o.addr)
	if err != nil {
		return o.certMode == "manual"
	}
	return port == "443" || port == "https" || o.certMode == "manual"
}

// errUnsupported is returned for flags whose feature derpd does not have
// yet. Silently ignoring them would leave an operator believing, say, that
// clients are verified when they are not.
var errUnsupported = errors.New("not yet supported by derpd")

// checkSupported refuses flag values that ask for features derpd lacks.
func (o *options) checkSupported() error {
	var problems []string
	add := func(flagName, what string) {
		problems = append(problems, fmt.Sprintf("-%s: %s is %v", flagName, what, errUnsupported))
	}
	switch o.certMode {
	case "letsencrypt", "gcp", "manual":
	default:
		problems = append(problems, fmt.Sprintf("-certmode: unknown mode %q (want letsencrypt, gcp or manual)", o.certMode))
	}
	if o.acmeIPCerts && o.certMode != "letsencrypt" {
		// As upstream: Google's CA issues no IP certificates, and manual
		// mode obtains nothing.
		problems = append(problems, "-acme-ip-certs needs -certmode=letsencrypt")
	}
	if o.acmeIPCerts && o.certMode == "letsencrypt" {
		// Either would leave the flag without effect, and an operator
		// believing clients get IP certificates.
		if !o.serveTLS() {
			problems = append(problems, fmt.Sprintf("-acme-ip-certs: ACME certificates are served only with -a on port 443, as upstream; on %q derpd serves plain HTTP", o.addr))
		}
		if o.httpPort == -1 {
			problems = append(problems, "-acme-ip-certs needs the port-80 listener: the CA validates IP addresses with HTTP-01 on -http-port, which is -1")
		}
	}
	if o.set["acme-directory-url"] {
		if o.certMode == "manual" {
			problems = append(problems, "-acme-directory-url has no effect with -certmode=manual")
		}
		if u, err := url.Parse(o.acmeDirectoryURL); err != nil || u.Scheme != "https" || u.Host == "" {
			problems = append(problems, fmt.Sprintf("-acme-directory-url %q: want an https:// URL", o.acmeDirectoryURL))
		}
	}
	if o.rateConfig != "" {
		// Read here too, so a bad file fails start-up before anything
		// listens (run reads it again to apply it).
		if _, err := loadRateConfig(o.rateConfig); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if _, err := mesh.ParseMeshWith(o.meshWith); err != nil {
		problems = append(problems, err.Error())
	}
	if o.meshDNS != "" {
		if _, err := mesh.ParseMeshDNS(o.meshDNS); err != nil {
			problems = append(problems, err.Error())
		}
		if o.meshDNSInterval <= 0 {
			problems = append(problems, "-mesh-dns-interval must be positive")
		}
	}
	if o.meshDNSResolver != "" {
		if _, _, err := net.SplitHostPort(o.meshDNSResolver); err != nil {
			problems = append(problems, fmt.Sprintf("-mesh-dns-resolver %q: want host:port: %v", o.meshDNSResolver, err))
		}
	}
	if o.meshMaxPeerKeys <= 0 {
		problems = append(problems, "-mesh-max-peer-keys must be positive")
	}
	if o.secretsURL != "" {
		add("secrets-url", "fetching the mesh key from setec")
	}
	if o.ace {
		add("ace", "the CONNECT proxy")
	}
	if o.acceptBurst <= 0 {
		problems = append(problems, "-accept-connection-burst must be positive")
	}
	if o.acceptLimit <= 0 {
		problems = append(problems, "-accept-connection-limit must be positive")
	}
	switch o.logFormat {
	case "auto", "json", "console":
	default:
		problems = append(problems, fmt.Sprintf("-log-format: unknown format %q", o.logFormat))
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		problems = append(problems, fmt.Sprintf("-a %q: %v", o.addr, err))
	}
	switch {
	case o.home == "", o.home == "blank", strings.HasPrefix(o.home, "http://"), strings.HasPrefix(o.home, "https://"):
	default:
		problems = append(problems, fmt.Sprintf("-home: unknown value %q (want empty, \"blank\" or an http(s) URL)", o.home))
	}
	if o.logLevel != "" {
		if _, err := zerolog.ParseLevel(o.logLevel); err != nil {
			problems = append(problems, fmt.Sprintf("-log-level: unknown level %q (want debug, info, warn or error)", o.logLevel))
		}
	}
	if o.stunPort < 0 || o.stunPort > 65535 {
		problems = append(problems, "-stun-port "+strconv.Itoa(o.stunPort)+" is not a port")
	}
	problems = append(problems, o.checkDebugFlags()...)
	problems = append(problems, o.checkShutdownFlags()...)
	problems = append(problems, o.checkRecordFlags()...)
	if o.flowsMax <= 0 {
		problems = append(problems, "-flows-max must be positive")
	}
	if o.flowsInactive <= 0 || o.flowsSweep <= 0 {
		problems = append(problems, "-flows-inactive and -flows-sweep must be positive")
	}
	if o.rejectsMax <= 0 {
		problems = append(problems, "-rejects-max must be positive")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
