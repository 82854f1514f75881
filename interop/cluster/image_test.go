package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"tailscale.com/types/key"
)

// imageBuildTimeout bounds `make image`: a static build of derpd (cached
// after the first) and a docker build of a few COPY steps.
const imageBuildTimeout = 10 * time.Minute

// TestContainerImage builds the image operators run, with `make image`
// from the repository's own Containerfile, and meets it as an operator
// would: it runs as a non-root numeric user, prints its version, declares
// its ports and state volume, and on a network of the test's own serves
// TLS on 443 and plain HTTP on 80 as that user, with a certificate copied
// in for -certmode manual (the operator's arguments winning over the
// image's -certdir), relays a packet between two Tailscale clients, and
// keeps its server key in the volume across a restart. The image, the
// container (with its volume) and the network are removed at the end,
// and labelled like the cluster's, so a later run removes them if this
// one is killed.
func TestContainerImage(t *testing.T) {
	if os.Getenv("DERPD_CLUSTER") != "1" {
		t.Skip("the Docker suite runs only with DERPD_CLUSTER=1 (make test-cluster)")
	}
	if _, err := docker("version", "--format", "{{.Server.Version}}"); err != nil {
		t.Fatalf("DERPD_CLUSTER=1 but Docker is not reachable: %v", err)
	}
	if removed, err := reapStale(); err != nil {
		t.Logf("removing leftovers of aborted runs: %v", err)
	} else if len(removed) > 0 {
		t.Logf("removed %d leftovers of aborted runs: %v", len(removed), removed)
	}
	id := newRunID()
	labels := []string{labelRun + "=" + id, labelOwner + "=" + ownerStamp(os.Getpid())}
	var labelFlags []string
	for _, l := range labels {
		labelFlags = append(labelFlags, "--label", l)
	}
	image, container := id+"-image:test", id+"-image"
	var nw *network
	t.Cleanup(func() {
		if t.Failed() {
			if logs, err := dockerLogs(container); err == nil {
				t.Logf("logs of %s:\n%s", container, logs)
			}
		}
		// Each may not exist, if the test failed before making it.
		docker("rm", "-f", "-v", container)
		if nw != nil {
			if _, err := docker("network", "rm", nw.name); err != nil {
				t.Errorf("removing network: %v", err)
			}
		}
		docker("rmi", "-f", image)
	})

	ctx, cancel := context.WithTimeout(context.Background(), imageBuildTimeout)
	defer cancel()
	build := exec.CommandContext(ctx, "make", "image", "DIST="+t.TempDir(), "IMAGE="+image,
		"IMAGE_BUILD_FLAGS=--force-rm "+strings.Join(labelFlags, " "))
	build.Dir = filepath.Dir(harness.ModuleDir())
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}

	// What the image declares.
	out, err := docker("image", "inspect", "--format", "{{json .Config}}", image)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		User         string
		ExposedPorts map[string]struct{}
		Volumes      map[string]struct{}
		Entrypoint   []string
		Labels       map[string]string
	}
	if err := json.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatalf("docker image inspect: %v\n%s", err, out)
	}
	uid, _, _ := strings.Cut(cfg.User, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		// Numeric, so that Kubernetes' runAsNonRoot can tell without a
		// passwd file; not 0.
		t.Errorf("USER %q: want a numeric user other than root", cfg.User)
	}
	for _, p := range []string{"443/tcp", "80/tcp", "3478/udp"} {
		if _, ok := cfg.ExposedPorts[p]; !ok {
			t.Errorf("the image does not expose %s (it exposes %v)", p, cfg.ExposedPorts)
		}
	}
	if _, ok := cfg.Volumes["/var/lib/derpd"]; !ok {
		t.Errorf("no volume at /var/lib/derpd (volumes: %v)", cfg.Volumes)
	}
	if !slices.Equal(cfg.Entrypoint[:min(3, len(cfg.Entrypoint))], []string{"/usr/bin/derpd", "-c", "/var/lib/derpd/derper.key"}) {
		t.Errorf("ENTRYPOINT %q, want derpd with its key in the volume", cfg.Entrypoint)
	}

	// The version: the one make stamped, which it also put in a label.
	want := cfg.Labels["org.opencontainers.image.version"]
	got, err := docker(append(append([]string{"run", "--rm"}, labelFlags...), image, "-version")...)
	if err != nil {
		t.Fatal(err)
	}
	if want == "" || want == "unknown" || got != want {
		t.Errorf("docker run IMAGE -version prints %q, want the version make stamped, %q", got, want)
	}
	if t.Failed() {
		return
	}

	// Running, on a network of its own, with a certificate from a CA of
	// the test's.
	if nw, err = createNetwork(id+"-image", labels); err != nil {
		t.Fatal(err)
	}
	ip := nw.ip(10)
	ca, err := harness.MakeCA()
	if err != nil {
		t.Fatal(err)
	}
	certs := t.TempDir()
	if err := ca.IssueFiles(certs, sharedName, 1); err != nil {
		t.Fatal(err)
	}
	// The container's user is not the file's owner; an operator would
	// chown the key to 65532 instead.
	if err := os.Chmod(filepath.Join(certs, sharedName+".key"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"create", "--name", container, "--network", nw.name, "--ip", ip.String()}, labelFlags...)
	args = append(args, image, "-hostname", sharedName, "-certmode", "manual", "-certdir", "/certs")
	if _, err := docker(args...); err != nil {
		t.Fatal(err)
	}
	if _, err := docker("cp", certs+"/.", container+":/certs"); err != nil {
		t.Fatal(err)
	}
	if _, err := docker("start", container); err != nil {
		t.Fatal(err)
	}
	awaitImageServing(t, container, ip.String(), ca)

	n := &node{kind: harness.Derpd, name: container}
	a, err := dialClient("a", n, ip, ca.Pool, key.NodePrivate{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	b, err := dialClient("b", n, ip, ca.Pool, key.NodePrivate{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	awaitRelayed(t, a, b)

	// The key file is in the volume, written by the image's user: a
	// restart keeps the server's identity.
	serverKey := a.dc.ServerPublicKey()
	if _, err := docker("restart", container); err != nil {
		t.Fatal(err)
	}
	awaitImageServing(t, container, ip.String(), ca)
	c, err := dialClient("c", n, ip, ca.Pool, key.NodePrivate{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if got := c.dc.ServerPublicKey(); got != serverKey {
		t.Errorf("the server key was %v before a restart and is %v after: the key file did not persist", serverKey.ShortString(), got.ShortString())
	}
}

// awaitImageServing waits until the container answers /derp/probe over
// TLS on 443 and /generate_204 over plain HTTP on 80: both ports bound by
// a user that is not root.
func awaitImageServing(t *testing.T, container, ip string, ca *harness.CA) {
	t.Helper()
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				var d net.Dialer
				return d.DialContext(ctx, network, net.JoinHostPort(ip, port))
			},
			TLSClientConfig:   &tls.Config{ServerName: sharedName, RootCAs: ca.Pool},
			DisableKeepAlives: true,
		},
	}
	deadline := time.Now().Add(connectWait)
	for _, probe := range []struct {
		url  string
		want int
	}{{"https://" + sharedName + "/derp/probe", http.StatusOK}, {"http://" + sharedName + "/generate_204", http.StatusNoContent}} {
		for {
			res, err := client.Get(probe.url)
			if err == nil {
				res.Body.Close()
				if res.StatusCode == probe.want {
					break
				}
				err = fmt.Errorf("status %s", res.Status)
			}
			// A derpd that exited (a key it cannot write, a port it
			// cannot bind) will not answer later: say so at once.
			state, _ := docker("inspect", "--format", "{{.State.Status}} (exit {{.State.ExitCode}})", container)
			if !strings.HasPrefix(state, "running") || time.Now().After(deadline) {
				t.Fatalf("%s does not answer %s: %v; the container is %s", container, probe.url, err, state)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// awaitRelayed sends from one client to the other until a packet arrives,
// from the sender: the receiver's registration may still be on its way.
func awaitRelayed(t *testing.T, from, to *client) {
	t.Helper()
	deadline := time.Now().Add(pathWait)
	for i := 0; ; i++ {
		payload := fmt.Sprintf("through the image %d", i)
		if err := from.send(to, payload); err != nil {
			t.Fatalf("%v sending: %v", from, err)
		}
		for wait := time.Now().Add(250 * time.Millisecond); time.Now().Before(wait); time.Sleep(5 * time.Millisecond) {
			if src := to.sources(payload); len(src) > 0 {
				if len(src) > 1 || src[0] != from.pub {
					t.Fatalf("%v got %q %d times from %v, want once from %v", to, payload, len(src), src, from.pub)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no packet from %v reached %v within %v", from, to, pathWait)
		}
	}
}
