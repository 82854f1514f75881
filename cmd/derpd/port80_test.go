package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestPort80Handler(t *testing.T) {
	s := &server{opts: &options{hostname: "derp.example.com"}}
	mainHit := false
	h := s.port80Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { mainHit = true }))
	do := func(method, target, remote string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, target, nil)
		req.Host = "derp.example.com:80"
		req.RemoteAddr = remote
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := do("GET", "/derp?x=1", "192.0.2.1:5"); rec.Code != 302 || rec.Header().Get("Location") != "https://derp.example.com/derp?x=1" {
		t.Fatalf("GET /derp: %d %q", rec.Code, rec.Header().Get("Location"))
	}
	if rec := do("POST", "/x", "192.0.2.1:5"); rec.Code != 400 {
		t.Fatalf("POST: %d", rec.Code)
	}
	if rec := do("GET", "/generate_204", "192.0.2.1:5"); rec.Code != 204 {
		t.Fatalf("/generate_204: %d", rec.Code)
	}
	if rec := do("GET", "/", "127.0.0.1:5"); rec.Header().Get("Location") != "https://derp.example.com/debug/" {
		t.Fatalf("/ from loopback: %q", rec.Header().Get("Location"))
	}
	if rec := do("GET", "/", "192.0.2.1:5"); rec.Header().Get("Location") != "https://derp.example.com/" {
		t.Fatalf("/ from elsewhere: %q", rec.Header().Get("Location"))
	}
	req := httptest.NewRequest("GET", "/derp", nil)
	req.Host = "[2001:db8::1]:80"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if got := rec.Header().Get("Location"); got != "https://[2001:db8::1]/derp" {
		t.Fatalf("redirect for an IPv6 host: %q", got)
	}
	do("GET", "/debug/varz", "127.0.0.1:5")
	if !mainHit {
		t.Fatal("/debug not passed to the main router")
	}
}
