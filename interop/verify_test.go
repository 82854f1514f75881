package interop

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/types/key"
)

// -verify-clients with a real tailscaled: a tailnet of two nodes on
// Tailscale's test control server, the relay asking the first node's
// tailscaled (over its LocalAPI socket, -socket) about every client.
// Keys of the tailnet are admitted and relay to each other; a key from
// outside is refused during the handshake; with tailscaled stopped a
// relay refuses (the default) or, with -verify-clients-fail-open, admits;
// once tailscaled is back, what was refused while it was gone is admitted.
//
// Against upstream derper too, except what is derpd's alone
// (-verify-clients-fail-open, /debug/rejects, derpd's log).
func TestVerifyClientsTailscaled(t *testing.T) {
	isDerpd := harness.TargetFromEnv() == harness.Derpd
	tn := harness.NewTailnet(t)
	nodes := tn.StartNodes(t, "relay-host", "peer")
	host, peer := nodes[0], nodes[1]
	hostKey, peerKey := host.PrivateKey(t), peer.PrivateKey(t)

	verify := []string{"-verify-clients", "-socket", host.Socket}
	relay := start(t, harness.Options{Args: verify})
	// Two more relays for when tailscaled is gone, started now while it
	// runs, as in production, and not asked about any tailnet key until
	// then: whatever derpd remembers of earlier answers cannot speak for
	// tailscaled.
	failClosed := start(t, harness.Options{Args: verify})
	var failOpen *harness.Server
	if isDerpd {
		failOpen = start(t, harness.Options{Args: append(verify, "-verify-clients-fail-open")})
	}

	t.Run("TailnetKeysAdmitted", func(t *testing.T) {
		// The peer node's key and the relay host's own: both are known
		// to the host's tailscaled, one as a peer, one as itself.
		a := admit(t, relay, peerKey, "the peer node")
		b := admit(t, relay, hostKey, "the relay host's own node")
		relayBothWays(t, a, b)
	})

	var outsiderReason string
	t.Run("OutsiderRefused", func(t *testing.T) {
		outsider := key.NewNode()
		expectRefused(t, relay, outsider)
		if isDerpd {
			outsiderReason = expectRejectLogged(t, relay, outsider.Public())
		}
	})

	t.Run("DebugCheckWhileTailscaledRuns", func(t *testing.T) {
		if code, body := debugCheck(t, failClosed); code != 200 {
			t.Fatalf("/debug/check answered %d with tailscaled running: %s", code, body)
		}
	})

	// Each relay still verifies (it refuses an outsider) before
	// tailscaled goes, so what changes after is tailscaled's absence.
	expectRefused(t, failClosed, key.NewNode())
	if failOpen != nil {
		expectRefused(t, failOpen, key.NewNode())
	}
	host.Stop()

	t.Run("FailClosedWhenTailscaledStopped", func(t *testing.T) {
		expectRefused(t, failClosed, peerKey)
		if !isDerpd {
			return
		}
		reason := expectRejectLogged(t, failClosed, peerKey.Public())
		if outsiderReason != "" && reason == outsiderReason {
			t.Errorf("tailscaled gone and a key unknown to it give the same reason %q; an operator cannot tell them apart", reason)
		}
	})

	t.Run("DebugCheckWhenTailscaledStopped", func(t *testing.T) {
		if code, body := debugCheck(t, failClosed); code == 200 {
			t.Fatalf("/debug/check answered 200 with tailscaled stopped: %s", body)
		}
	})

	t.Run("FailOpenWhenTailscaledStopped", func(t *testing.T) {
		if failOpen == nil {
			t.Skip("-verify-clients-fail-open is derpd's; upstream derper has no such flag and always refuses when tailscaled cannot be asked")
		}
		a := admit(t, failOpen, peerKey, "the peer node")
		b := admit(t, failOpen, hostKey, "the relay host's own node")
		relayBothWays(t, a, b)
	})

	// tailscaled comes back (logged in from its state file, as after a
	// reboot): the relay that refused the peer's key while it was gone
	// admits it again, so an answer it could not get was not remembered
	// as a refusal. derpd may go on refusing for a moment (after a failed
	// call it does not ask tailscaled again for 2 s, so that a tailscaled
	// that is down is not asked once per connecting client); hence
	// eventually, bounded by the suite's failure deadline.
	host.Restart(t)
	host.AwaitPeer(t, peerKey.Public())
	t.Run("AdmittedWhenTailscaledIsBack", func(t *testing.T) {
		var a *harness.Client
		eventually(t, "the peer's key admitted again", func() (err error) {
			a, err = harness.Dial(failClosed.URL(), peerKey)
			return err
		})
		t.Cleanup(func() { a.Close() })
		b := admit(t, failClosed, hostKey, "the relay host's own node")
		relayBothWays(t, a, b)
		if code, body := debugCheck(t, failClosed); code != 200 {
			t.Fatalf("/debug/check answered %d with tailscaled back: %s", code, body)
		}
	})
}

