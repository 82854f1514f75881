package client

import (
	"reflect"
	"testing"

	"github.com/derpd/derpd/actors/replay"
)

// The replay knows a client actor has ended by the journal's name for its
// reader's last message (an opaque record: the type is this package's
// own). Renaming the type must be done there too.
func TestReaderDoneHasTheNameReplayWatchesFor(t *testing.T) {
	if got := reflect.TypeOf(&readerDone{}).String(); got != replay.ClientReaderDone {
		t.Fatalf("the journal names readerDone %q; actors/replay watches for %q", got, replay.ClientReaderDone)
	}
}
