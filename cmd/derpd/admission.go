package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/derpd/derpd/actors/client"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// admissionTimeout bounds one call to the admission controller; the
// handshake deadline bounds it too.
const admissionTimeout = 5 * time.Second

// urlAdmitter asks an HTTP admission controller about every non-mesh
// client, with upstream's request and response shapes so existing
// controllers (Headscale's among them) work unchanged.
type urlAdmitter struct {
	url      string
	failOpen bool
	http     *http.Client
	log      zerolog.Logger
}

type admissionRequest struct {
	NodePublic wire.NodePublic
	Source     netip.Addr
}

type admissionResponse struct {
	Allow bool
}

func (a *urlAdmitter) admit(ctx context.Context, key wire.NodePublic, addr netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, admissionTimeout)
	defer cancel()
	body, _ := json.Marshal(admissionRequest{NodePublic: key, Source: addr.Addr()})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: building request: %v", client.ErrRejected, err)
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := a.http.Do(req)
	if err != nil {
		// The controller is down or slow: the operator chose what that
		// means with -verify-client-url-fail-open.
		if a.failOpen {
			a.log.Warn().Err(err).Str("key", key.ShortString()).Msg("admission controller unreachable; admitting (fail-open)")
			return nil
		}
		return fmt.Errorf("%w: admission controller unreachable: %v", client.ErrRejected, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: admission controller answered %s", client.ErrRejected, res.Status)
	}
	var ar admissionResponse
	if err := json.NewDecoder(io.LimitReader(res.Body, 4<<10)).Decode(&ar); err != nil {
		return fmt.Errorf("%w: admission controller's answer: %v", client.ErrRejected, err)
	}
	if !ar.Allow {
		return fmt.Errorf("%w: denied by admission controller", client.ErrRejected)
	}
	return nil
}