// admit connects as priv, whose key is whose, and requires the server to
// admit it.
func admit(t *testing.T, srv *harness.Server, priv key.NodePrivate, whose string) *harness.Client {
	t.Helper()
	c, err := harness.Dial(srv.URL(), priv)
	if err != nil {
		t.Fatalf("%s did not admit %s key %v: %v", srv.Kind, whose, priv.Public().ShortString(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// relayBothWays sends a packet each way between two admitted clients.
func relayBothWays(t *testing.T, a, b *harness.Client) {
	t.Helper()
	for _, p := range []struct{ from, to *harness.Client }{{a, b}, {b, a}} {
		payload := []byte("verified by tailscaled, from " + p.from.Pub.ShortString())
		if err := p.from.Send(p.to.Pub, payload); err != nil {
			t.Fatal(err)
		}
		p.to.ExpectPacket(t, p.from.Pub, payload)
	}
}

// expectRefused connects as priv with Tailscale's client and requires the
// server to close the connection after the ClientInfo, before ServerInfo:
// refused in the handshake, not unreachable and not admitted.
func expectRefused(t *testing.T, srv *harness.Server, priv key.NodePrivate) {
	t.Helper()
	c, err := harness.Dial(srv.URL(), priv)
	if err == nil {
		c.Close()
		t.Fatalf("%s admitted %v", srv.Kind, priv.Public().ShortString())
	}
	if !strings.Contains(err.Error(), "before ServerInfo") {
		t.Fatalf("%s: %v, want the connection closed before ServerInfo", srv.Kind, err)
	}
}

// expectRejectLogged requires derpd to have recorded the refusal of k in
// /debug/rejects with a reason naming tailscaled, and to have logged a
// line with the key and that reason. It returns the reason.
func expectRejectLogged(t *testing.T, srv *harness.Server, k key.NodePublic) string {
	t.Helper()
	var detail string
	eventually(t, "the refusal of "+k.ShortString()+" on /debug/rejects", func() error {
		var p rejectsPage
		debugJSON(t, srv, "/debug/rejects", &p)
		for _, r := range p.Rejects {
			if r.Direction == "inbound-connection" && r.Peer == k.String() {
				detail = r.Detail
				return nil
			}
		}
		return fmt.Errorf("no inbound-connection reject for %v: %+v", k.ShortString(), p.Rejects)
	})
	if !strings.Contains(detail, "tailscaled") {
		t.Errorf("reject of %v says %q, which does not name tailscaled", k.ShortString(), detail)
	}
	escaped, _ := json.Marshal(detail) // derpd logs JSON
	eventually(t, "derpd's log line for "+k.ShortString(), func() error {
		for _, line := range strings.Split(srv.Output(), "\n") {
			if strings.Contains(line, k.String()) && strings.Contains(line, strings.Trim(string(escaped), `"`)) {
				return nil
			}
		}
		return fmt.Errorf("no line names %v with the reason %q", k.ShortString(), detail)
	})
	return detail
}

// debugCheck fetches /debug/check.
func debugCheck(t *testing.T, srv *harness.Server) (int, string) {
	t.Helper()
	res, err := srv.HTTPClient().Get(srv.BaseURL() + "/debug/check")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}
