package leakcheck

import (
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/actors"
)

// blockedUntil starts a goroutine that runs until release is closed.
func blockedUntil(release chan struct{}) {
	go func() { <-release }()
}

func TestAGoroutineStartedAfterTheSnapshotIsALeakUntilItEnds(t *testing.T) {
	before := make(chan struct{})
	defer close(before)
	blockedUntil(before) // running at the snapshot: the baseline
	s := Take(t)
	release := make(chan struct{})
	blockedUntil(release)
	err := s.Wait(20 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "blockedUntil") {
		t.Fatalf("Wait = %v, want the new goroutine's stack", err)
	}
	close(release)
	if err := s.Wait(Wait); err != nil {
		t.Fatalf("after the goroutine ended: %v", err)
	}
}

func TestActorCountsMustComeBack(t *testing.T) {
	live := int64(3)
	count := func() (map[actors.ActorKind]int64, error) {
		return map[actors.ActorKind]int64{actors.ActorClient: live}, nil
	}
	s := Take(t, Actors(count))
	live = 4
	if err := s.Wait(20 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "client 4 (was 3)") {
		t.Fatalf("Wait = %v, want the client count named", err)
	}
	live = 3
	if err := s.Wait(Wait); err != nil {
		t.Fatal(err)
	}
}

func TestIgnoredGoroutinesDoNotCount(t *testing.T) {
	s := Take(t, Ignore("leakcheck.blockedUntil"))
	release := make(chan struct{})
	defer close(release)
	blockedUntil(release)
	if err := s.Wait(20 * time.Millisecond); err != nil {
		t.Fatalf("an ignored goroutine counted: %v", err)
	}
}
