// Command derpd is a DERP relay server: a drop-in replacement for
// Tailscale's derper, built on actors.
//
// Run it for local development with
//
//	go run ./cmd/derpd -dev
//
// which serves plain HTTP on :3340 with a throwaway key.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	stdlog "log"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/actors/flows"
	"github.com/derpd/derpd/actors/journal"
	"github.com/derpd/derpd/actors/mesh"
	"github.com/derpd/derpd/actors/registry"
	"github.com/derpd/derpd/actors/rejects"
	"github.com/derpd/derpd/stun"
	"github.com/derpd/derpd/wire"
	"github.com/mattn/go-isatty"
	cmap "github.com/orcaman/concurrent-map"
	"github.com/rs/zerolog"
)

func main() {
	// protoactor's process registry is 1024 concurrent maps of
	// cmap.SHARD_COUNT (32) shards: 32,768 Go maps, each keeping the
	// buckets of the most actors it ever held, so a relay's client churn
	// leaves up to about 9.5 MiB behind (docs/performance.md, "What stays
	// after a load"). 1024 maps of one shard each still spread spawns
	// and stops over 1024 locks, and sends do not look the registry up
	// (a PID caches its process), so one shard loses nothing and cuts
	// that ceiling 32 times. It must be set before the first actor
	// system is made, and stay; tests (actors/sim) do the same.
	cmap.SHARD_COUNT = 1
	if code, ok := subcommand(os.Args[1:], os.Stdout, os.Stderr); ok {
		os.Exit(code) // derpd replay, derpd synth
	}
	opts, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "derpd:", err)
		os.Exit(2)
	}
	if opts.printVersion {
		fmt.Println(version())
		return
	}
	log := newLogger(opts)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, log); err != nil {
		log.Error().Err(err).Msg("derpd stopped")
		os.Exit(1)
	}
}

func newLogger(o *options) zerolog.Logger {
	level, err := zerolog.ParseLevel(o.logLevel)
	if err != nil || o.logLevel == "" {
		level = zerolog.InfoLevel
	}
	if o.verbose {
		level = zerolog.DebugLevel
	}
	zerolog.DurationFieldUnit = time.Millisecond
	format := o.logFormat
	if format == "auto" {
		format = "json"
		if isatty.IsTerminal(os.Stderr.Fd()) {
			format = "console"
		}
	}
	var log zerolog.Logger
	if format == "console" {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.DateTime})
	} else {
		log = zerolog.New(os.Stderr)
	}
	return log.Level(level).With().Timestamp().Logger()
}

// server is one running derpd: its listeners, the actor system and the
// HTTP routes.
type server struct {
	opts            *options
	log             zerolog.Logger
	sys             *actors.System
	clientCfg       *client.Config
	upgradeResponse []byte
	listener        *listener
	stun            *stun.Server
	certs           certSource // nil when serving plain HTTP
	tlsVersions     tlsVersionCounter
	bootstrap       *bootstrapDNS
	mesh            *actor.PID // the mesh actor; nil when not meshing
	started         time.Time

	// -verify-clients (verifyclients.go); nil when off.
	verify *tailscaledAdmitter

	// The debug pages' (debuglisten.go, traffic.go).
	debugAllow []netip.Prefix // -debug-allow
	stopping   chan struct{}  // closed when shutdown starts: ends /debug/traffic streams

	recorder *journal.Recorder // -record; nil when off
}

