package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat CPU times; it is
// 100 on every Linux this runs on.
const clockTicks = 100

// cpuSeconds is the CPU time (user + system, all threads) a process has
// used so far.
func cpuSeconds(pid int) (float64, error) {
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

// rssKiB is the process's resident set.
func rssKiB(pid int) (int64, error) {
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

// cpuMeter measures cores used over an interval.
type cpuMeter struct {
	pid   int
	start time.Time
	cpu0  float64
}

func startCPU(pid int) *cpuMeter {
	c, _ := cpuSeconds(pid)
	return &cpuMeter{pid: pid, start: time.Now(), cpu0: c}
}

// cores returns average cores used since start.
func (m *cpuMeter) cores() float64 {
	c, _ := cpuSeconds(m.pid)
	return (c - m.cpu0) / time.Since(m.start).Seconds()
}

// machineBusy is the CPU time every process on the machine has used so
// far (all of /proc/stat's time but idle and iowait), in seconds.
func machineBusy() (float64, error) {
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

// machineMeter measures the cores the whole machine used over an
// interval, so that a measurement can say how much of the two cores went
// to processes other than the servers and the load generator.
type machineMeter struct {
	start time.Time
	busy0 float64
}

func startMachine() *machineMeter {
	b, _ := machineBusy()
	return &machineMeter{start: time.Now(), busy0: b}
}

func (m *machineMeter) cores() float64 {
	b, _ := machineBusy()
	return (b - m.busy0) / time.Since(m.start).Seconds()
}
