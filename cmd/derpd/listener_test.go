package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"golang.org/x/crypto/acme/autocert"
	"golang.org/x/sys/unix"
)

func TestAcceptedSocketsGetTCPOptions(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_USER_TIMEOUT and TCP_KEEPIDLE are Linux socket options")
	}
	ln, err := listen("127.0.0.1:0", 7*time.Minute, 9*time.Second, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, _ := c.(*net.TCPConn).SyscallConn()
	var userTimeout, keepIdle, keepAlive int
	rc.Control(func(fd uintptr) {
		userTimeout, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		keepIdle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		keepAlive, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	})
	if userTimeout != 9000 {
		t.Errorf("TCP_USER_TIMEOUT = %d ms, want 9000", userTimeout)
	}
	if keepAlive != 1 || keepIdle != 7*60 {
		t.Errorf("keepalive on=%d idle=%ds, want on, 420 s", keepAlive, keepIdle)
	}
}

func TestAcceptLimitClosesExcessAndKeepsServing(t *testing.T) {
	ln, err := listen("127.0.0.1:0", 0, 0, 1, 2) // 1/s, burst 2
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range 6 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// Two pass (the burst); the rest are closed and skipped, and Accept
	// keeps going rather than failing.
	for i := range 2 {
		c, err := ln.Accept()
		if err != nil {
			t.Fatalf("accept %d: %v", i, err)
		}
		c.Close()
	}
	// Keep knocking until a token has refilled (one per second): Accept
	// must skip the over-limit sockets and return the first allowed one,
	// never an error.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
				defer c.Close()
			}
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if ln.accepted.Load() != 3 || ln.rejected.Load() < 3 {
		t.Fatalf("accepted %d rejected %d", ln.accepted.Load(), ln.rejected.Load())
	}
}

func TestACMEHTTPChallengesOnPort80(t *testing.T) {
	src := &acmeCerts{m: &autocert.Manager{Prompt: autocert.AcceptTOS, HostPolicy: acmeHostPolicy("derp.example.com"), Cache: autocert.DirCache(t.TempDir())}}
	s := &server{opts: &options{hostname: "derp.example.com"}}
	h := src.HTTPHandler(s.port80Handler(http.NotFoundHandler()))
	req := httptest.NewRequest("GET", "/.well-known/acme-challenge/token", nil)
	req.Host = "derp.example.com"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code == http.StatusFound {
		t.Fatal("ACME challenge path redirected instead of answered by the ACME handler")
	}
	req = httptest.NewRequest("GET", "/other", nil)
	req.Host = "derp.example.com"
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusFound {
		t.Fatalf("other path: %d, want the HTTPS redirect", rec.Code)
	}
}