func run(ctx context.Context, opts *options, log zerolog.Logger) error {
	if err := opts.checkSupported(); err != nil {
		return err
	}
	// SIGHUP is caught from the start and in every mode: Go's default for
	// it is to exit, and systemd's reload sends it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	priv, meshKey, err := loadKeys(opts, log)
	if err != nil {
		return err
	}
	pub := priv.Public()

	sys := actors.NewSystem(log)
	recorder, err := startRecording(opts, sys, log)
	if err != nil {
		return err
	}
	registry.Spawn(sys, pub, registry.WithMaxSessionKeys(opts.meshMaxPeerKeys))
	rejects.Spawn(sys, opts.rejectsMax)
	if opts.flows {
		flows.Spawn(sys, flows.Config{Max: opts.flowsMax, Inactive: opts.flowsInactive, Sweep: opts.flowsSweep})
	}

	s := &server{
		opts: opts,
		log:  log,
		sys:  sys,
		clientCfg: &client.Config{
			PrivateKey:   priv,
			PublicKey:    pub,
			MeshKey:      meshKey,
			WriteTimeout: opts.tcpWriteTimeout,
			QueueDepth:   queueDepthFromEnv(log),
			// The default, unless a test has shortened it.
			HandshakeTimeout: handshakeTimeout,
		},
		upgradeResponse: upgradeResponse(pub),
		started:         time.Now(),
		stopping:        make(chan struct{}),
		recorder:        recorder,
	}
	// For a failed start-up; a shutdown closes the journal itself, once
	// the connections are gone.
	defer s.closeRecording()
	s.debugAllow, _ = parseDebugAllow(opts.debugAllow) // checked by checkSupported
	if opts.verifyURL != "" {
		s.clientCfg.Admit = (&urlAdmitter{
			url:      opts.verifyURL,
			failOpen: opts.verifyFailOpen,
			http:     &http.Client{Timeout: admissionTimeout},
			log:      log,
		}).admit
	}
	if opts.verifyClients {
		s.verify = startTailscaledAdmitter(opts, sys, log)
		s.clientCfg.Admit = s.verify.then(s.clientCfg.Admit)
	}

	if opts.rateConfig != "" {
		// As upstream: a limit that cannot be read stops start-up.
		if err := s.applyRateConfig(); err != nil {
			return err
		}
	}

	s.bootstrap = newBootstrapDNS(opts.bootstrapDNS, opts.unpublishedDNS, net.DefaultResolver, log)
	go s.bootstrap.run(ctx)

	var meta []byte
	if opts.serveTLS() {
		if s.certs, err = newCertSource(opts, log); err != nil {
			return err
		}
		if meta, err = metaCert(pub); err != nil {
			return err
		}
	}

	s.listener, err = listen(opts.addr, opts.tcpKeepAlive, opts.tcpUserTimeout, opts.acceptLimit, opts.acceptBurst)
	if err != nil {
		return err
	}
	s.listener.onReject = func(a net.Addr) {
		ap, _ := netip.ParseAddrPort(a.String())
		sys.Send(sys.Rejects, &actors.RejectBatch{Events: []actors.RejectEvent{{Dir: actors.RejectConnection,
			Reason: actors.RejectAcceptLimit, Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Count: 1}}})
	}
	var mainListener net.Listener = s.listener
	mainHandler := s.routes()
	httpSrv := &http.Server{
		Handler:           mainHandler,
		ReadHeaderTimeout: httpReadTimeout,
		ReadTimeout:       httpReadTimeout,
		WriteTimeout:      30 * time.Second,
		// DERP needs HTTP/1.1 upgrades; never negotiate HTTP/2.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     newStdLogger(log),
	}
	servers := []*http.Server{httpSrv}
	var ln80s net.Listener // the port-80 listener, bound but not yet served
	var serve80 func()
	serveErr := make(chan error, 3)
	if s.certs != nil {
		// Without a deadline, stuck TLS handshakes (scanners, half-open
		// connections) would pile up for ever; net/http's ReadTimeout
		// covers them.
		mainListener = tls.NewListener(s.listener, tlsConfig(s.certs, meta, &s.tlsVersions))
		if opts.httpPort != -1 {
			host, _, _ := net.SplitHostPort(opts.addr)
			ln80, err := listen(net.JoinHostPort(host, strconv.Itoa(opts.httpPort)), opts.tcpKeepAlive, opts.tcpUserTimeout, math.Inf(1), 0)
			if err != nil {
				s.listener.Close()
				return fmt.Errorf("-http-port: %w", err)
			}
			srv80 := &http.Server{
				Handler:           s.certs.HTTPHandler(s.port80Handler(mainHandler)),
				ReadHeaderTimeout: 30 * time.Second,
				ReadTimeout:       30 * time.Second,
				WriteTimeout:      5 * time.Minute,
				ErrorLog:          newStdLogger(log),
			}
			servers = append(servers, srv80)
			// Bound now, so a port in use fails start-up at once, but
			// served only with the rest: its /debug pages read the mesh
			// and STUN state set up below.
			ln80s = ln80
			serve80 = func() {
				go func() { serveErr <- fmt.Errorf("port 80: %w", srv80.Serve(ln80)) }()
				log.Info().Str("addr", ln80.Addr().String()).Msg("serving plain HTTP (captive-portal check, ACME, redirects)")
			}
		}
	}
	go s.reloadOnHUP(ctx, hup)

	if s.mesh, err = startMesh(opts, sys, priv, meshKey, log); err != nil {
		s.listener.Close()
		if ln80s != nil {
			ln80s.Close()
		}
		return err
	}

	if opts.runSTUN {
		host, _, _ := net.SplitHostPort(opts.addr)
		s.stun, err = stun.Listen(net.JoinHostPort(host, strconv.Itoa(opts.stunPort)))
		if err != nil {
			s.listener.Close()
			if ln80s != nil {
				ln80s.Close()
			}
			return fmt.Errorf("STUN: %w", err)
		}
		// A failing UDP socket can report an error per datagram, and the
		// counters tally them all: one line per ten seconds is enough.
		stunLog := log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second})
		s.stun.OnError = func(err error) { stunLog.Warn().Err(err).Msg("STUN socket error") }
		go func() {
			if err := s.stun.Serve(); err != nil {
				log.Error().Err(err).Msg("STUN server stopped")
			}
		}()
		log.Info().Str("addr", s.stun.LocalAddr().String()).Msg("serving STUN")
	}

	if opts.debugAddr != "" {
		// Only now: its pages read s.mesh and s.stun, set above.
		dbg, err := s.startDebugListener(serveErr)
		if err != nil {
			s.listener.Close()
			if ln80s != nil {
				ln80s.Close()
			}
			s.shutdown(servers, nil)
			return err
		}
		servers = append(servers, dbg)
	}
	if serve80 != nil {
		serve80()
	}
	proto := "HTTP"
	if s.certs != nil {
		proto = "HTTPS"
	}
	log.Info().Str("addr", s.listener.Addr().String()).Str("server_key", pub.String()).
		Bool("derp", opts.runDERP).Bool("mesh_key", !meshKey.IsZero()).Str("version", version()).
		Str("hostname", opts.hostname).Str("certmode", opts.certMode).
		Msg("serving DERP over " + proto)
	go func() { serveErr <- httpSrv.Serve(mainListener) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("HTTP server: %w", err)
	case <-ctx.Done():
	}
	// From here a second SIGINT or SIGTERM exits at once (shutdown.go);
	// caught before the log line, so one sent after it is never missed.
	force := make(chan os.Signal, 1)
	signal.Notify(force, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(force)
	log.Info().Dur("bound", opts.shutdownBound()).Msg("shutting down")
	return s.shutdown(servers, force)
}

