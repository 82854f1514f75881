// Command debugshots takes the screenshots of derpd's debug pages that
// docs/debug/ shows: it starts a two-node region on loopback, gives it
// clients, traffic across the mesh, a refused handshake and a packet to
// nobody, and renders every page in headless Chromium (Debian's
// chromium), as an operator's browser would.
//
//	cd interop && go run ./cmd/debugshots            # writes ../docs/debug/*.png
//	cd interop && go run ./cmd/debugshots -out /tmp  # somewhere else
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
	"tailscale.com/types/key"
)

func main() {
	out := flag.String("out", filepath.Join(harness.ModuleDir(), "..", "docs", "debug"), "directory for the PNG files")
	width := flag.Int("width", 1400, "browser window width")
	flag.Parse()
	if err := run(*out, *width); err != nil {
		log.Fatal(err)
	}
}

func run(out string, width int) error {
	defer harness.RemoveBinaries()
	browser, err := exec.LookPath("chromium")
	if err != nil {
		return fmt.Errorf("needs Debian's chromium: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "debugshots")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	r, err := harness.NewRegion(dir, harness.Derpd, harness.Derpd)
	if err != nil {
		return err
	}
	for i := range r.Nodes {
		srv, err := harness.Launch(r.Options(i, nil), filepath.Join(dir, fmt.Sprint("node", i)))
		if err != nil {
			return err
		}
		defer srv.Stop()
		r.Nodes[i].Server = srv
	}

	// Some life: clients on both nodes talking across the mesh and
	// locally, and two kinds of trouble.
	var clients []*harness.Client
	for i := range 4 {
		c, err := r.Dial(i%2, key.NodePrivate{})
		if err != nil {
			return err
		}
		defer c.Close()
		clients = append(clients, c)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			for j, c := range clients {
				c.Send(clients[(j+1+i%3)%len(clients)].Pub, make([]byte, 1200))
			}
		}
	}()
	if err := trouble(r); err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // a few collections of the flows actor

	n1 := r.Nodes[0]
	_, port, _ := net.SplitHostPort(n1.Addr())
	base := "https://" + n1.Name + ":" + port
	someKey := url.QueryEscape(clients[0].Pub.String())
	for _, p := range []struct{ file, path string }{
		{"index", "/debug/"},
		{"actors", "/debug/actors"},
		{"flows", "/debug/flows"},
		{"rejects", "/debug/rejects"},
		{"peer", "/debug/peer?key=" + someKey},
		{"mesh", "/debug/mesh"},
	} {
		file := filepath.Join(out, p.file+".png")
		if err := shoot(browser, base+p.path, n1.Name, file, width); err != nil {
			return fmt.Errorf("%s: %w", p.path, err)
		}
		log.Printf("%s: %s", p.path, file)
	}
	return nil
}

// trouble gives the rejects page something to show: a handshake whose box
// does not open, and a packet to a key nobody has.
func trouble(r *harness.Region) error {
	srv := r.Nodes[0].Server
	c, err := r.Dial(0, key.NodePrivate{})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Send(key.NewNode().Public(), []byte("to nobody")); err != nil {
		return err
	}
	conn, err := tls.Dial("tcp", srv.Addr(), &tls.Config{ServerName: srv.Opts.Hostname, InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write(append([]byte("GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Fast-Start: 1\r\n\r\n"),
		wire.AppendHeader(nil, wire.FrameClientInfo, 100)...))
	if err == nil {
		conn.Write(make([]byte, 100)) // a zero key and a box that does not open
		conn.Read(make([]byte, 1))
	}
	return nil
}

// shoot renders url in headless Chromium into file. The page is reached
// by name (the server refuses TLS for any other), mapped to loopback; the
// region's CA is the tool's own.
func shoot(browser, url, host, file string, width int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	profile, err := os.MkdirTemp("", "debugshots-chromium")
	if err != nil {
		return err
	}
	defer os.RemoveAll(profile)
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--ignore-certificate-errors", "--host-resolver-rules=MAP "+host+" 127.0.0.1",
		"--user-data-dir="+profile, fmt.Sprintf("--window-size=%d,900", width), "--screenshot="+file, url)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, b)
	}
	return nil
}
