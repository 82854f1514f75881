package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/derpd/derpd/wire"
)

// keyFile is the JSON config upstream derper keeps its key in. Other keys
// in the file are ignored, so one written by derper works here and back.
type keyFile struct {
	PrivateKey wire.NodePrivate
}

// loadOrCreateKey reads the server key from path, or makes a new one and
// writes it there (mode 0600, atomically, creating parent directories) if
// the file does not exist. Anything else wrong with the file is fatal and
// names it: a server that silently replaced an unreadable key would lose
// the node's identity and strand every client that pinned the old one.
func loadOrCreateKey(path string) (wire.NodePrivate, bool, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := parseKeyFile(b)
		if err != nil {
			return wire.NodePrivate{}, false, fmt.Errorf("key file %s: %w; derpd will not replace it (that would change the server's key): fix it, or move it away to have a new key made", path, err)
		}
		return k, false, nil
	case errors.Is(err, fs.ErrNotExist):
		k := wire.GenerateNodePrivate()
		if err := writeKeyFile(path, k); err != nil {
			return wire.NodePrivate{}, false, fmt.Errorf("writing a new key file: %w", err)
		}
		return k, true, nil
	default:
		return wire.NodePrivate{}, false, fmt.Errorf("key file: %w", err) // names the file
	}
}

func parseKeyFile(b []byte) (wire.NodePrivate, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return wire.NodePrivate{}, errors.New("the file is empty")
	}
	var kf keyFile
	if err := json.Unmarshal(b, &kf); err != nil {
		return wire.NodePrivate{}, err
	}
	if kf.PrivateKey.IsZero() {
		return wire.NodePrivate{}, errors.New("no PrivateKey")
	}
	return kf.PrivateKey, nil
}

// keyFileStep, when set (by tests), runs before each step of
// writeKeyFile and fails it by returning an error: running as root, as
// the tests here do, no file mode makes a real write fail.
var keyFileStep func(step string) error

func keyStep(step string) error {
	if keyFileStep == nil {
		return nil
	}
	return keyFileStep(step)
}

// writeKeyFile writes k to path so that a crash or power cut at any point
// leaves either no file or a complete one, never an empty or torn one:
// the key goes to a temporary file in the same directory (mode 0600 from
// the start), which is synced to disk, then renamed over path, and the
// directory is synced so that the rename itself survives. If anything
// before the rename fails, the temporary file is removed and whatever
// was at path is untouched.
func writeKeyFile(path string, k wire.NodePrivate) error {
	b, err := json.MarshalIndent(keyFile{PrivateKey: k}, "", "\t")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := keyStep("create"); err != nil {
		return err
	}
	// CreateTemp makes the file with mode 0600, so the key is never
	// readable by others, not even for a moment.
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	renamed := false
	defer func() {
		if !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	for _, step := range []struct {
		name string
		do   func() error
	}{
		{"chmod", func() error { return tmp.Chmod(0o600) }}, // whatever the umask made of it
		{"write", func() error { _, err := tmp.Write(b); return err }},
		{"sync", tmp.Sync},
		{"close", tmp.Close},
		{"rename", func() error { return os.Rename(tmp.Name(), path) }},
	} {
		if err := keyStep(step.name); err != nil {
			return err
		}
		if err := step.do(); err != nil {
			return err
		}
	}
	renamed = true
	if err := keyStep("sync dir"); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		// EINVAL: a file system that cannot sync directories (some
		// network and FUSE ones); the rename is as durable as it gets.
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// loadMeshKey reads a mesh PSK file: surrounding whitespace is trimmed,
// then it must be exactly 64 hex digits. An empty or missing file means no
// mesh key; anything else malformed is fatal, because a typo here would
// otherwise quietly split a region.
func loadMeshKey(path string, explicit bool) (wire.MeshKey, error) {
	if path == "" {
		return wire.MeshKey{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			return wire.MeshKey{}, nil // the default location is optional
		}
		return wire.MeshKey{}, fmt.Errorf("mesh key: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return wire.MeshKey{}, nil
	}
	k, err := wire.ParseMeshKey(s)
	if err != nil {
		return wire.MeshKey{}, fmt.Errorf("mesh key file %s: %w", path, err)
	}
	return k, nil
}

// defaultMeshPSKFile is upstream's default: /home/derp/keys/derp-mesh.key
// if present, else ~/keys/derp-mesh.key if present, else none.
func defaultMeshPSKFile() string {
	for _, p := range []string{"/home/derp/keys/derp-mesh.key", homePath("keys", "derp-mesh.key")} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func defaultCertDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "tailscale", "derper-certs")
}

func defaultSecretsCacheDir() string { return homePath(".cache", "derper-secrets") }

func homePath(elem ...string) string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(append([]string{home}, elem...)...)
}