// reloadOnHUP re-reads certificates on SIGHUP, for operators who renew
// manual certificates and want them live at once rather than at the next
// periodic check. In other modes there is nothing to reload, and it says
// so.
func (s *server) reloadOnHUP(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if s.opts.rateConfig != "" {
				if err := s.applyRateConfig(); err != nil {
					s.log.Error().Err(err).Msg("SIGHUP: reloading -rate-config failed; keeping the limit in force")
				}
			}
			err := errNothingToReload
			if s.certs != nil {
				err = s.certs.Reload()
			}
			switch {
			case err == nil:
				s.log.Info().Msg("SIGHUP: certificates reloaded")
			case errors.Is(err, errNothingToReload):
				s.log.Info().Msg("SIGHUP: " + err.Error())
			default:
				s.log.Error().Err(err).Msg("SIGHUP: reloading certificates failed; keeping the old ones")
			}
		}
	}
}

func loadKeys(opts *options, log zerolog.Logger) (wire.NodePrivate, wire.MeshKey, error) {
	var priv wire.NodePrivate
	var meshKey wire.MeshKey
	if opts.dev {
		// A fresh key every run: dev servers are never pinned.
		priv = wire.GenerateNodePrivate()
		if s := os.Getenv("TAILSCALE_DERPER_MESH_KEY"); s != "" {
			k, err := wire.ParseMeshKey(s)
			if err != nil {
				return priv, meshKey, fmt.Errorf("TAILSCALE_DERPER_MESH_KEY: %w", err)
			}
			meshKey = k
		}
		return priv, meshKey, nil
	}
	path := opts.configPath
	if path == "" {
		if os.Getuid() != 0 {
			return priv, meshKey, errors.New("-c <config file> is required (or use -dev)")
		}
		path = "/var/lib/derper/derper.key"
	}
	priv, created, err := loadOrCreateKey(path)
	if err != nil {
		return priv, meshKey, err
	}
	if created {
		log.Info().Str("path", path).Msg("created a new server key")
	}
	meshKey, err = loadMeshKey(opts.meshPSKFile, opts.set["mesh-psk-file"])
	if err != nil {
		return priv, meshKey, err
	}
	return priv, meshKey, nil
}

