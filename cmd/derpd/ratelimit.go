package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/derpd/derpd/actors"
)

// rateConfigFile is upstream's -rate-config file, field for field. A
// missing field is 0; PerClientRateLimitBytesPerSec 0 means no limit.
type rateConfigFile struct {
	PerClientRateLimitBytesPerSec uint64
	PerClientRateBurstBytes       uint64
}

// loadRateConfig reads a -rate-config file into the limit it sets (nil
// for none), with upstream's rules applied (see actors.NormalizedRecvRate).
func loadRateConfig(path string) (*actors.RecvRate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-rate-config: %w", err)
	}
	var f rateConfigFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("-rate-config %s: %w", path, err)
	}
	return actors.NormalizedRecvRate(f.PerClientRateLimitBytesPerSec, f.PerClientRateBurstBytes), nil
}

// applyRateConfig loads -rate-config and puts it in force for every
// connection, existing ones at their next frame. On error the limit in
// force stays.
func (s *server) applyRateConfig() error {
	rc, err := loadRateConfig(s.opts.rateConfig)
	if err != nil {
		return err
	}
	s.sys.RecvRate.Store(rc)
	ev := s.log.Info().Str("file", s.opts.rateConfig)
	if rc == nil {
		ev.Msg("per-client receive rate limit: none")
	} else {
		ev.Uint64("bytes_per_sec", rc.BytesPerSec).Uint64("burst_bytes", rc.Burst).Msg("per-client receive rate limit in force")
	}
	return nil
}

// writeRateMetrics writes upstream's three rate-limit series, which exist
// only when -rate-config is set.
func (s *server) writeRateMetrics(p actors.PromWriter) {
	if s.opts.rateConfig == "" {
		return
	}
	var rc actors.RecvRate
	if cur := s.sys.RecvRate.Load(); cur != nil {
		rc = *cur
	}
	p.Gauge("derp_rate_limit_per_client_bytes_per_second", int64(rc.BytesPerSec))
	p.Gauge("derp_rate_limit_per_client_burst_bytes", int64(rc.Burst))
	p.Counter("derp_rate_limit_per_client_waited", s.sys.Stats.RateLimitWaits.Load())
}
