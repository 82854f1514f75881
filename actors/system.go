package actors

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"
)

// System is the actor system plus what every derpd actor needs to reach:
// the logger, the counters, the routing table and the registry's PID.
type System struct {
	Actors *actor.ActorSystem
	Root   *actor.RootContext
	Log    zerolog.Logger
	Stats  *Stats
	Routes *RouteTable

	// RecvRate is the per-client receive rate limit in force, nil for
	// none. Readers check it on every frame, so a new limit (SIGHUP)
	// applies to existing connections at their next frame.
	RecvRate atomic.Pointer[RecvRate]

	// Clock is where actors read the time and set timers: RealClock
	// unless WithClock says otherwise.
	Clock Clock

	// Recorder journals what actors receive and readers route (-record);
	// nil when not recording. Set by WithRecorder.
	Recorder Recorder

	// Registry is the registry actor, set once by whoever spawns it
	// before the first connection is accepted.
	Registry *actor.PID

	// Flows is the flows actor, nil when flows are not counted (-flows
	// off); Rejects is the rejects actor. Set once before the first
	// connection, as Registry.
	Flows   *actor.PID
	Rejects *actor.PID

	dispatcher actor.Dispatcher
	middleware []actor.ReceiverMiddleware
	connIDs    atomic.Uint64
	kinds      map[ActorKind]*KindStats // fixed at NewSystem: read without a lock
}

// Option configures a System.
type Option func(*System)

// WithDispatcher runs every derpd actor on d instead of protoactor's
// goroutine-per-activation dispatcher; tests pass a StepDispatcher.
func WithDispatcher(d actor.Dispatcher) Option { return func(s *System) { s.dispatcher = d } }

// WithClock gives every actor clock instead of the wall clock; tests pass
// a FakeClock.
func WithClock(clock Clock) Option { return func(s *System) { s.Clock = clock } }

// WithReceiverMiddleware adds middleware to every derpd actor, such as a
// recorder of delivered messages.
func WithReceiverMiddleware(m ...actor.ReceiverMiddleware) Option {
	return func(s *System) { s.middleware = append(s.middleware, m...) }
}

// NewSystem starts an actor system whose library logging goes to log.
// protoactor's built-in metrics stay off: they cost about a microsecond
// and eight allocations per message and open a Prometheus port on every
// interface; derpd counts for itself.
func NewSystem(log zerolog.Logger, opts ...Option) *System {
	s := &System{
		Log:    log,
		Stats:  new(Stats),
		Routes: NewRouteTable(),
		Clock:  RealClock,
		kinds:  make(map[ActorKind]*KindStats, len(ActorKinds)),
	}
	for _, k := range ActorKinds {
		s.kinds[k] = new(KindStats)
	}
	for _, o := range opts {
		o(s)
	}
	s.Actors = actor.NewActorSystem(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
			return slog.New(zerologHandler{log: log.With().Str("component", "protoactor").Logger()})
		}),
		// Dead letters are routine here (a PeerGone for a connection that
		// just closed); do not log them at all.
		actor.WithDeadLetterThrottleCount(0),
		actor.WithDeadLetterRequestLogging(false),
	)
	s.Root = s.Actors.Root
	return s
}

// Props wraps a producer of an actor of kind with the system's dispatcher
// and middleware, so every derpd actor is scheduled and observed the same
// way. The MailboxStats count the messages of the one actor spawned from
// these props (spawn a new Props for each actor).
func (s *System) Props(kind ActorKind, p actor.Producer, opts ...actor.PropsOption) (*actor.Props, *MailboxStats) {
	return s.PropsFor(kind, 0, p, opts...)
}

// PropsFor is Props for an actor that the journal (-record) names by id:
// a client actor by its connection id, a mesh link by its number.
func (s *System) PropsFor(kind ActorKind, id uint64, p actor.Producer, opts ...actor.PropsOption) (*actor.Props, *MailboxStats) {
	return s.props(kind, p, actor.Unbounded, s.recording(kind, id, opts))
}

