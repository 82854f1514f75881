package journal

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/derpd/derpd/internal/fuzztest"
)

// FuzzJournalReader feeds the Reader arbitrary bytes: it must never panic,
// every error must name an offset, and no allocation may be sized by a
// length the input claims beyond MaxRecordBytes (a forged length or list
// count is refused before anything is made for it; the fuzzer's memory
// limit would catch one that is not).
func FuzzJournalReader(f *testing.F) {
	for _, seed := range journalSeeds(f) {
		f.Add(seed[0].([]byte))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Open(bytes.NewReader(data))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "journal: offset ") {
				t.Fatalf("Open: error %q names no offset", err)
			}
			return
		}
		for i := 0; ; i++ {
			rec, err := r.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				if !strings.HasPrefix(err.Error(), "journal: offset ") {
					t.Fatalf("record %d: error %q names no offset", i, err)
				}
				return
			}
			// A decoded record encodes again: what the Reader accepts is
			// something the Writer could have written.
			_ = AppendRecord(nil, rec, r.Header().Payloads)
		}
	})
}

// journalSeeds is the committed corpus: a whole journal (with and without
// payloads), one cut short, one with a flipped byte, one with a forged
// length and one that stops without its end record.
func journalSeeds(t testing.TB) map[string][]any {
	plain, _ := writeSample(t, false)
	withPayloads, _ := writeSample(t, true)
	flipped := bytes.Clone(plain)
	flipped[len(flipped)/2] ^= 0x10
	forged := append(AppendHeader(nil, Header{Start: testStart}), 0xff, 0xff, 0xff, 0x7f)
	end := len(AppendEnd(nil))
	return map[string][]any{
		"journal":      {plain},
		"payloads":     {withPayloads},
		"cut":          {plain[:len(plain)/3]},
		"flipped":      {flipped},
		"forged-len":   {forged},
		"unterminated": {plain[:len(plain)-end]},
		"header-only":  {AppendHeader(nil, Header{Start: testStart})},
	}
}

// TestFuzzSeeds keeps the committed corpus equal to journalSeeds;
// DERPD_WRITE_CORPUS=1 writes it.
func TestFuzzSeeds(t *testing.T) {
	fuzztest.CheckSeeds(t, "FuzzJournalReader", journalSeeds(t))
}
