// Package procstat reads what Linux's /proc says about processes: CPU
// time, resident memory, and the whole machine's busy time. The tools
// that run servers side by side (derpbench, soak) measure both servers
// and themselves with it, so both are measured alike.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat CPU times; it is
// 100 on every Linux this runs on.
const clockTicks = 100

// CPUSeconds is the CPU time (user + system, all threads) a process has
// used so far.
func CPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name, which may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat %q", b)
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / clockTicks, nil
}

// RSSKiB is the process's resident set.
func RSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// CPUMeter measures the cores a process used over an interval.
type CPUMeter struct {
	pid   int
	start time.Time
	cpu0  float64
}

// StartCPU starts measuring pid's CPU from now.
func StartCPU(pid int) *CPUMeter {
	c, _ := CPUSeconds(pid)
	return &CPUMeter{pid: pid, start: time.Now(), cpu0: c}
}

// Cores returns average cores used since the start.
func (m *CPUMeter) Cores() float64 {
	c, _ := CPUSeconds(m.pid)
	return (c - m.cpu0) / time.Since(m.start).Seconds()
}

// MachineBusy is the CPU time every process on the machine has used so
// far (all of /proc/stat's time but idle and iowait), in seconds.
func MachineBusy() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	busy := 0.0
	for i, v := range f[1:] {
		// guest and guest_nice (fields 9 and 10) are already in user and
		// nice.
		if i == 3 || i == 4 || i >= 8 {
			continue // idle, iowait
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / clockTicks, nil
}

// MachineMeter measures the cores the whole machine used over an
// interval, so that a measurement can say how much of the two cores went
// to processes other than the servers and the load generator.
type MachineMeter struct {
	start time.Time
	busy0 float64
}

// StartMachine starts measuring the machine from now.
func StartMachine() *MachineMeter {
	b, _ := MachineBusy()
	return &MachineMeter{start: time.Now(), busy0: b}
}

// Cores returns the average cores the machine was busy since the start.
func (m *MachineMeter) Cores() float64 {
	b, _ := MachineBusy()
	return (b - m.busy0) / time.Since(m.start).Seconds()
}

// RaiseFileLimit lifts the open-file limit to its hard maximum, for this
// process and the servers it starts (thousands of connections, each an
// open file on both ends).
func RaiseFileLimit() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) == nil {
		r.Cur = r.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}

// LoadAverage is the machine's one-minute load average: how many
// threads wanted a core, on average. Above the number of cores, every
// process on the machine waited for its turn, the measured ones too.
func LoadAverage() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("unexpected /proc/loadavg %q", b)
	}
	return strconv.ParseFloat(f[0], 64)
}
