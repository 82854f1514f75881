package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/derpd/derpd/wire"
)

// keyFile is the JSON config upstream derper keeps its key in. Other keys
// in the file are ignored, so one written by derper works here and back.
type keyFile struct {
	PrivateKey wire.NodePrivate
}

// loadOrCreateKey reads the server key from path, or makes a new one and
// writes it there (mode 0600, atomically, creating parent directories) if
// the file does not exist. Anything else wrong with the file is fatal: a
// server that silently changed its key would strand every client that
// pinned the old one.
func loadOrCreateKey(path string) (wire.NodePrivate, bool, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var kf keyFile
		if err := json.Unmarshal(b, &kf); err != nil {
			return wire.NodePrivate{}, false, fmt.Errorf("config %s: %w", path, err)
		}
		if kf.PrivateKey.IsZero() {
			return wire.NodePrivate{}, false, fmt.Errorf("config %s: no PrivateKey", path)
		}
		return kf.PrivateKey, false, nil
	case errors.Is(err, fs.ErrNotExist):
		k := wire.GenerateNodePrivate()
		if err := writeKeyFile(path, k); err != nil {
			return wire.NodePrivate{}, false, err
		}
		return k, true, nil
	default:
		return wire.NodePrivate{}, false, err
	}
}

func writeKeyFile(path string, k wire.NodePrivate) error {
	b, err := json.MarshalIndent(keyFile{PrivateKey: k}, "", "\t")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
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