// recording adds the recorder's middleware, outermost, so that it sees
// every message as the mailbox hands it over.
func (s *System) recording(kind ActorKind, id uint64, opts []actor.PropsOption) []actor.PropsOption {
	if s.Recorder == nil {
		return opts
	}
	return append(opts, actor.WithReceiverMiddleware(s.Recorder.Middleware(kind, id)))
}

// PriorityProps is Props with a priority mailbox, counted the same way:
// messages that implement actor.PriorityMessage are taken highest
// priority first, each priority in the order posted, and the rest have
// actor.DefaultPriority. The registry uses it so that its bookkeeping
// (Delivered) never holds up registrations. Only a message posted as is
// has its priority: one sent as a request travels in an envelope and gets
// the default.
func (s *System) PriorityProps(kind ActorKind, p actor.Producer, opts ...actor.PropsOption) (*actor.Props, *MailboxStats) {
	return s.props(kind, p, actor.UnboundedPriority, s.recording(kind, 0, opts))
}

func (s *System) props(kind ActorKind, p actor.Producer, mailbox func(...actor.MailboxMiddleware) actor.MailboxProducer, opts []actor.PropsOption) (*actor.Props, *MailboxStats) {
	ks := s.kinds[kind]
	if ks == nil {
		panic("actors: Props for an unknown actor kind " + string(kind))
	}
	stats := &MailboxStats{Kind: kind, kind: ks}
	opts = append(opts, actor.WithMailbox(mailbox(mailboxCounter{stats})))
	if s.dispatcher != nil {
		opts = append(opts, actor.WithDispatcher(s.dispatcher))
	}
	mw := append([]actor.ReceiverMiddleware{s.panicGuard(kind, ks), liveCounter(ks)}, s.middleware...)
	opts = append(opts, actor.WithReceiverMiddleware(mw...))
	return actor.PropsFromProducer(p, opts...), stats
}

// Kind returns the sums over every actor of kind.
func (s *System) Kind(kind ActorKind) *KindStats { return s.kinds[kind] }

// NextConnID returns a process-unique connection number.
func (s *System) NextConnID() uint64 { return s.connIDs.Add(1) }

// Send delivers msg to pid from outside any actor (a reader or writer
// goroutine).
func (s *System) Send(pid *actor.PID, msg any) { s.Root.Send(pid, msg) }

// zerologHandler routes protoactor's slog output into zerolog. The
// library's Info lines (actor started, dead letters) are noise for an
// operator, so they are demoted to debug.
type zerologHandler struct {
	log   zerolog.Logger
	attrs []slog.Attr
}

func (h zerologHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.log.GetLevel() <= slogToZerolog(l)
}

func (h zerologHandler) Handle(_ context.Context, r slog.Record) error {
	ev := h.log.WithLevel(slogToZerolog(r.Level))
	for _, a := range h.attrs {
		ev = ev.Str(a.Key, a.Value.String())
	}
	r.Attrs(func(a slog.Attr) bool {
		ev = ev.Str(a.Key, a.Value.String())
		return true
	})
	ev.Msg(r.Message)
	return nil
}

func (h zerologHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return h
}

func (h zerologHandler) WithGroup(string) slog.Handler { return h }

func slogToZerolog(l slog.Level) zerolog.Level {
	switch {
	case l >= slog.LevelError:
		return zerolog.ErrorLevel
	case l >= slog.LevelWarn:
		return zerolog.WarnLevel
	default:
		return zerolog.DebugLevel
	}
}

// WritePrometheus writes the per-kind actor series: how many actors of
// each kind run, the messages waiting in their mailboxes, and the
// messages they have processed.
func (s *System) WritePrometheus(p PromWriter) {
	for _, m := range []struct {
		name, typ string
		value     func(*KindStats) int64
	}{
		{"derpd_actors", "gauge", (*KindStats).Live},
		{"derpd_actor_mailbox_depth", "gauge", (*KindStats).Depth},
		{"derpd_actor_messages_processed", "counter", (*KindStats).Processed},
		{"derpd_actor_panics", "counter", (*KindStats).Panics},
	} {
		p.Header(m.name, m.typ)
		for _, k := range ActorKinds {
			p.Sample(m.name, `kind="`+string(k)+`"`, float64(m.value(s.kinds[k])))
		}
	}
}
