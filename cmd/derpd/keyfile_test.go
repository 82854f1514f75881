package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/derpd/derpd/wire"
)

// dirNames lists a directory, to catch temporary files left behind.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// TestKeyFileCreatedOnceThenKept: the first start makes a key file, mode
// 0600, in a directory it creates (0700); later starts read the same key
// back and write nothing.
func TestKeyFileCreatedOnceThenKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "derper.key")
	k1, created, err := loadOrCreateKey(path)
	if err != nil || !created || k1.IsZero() {
		t.Fatalf("first start: created=%v err=%v", created, err)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, dir: 0o700} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	before, _ := os.ReadFile(path)
	k2, created, err := loadOrCreateKey(path)
	if err != nil || created || k2 != k1 {
		t.Fatalf("second start: same key %v, created=%v, err=%v", k2 == k1, created, err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("reading the key file changed it")
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Fatalf("state directory holds %q, want only the key file", names)
	}
}

// TestCorruptKeyFileIsFatalAndKept: a key file that is there but holds no
// key (empty, torn, not JSON, no key) stops start-up with an error that
// names the file, and the file is left as it was, for the operator to
// look at: replacing it would silently change the node's identity.
func TestCorruptKeyFileIsFatalAndKept(t *testing.T) {
	for name, content := range map[string]string{
		"empty":     "",
		"blank":     "\n \n",
		"torn":      `{"PrivateKey": "privkey:0123`,
		"not json":  "PrivateKey=abc\n",
		"no key":    `{"Other": 1}`,
		"bad key":   `{"PrivateKey": "privkey:xyz"}`,
		"zero key":  `{"PrivateKey": "privkey:0000000000000000000000000000000000000000000000000000000000000000"}`,
		"wrong key": `{"PrivateKey": "nodekey:0000000000000000000000000000000000000000000000000000000000000001"}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "derper.key")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := loadOrCreateKey(path)
			if err == nil {
				t.Fatal("a corrupt key file was accepted")
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			if got, _ := os.ReadFile(path); string(got) != content {
				t.Fatalf("key file rewritten to %q", got)
			}
			if names := dirNames(t, filepath.Dir(path)); len(names) != 1 {
				t.Fatalf("directory holds %q, want only the key file", names)
			}
		})
	}
}

// TestKeyFileWriteFailureKeepsTheOldFile fails each step of writing a key
// file in turn, over an existing one: until the rename, the old file is
// intact and no temporary file is left; a failure after it (syncing the
// directory) leaves the new file, whole.
func TestKeyFileWriteFailureKeepsTheOldFile(t *testing.T) {
	t.Cleanup(func() { keyFileStep = nil })
	oldKey, newKey := wire.GenerateNodePrivate(), wire.GenerateNodePrivate()
	for _, step := range []string{"create", "chmod", "write", "sync", "close", "rename", "sync dir"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "derper.key")
			if err := writeKeyFile(path, oldKey); err != nil {
				t.Fatal(err)
			}
			old, _ := os.ReadFile(path)
			injected := errors.New("injected failure at " + step)
			seen := false
			keyFileStep = func(s string) error {
				if s == step {
					seen = true
					return injected
				}
				return nil
			}
			err := writeKeyFile(path, newKey)
			keyFileStep = nil
			if !seen {
				t.Fatalf("writeKeyFile has no step %q", step)
			}
			if !errors.Is(err, injected) {
				t.Fatalf("writeKeyFile returned %v, want the injected failure", err)
			}
			want := oldKey
			if step == "sync dir" {
				want = newKey
			} else if got, _ := os.ReadFile(path); !bytes.Equal(got, old) {
				t.Fatalf("old key file changed to %q", got)
			}
			k, _, err := loadOrCreateKey(path)
			if err != nil || k != want {
				t.Fatalf("key file afterwards: right key %v, err %v", k == want, err)
			}
			if names := dirNames(t, dir); len(names) != 1 {
				t.Fatalf("directory holds %q after the failure, want only the key file", names)
			}
		})
	}
}

// TestKeyFileFailedCreationLeavesNothing: when a new key cannot be
// written, start-up fails and no file is left at the path, so the next
// start makes a key afresh rather than finding a partial one.
func TestKeyFileFailedCreationLeavesNothing(t *testing.T) {
	t.Cleanup(func() { keyFileStep = nil })
	dir := t.TempDir()
	path := filepath.Join(dir, "derper.key")
	keyFileStep = func(s string) error {
		if s == "sync" {
			return errors.New("disk full")
		}
		return nil
	}
	if _, _, err := loadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("loadOrCreateKey: %v, want the write's failure", err)
	}
	keyFileStep = nil
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("directory holds %q after a failed creation", names)
	}
}

// TestKeyFileInReadOnlyDirectory: a real failure, not an injected one.
// The old file stays as it was. Root ignores directory permissions, so
// the test needs another user; the injected failures above cover the
// same code as root.
func TestKeyFileInReadOnlyDirectory(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root, which may write into a read-only directory; TestKeyFileWriteFailureKeepsTheOldFile covers the same path")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "derper.key")
	if err := writeKeyFile(path, wire.GenerateNodePrivate()); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(path)
	os.Chmod(dir, 0o500)
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	if err := writeKeyFile(path, wire.GenerateNodePrivate()); err == nil {
		t.Fatal("writing into a read-only directory succeeded")
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, old) {
		t.Fatal("old key file changed")
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Fatalf("directory holds %q", names)
	}
}