// startMesh starts the mesh actor for -mesh-with and -mesh-dns, if either
// is set. Upstream refuses -mesh-with without a mesh key, and so does
// derpd: a peer would take the link for an ordinary client.
func startMesh(opts *options, sys *actors.System, priv wire.NodePrivate, meshKey wire.MeshKey, log zerolog.Logger) (*actor.PID, error) {
	targets, err := mesh.ParseMeshWith(opts.meshWith)
	if err != nil {
		return nil, err
	}
	var dns *mesh.DNS
	if opts.meshDNS != "" {
		d, err := mesh.ParseMeshDNS(opts.meshDNS)
		if err != nil {
			return nil, err
		}
		d.Interval, d.Resolver = opts.meshDNSInterval, meshResolver(opts.meshDNSResolver)
		dns = &d
	}
	if len(targets) == 0 && dns == nil {
		return nil, nil
	}
	if meshKey.IsZero() {
		return nil, errors.New("-mesh-with and -mesh-dns need the region's mesh key (-mesh-psk-file, or $TAILSCALE_DERPER_MESH_KEY with -dev)")
	}
	cfg := &mesh.Config{PrivateKey: priv, PublicKey: priv.Public(), MeshKey: meshKey}
	for _, t := range targets {
		log.Info().Str("peer", t.Name).Str("url", t.URL()).Str("dial", t.DialAddr()).Msg("meshing with")
	}
	if dns != nil {
		log.Info().Str("name", dns.Name).Str("tls_name", dns.TLSName).Int("port", dns.Port).Dur("interval", dns.Interval).
			Msg("meshing with every address of")
	}
	return mesh.SpawnManager(sys, cfg, targets, dns), nil
}

// meshResolver is the system's resolver, or one that asks only server.
func meshResolver(server string) mesh.Resolver {
	if server == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		},
	}
}

// queueDepthFromEnv honours upstream's debug knob for the per-client
// queue depth.
func queueDepthFromEnv(log zerolog.Logger) int {
	s := os.Getenv("TS_DEBUG_DERP_PER_CLIENT_SEND_QUEUE_DEPTH")
	if s == "" {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		log.Warn().Str("value", s).Msg("ignoring invalid TS_DEBUG_DERP_PER_CLIENT_SEND_QUEUE_DEPTH")
		return 0
	}
	return n
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/derp", s.serveDERP)
	mux.HandleFunc("/derp/probe", serveProbe)
	mux.HandleFunc("/derp/latency-check", serveProbe)
	mux.HandleFunc("/generate_204", serveNoContent)
	mux.HandleFunc("/robots.txt", serveRobots)
	mux.HandleFunc("/bootstrap-dns", s.bootstrap.serveHTTP)
	mux.Handle("/debug/", s.debugHandler())
	mux.HandleFunc("/", s.serveHome)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			serveConnect(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// newStdLogger routes net/http's own complaints (bad requests, TLS
// handshake failures from scanners) into zerolog at debug level: they are
// routine on a public server and would drown the lines that matter.
func newStdLogger(log zerolog.Logger) *stdlog.Logger {
	return stdlog.New(debugWriter{log.With().Str("component", "http").Logger()}, "", 0)
}

type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
