package main

import (
	"fmt"
	"time"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/journal"
	"github.com/rs/zerolog"
)

// defaultRecordMaxBytes bounds a journal (-record-max-bytes): at about 90
// bytes a packet, a gibibyte holds some twelve million packets, two
// minutes of a relay at 100,000 packets a second.
const defaultRecordMaxBytes = 1 << 30

// recordDrainTimeout bounds the wait, at shutdown, for the registry to
// take the last departures before the journal is closed.
const recordDrainTimeout = time.Second

// checkRecordFlags returns what is wrong with the -record flags.
func (o *options) checkRecordFlags() []string {
	if o.recordMaxBytes < 0 {
		return []string{fmt.Sprintf("-record-max-bytes %d is negative", o.recordMaxBytes)}
	}
	return nil
}

// startRecording opens the journal of -record and makes sys record into
// it; it returns nil when -record is not given. It runs before any actor
// is spawned, so every actor gets its buffer.
func startRecording(o *options, sys *actors.System, log zerolog.Logger) (*journal.Recorder, error) {
	if o.record == "" {
		return nil, nil
	}
	rec, err := journal.Create(o.record, journal.RecorderConfig{
		MaxBytes: o.recordMaxBytes,
		Payloads: o.recordPayloads,
		Clock:    sys.Clock,
		Log:      log.With().Str("component", "record").Logger(),
	})
	if err != nil {
		return nil, fmt.Errorf("-record: %w", err)
	}
	sys.Recorder = rec
	log.Info().Str("file", o.record).Int64("max_bytes", o.recordMaxBytes).Bool("payloads", o.recordPayloads).
		Msg("recording every actor message and routed packet")
	return rec, nil
}

// closeRecording flushes and closes the journal, once; run calls it after
// the connections are closed. The registry is asked a question first:
// its answer comes after every Unregister sent before, so those are in
// the journal.
func (s *server) closeRecording() {
	rec := s.recorder
	if rec == nil {
		return
	}
	s.recorder = nil
	if s.sys.Registry != nil {
		s.sys.Root.RequestFuture(s.sys.Registry, &actors.GetRegistryState{}, recordDrainTimeout).Result()
	}
	if err := rec.Close(); err != nil {
		s.log.Error().Err(err).Str("file", s.opts.record).Msg("closing the journal (-record) failed")
		return
	}
	s.log.Info().Str("file", s.opts.record).Bool("stopped_at_limit", rec.Stopped()).Msg("journal closed")
}
