package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The only systemd actions a maintainer script may take: nothing that
// enables or starts derpd. try-restart restarts a running derpd on
// upgrade and leaves a stopped one stopped.
var allowedActions = map[string][]string{
	"systemctl":          {"daemon-reload"},
	"deb-systemd-helper": {"update-state", "purge"},
	"deb-systemd-invoke": {"try-restart", "stop"},
}

// checkMaintainerScripts checks the scripts in the package's control
// directory: their syntax (sh -n), every systemd action they name, and
// what they run in each case dpkg calls them for. They run with a PATH
// of stubs that record their arguments, so nothing on this machine is
// touched: the purge runs with $DPKG_ROOT, as dpkg --root would, in a
// directory of the test's own.
func checkMaintainerScripts(t *testing.T, control string) {
	for _, name := range []string{"postinst", "prerm", "postrm"} {
		path := filepath.Join(control, name)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("%s has mode %v, want 0755", name, fi.Mode().Perm())
		}
		b, _ := os.ReadFile(path)
		if !bytes.HasPrefix(b, []byte("#!/bin/sh\n")) {
			t.Errorf("%s does not start with #!/bin/sh", name)
		}
		if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", name, err, out)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			// A tool run, not looked for.
			line = regexp.MustCompile(`command -v \S+`).ReplaceAllString(line, "")
			if regexp.MustCompile(`(?:^|[\s;&|])(?:invoke-rc\.d|service|update-rc\.d)\s`).MatchString(line) {
				t.Errorf("%s:%d: %q: no init.d tools", name, i+1, line)
			}
			for tool, actions := range allowedActions {
				m := regexp.MustCompile(`(?:^|[\s;&|])` + tool + `\s+(?:--\S+\s+)*(\S+)`).FindStringSubmatch(line)
				if m != nil && !slices.Contains(actions, m[1]) {
					t.Errorf("%s:%d: %q: %s %s is not one of the actions allowed (%v)", name, i+1, strings.TrimSpace(line), tool, m[1], actions)
				}
			}
		}
	}

	// Where systemd runs, the scripts talk to it; this machine may or may
	// not be such a host, and what is expected follows.
	_, err := os.Stat("/run/systemd/system")
	systemdHost := err == nil
	onSystemd := func(calls ...string) []string {
		if systemdHost {
			return calls
		}
		return nil
	}
	join := func(parts ...[]string) []string { return slices.Concat(parts...) }

	t.Run("install", func(t *testing.T) {
		got := runScript(t, control, "postinst", scriptEnv{}, "configure", "")
		want := join([]string{"systemd-sysusers derpd.conf", "deb-systemd-helper update-state derpd.service"},
			onSystemd("systemctl --system daemon-reload"))
		checkCalls(t, got, want)
	})
	t.Run("install without systemd-sysusers", func(t *testing.T) {
		got := runScript(t, control, "postinst", scriptEnv{noSysusers: true, getentExit: 2}, "configure", "")
		want := join([]string{"getent passwd derpd",
			"adduser --system --group --home /nonexistent --no-create-home --gecos derpd DERP relay --quiet derpd",
			"deb-systemd-helper update-state derpd.service"},
			onSystemd("systemctl --system daemon-reload"))
		checkCalls(t, got, want)
	})
	t.Run("upgrade without systemd-sysusers, user present", func(t *testing.T) {
		got := runScript(t, control, "postinst", scriptEnv{noSysusers: true}, "configure", "0.0.0~git20250101.0123456789ab")
		want := join([]string{"getent passwd derpd", "deb-systemd-helper update-state derpd.service"},
			onSystemd("systemctl --system daemon-reload", "deb-systemd-invoke try-restart derpd.service"))
		checkCalls(t, got, want)
	})
	t.Run("install into another root", func(t *testing.T) {
		root := t.TempDir()
		got := runScript(t, control, "postinst", scriptEnv{root: root}, "configure", "")
		checkCalls(t, got, []string{"systemd-sysusers --root=" + root + " derpd.conf", "deb-systemd-helper update-state derpd.service"})
	})
	t.Run("remove", func(t *testing.T) {
		checkCalls(t, runScript(t, control, "prerm", scriptEnv{}, "remove"), onSystemd("deb-systemd-invoke stop derpd.service"))
		checkCalls(t, runScript(t, control, "postrm", scriptEnv{}, "remove"), onSystemd("systemctl --system daemon-reload"))
	})
	t.Run("upgrade leaves derpd running", func(t *testing.T) {
		checkCalls(t, runScript(t, control, "prerm", scriptEnv{}, "upgrade", "0.0.0~git20250101.0123456789ab"), nil)
		checkCalls(t, runScript(t, control, "postrm", scriptEnv{}, "upgrade", "0.0.0~git20250101.0123456789ab"), nil)
	})
	t.Run("purge", func(t *testing.T) {
		root := t.TempDir()
		for _, d := range []string{"var/lib/private/derpd/certs", "var/lib/private/other", "etc/derpd/certs"} {
			os.MkdirAll(filepath.Join(root, d), 0o700)
		}
		os.WriteFile(filepath.Join(root, "var/lib/private/derpd/derper.key"), []byte("{}"), 0o600)
		os.Symlink("private/derpd", filepath.Join(root, "var/lib/derpd"))
		os.WriteFile(filepath.Join(root, "etc/derpd/certs/derp.example.com.crt"), []byte("operator's"), 0o644)

		got := runScript(t, control, "postrm", scriptEnv{root: root}, "purge")
		checkCalls(t, got, []string{"deb-systemd-helper purge derpd.service"})
		for _, gone := range []string{"var/lib/derpd", "var/lib/private/derpd"} {
			if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
				t.Errorf("purge left /%s", gone)
			}
		}
		for _, kept := range []string{"var/lib/private/other", "etc/derpd/certs/derp.example.com.crt"} {
			if _, err := os.Lstat(filepath.Join(root, kept)); err != nil {
				t.Errorf("purge removed /%s, which is not derpd's state: %v", kept, err)
			}
		}
	})
	t.Run("unknown action", func(t *testing.T) {
		for _, name := range []string{"postinst", "prerm", "postrm"} {
			if _, err := runScriptErr(t, control, name, scriptEnv{}, "frobnicate"); err == nil {
				t.Errorf("%s frobnicate succeeded; dpkg expects an error for an action it does not know", name)
			}
		}
	})
}

