package procstat

import (
	"os"
	"testing"
)

func TestSelf(t *testing.T) {
	pid := os.Getpid()
	rss, err := RSSKiB(pid)
	if err != nil || rss <= 0 {
		t.Fatalf("RSSKiB(self) = %d, %v", rss, err)
	}
	// Burn CPU until the kernel has counted some: a tick is 10 ms.
	c0, err := CPUSeconds(pid)
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for {
		c1, err := CPUSeconds(pid)
		if err != nil {
			t.Fatal(err)
		}
		if c1 > c0 {
			break
		}
		for i := range 1_000_000 {
			x += i
		}
	}
	_ = x
	busy, err := MachineBusy()
	if err != nil || busy <= 0 {
		t.Fatalf("MachineBusy() = %v, %v", busy, err)
	}
	if _, err := LoadAverage(); err != nil {
		t.Fatal(err)
	}
}

func TestNoSuchProcess(t *testing.T) {
	// PIDs are below 2^22 on Linux.
	if _, err := RSSKiB(1 << 30); err == nil {
		t.Error("RSSKiB of a process that cannot exist: no error")
	}
	if _, err := CPUSeconds(1 << 30); err == nil {
		t.Error("CPUSeconds of a process that cannot exist: no error")
	}
}
