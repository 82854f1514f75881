package fuzztest

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	clientAddr = netip.MustParseAddrPort("192.0.2.1:1234")
	serverAddr = netip.MustParseAddrPort("192.0.2.2:443")
)

func TestPipeHalfCloseAndClose(t *testing.T) {
	a, b := Pipe(clientAddr, serverAddr)
	if a.LocalAddr().String() != "192.0.2.1:1234" || b.RemoteAddr().String() != "192.0.2.1:1234" {
		t.Fatalf("addresses %v %v", a.LocalAddr(), b.RemoteAddr())
	}
	a.Write([]byte("hello"))
	a.CloseWrite()
	if _, err := a.Write([]byte("more")); err == nil {
		t.Fatal("wrote after CloseWrite")
	}
	b.SetReadSizes([]int{2, 0})
	var got []byte
	var sizes []int
	buf := make([]byte, 10)
	for {
		n, err := b.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n)
	}
	if string(got) != "hello" || len(sizes) != 3 || sizes[0] != 2 || sizes[1] != 1 || sizes[2] != 2 {
		t.Fatalf("read %q in pieces %v, want hello in 2, 1, 2", got, sizes)
	}
	// The half-closed end still receives.
	b.Write([]byte("back"))
	if n, err := a.Read(buf); err != nil || string(buf[:n]) != "back" {
		t.Fatalf("read %q, %v after half-close", buf[:n], err)
	}
	b.Close()
	select {
	case <-b.Closed():
	default:
		t.Fatal("Closed not closed by Close")
	}
	if _, err := b.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed end: %v", err)
	}
	if _, err := a.Read(buf); err != io.EOF {
		t.Fatalf("read from a closed peer: %v, want EOF", err)
	}
	if _, err := a.Write([]byte("x")); err == nil {
		t.Fatal("wrote to a closed peer")
	}
}

// net/http ends its background read before a Hijack by setting a read
// deadline in the past; a reader waiting must wake up.
func TestPipeDeadlineWakesReader(t *testing.T) {
	a, _ := Pipe(clientAddr, serverAddr)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Read(make([]byte, 1))
		errc <- err
	}()
	a.SetReadDeadline(time.Unix(1, 0))
	if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read returned %v, want a deadline error", err)
	}
	var ne net.Error
	if err := func() error { _, err := a.Read(nil); return err }(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("expired read: %v is not a net.Error timeout", err)
	}
	a.SetReadDeadline(time.Time{})
	b2, c2 := Pipe(clientAddr, serverAddr)
	c2.Write([]byte("z"))
	if n, err := b2.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Fatalf("read %d, %v", n, err)
	}
}

func TestListener(t *testing.T) {
	l := NewListener(serverAddr)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := l.Dial(clientAddr, []int{1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

// The format go test reads, for the types the targets use.
func TestMarshal(t *testing.T) {
	got := string(Marshal([]byte("a\x00\xff"), "s", uint16(7), true))
	want := "go test fuzz v1\n[]byte(\"a\\x00\\xff\")\nstring(\"s\")\nuint16(7)\nbool(true)\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// Every fuzz target of the module is in the Makefile's FUZZ_TARGETS, so
// that make test-fuzz and make fuzz run it, and every entry there names
// a target that exists: go test -fuzz with a pattern that matches
// nothing succeeds without fuzzing anything.
func TestMakefileListsEveryTarget(t *testing.T) {
	root := filepath.Join("..", "..")
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^FUZZ_TARGETS = ((?:.*\\\n)*.*)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("no FUZZ_TARGETS in the Makefile")
	}
	listed := strings.Fields(strings.ReplaceAll(string(m[1]), "\\", " "))
	slices.Sort(listed)
	var found []string
	fuzzFunc := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(\w+ \*testing\.F\)`)
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "interop" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir // interop is a module of its own
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		for _, f := range fuzzFunc.FindAllSubmatch(src, -1) {
			found = append(found, "./"+filepath.ToSlash(rel)+"/:"+string(f[1]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(found)
	if !slices.Equal(listed, found) {
		t.Fatalf("FUZZ_TARGETS lists\n  %v\nthe module has\n  %v", listed, found)
	}
}