// scriptEnv is what a maintainer script finds around it.
type scriptEnv struct {
	root       string // $DPKG_ROOT; empty: /
	noSysusers bool   // no systemd-sysusers on PATH
	getentExit int    // getent's exit status: 0 the user exists, 2 it does not
}

// runScript runs a maintainer script as dpkg would, with only stubs on
// PATH (and rm, which the purge needs), and returns the commands it ran.
func runScript(t *testing.T, control, name string, env scriptEnv, args ...string) []string {
	t.Helper()
	calls, err := runScriptErr(t, control, name, env, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return calls
}

func runScriptErr(t *testing.T, control, name string, env scriptEnv, args ...string) ([]string, error) {
	t.Helper()
	stubs := t.TempDir()
	logFile := filepath.Join(t.TempDir(), "calls")
	tools := []string{"adduser", "getent", "systemctl", "deb-systemd-helper", "deb-systemd-invoke"}
	if !env.noSysusers {
		tools = append(tools, "systemd-sysusers")
	}
	for _, tool := range tools {
		exit := "0"
		if tool == "getent" && env.getentExit != 0 {
			exit = string(rune('0' + env.getentExit))
		}
		// Builtins only: the stub's PATH has nothing else.
		stub := "#!/bin/sh\nprintf '%s\\n' \"${0##*/} $*\" >>\"$STUB_LOG\"\nexit " + exit + "\n"
		if err := os.WriteFile(filepath.Join(stubs, tool), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rm, err := exec.LookPath("rm")
	if err != nil {
		t.Fatal(err)
	}
	os.Symlink(rm, filepath.Join(stubs, "rm"))

	cmd := exec.Command("/bin/sh", append([]string{filepath.Join(control, name)}, args...)...)
	cmd.Env = []string{"PATH=" + stubs, "STUB_LOG=" + logFile, "DPKG_MAINTSCRIPT_PACKAGE=derpd",
		"DPKG_MAINTSCRIPT_NAME=" + name, "DPKG_ROOT=" + env.root}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, &cmdError{cmd: name + " " + strings.Join(args, " "), err: err, stdout: string(out)}
	}
	b, _ := os.ReadFile(logFile)
	var calls []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l != "" {
			calls = append(calls, l)
		}
	}
	return calls, nil
}

func checkCalls(t *testing.T, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("the script ran\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}
