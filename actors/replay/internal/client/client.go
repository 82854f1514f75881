// Package client stands in for actors/client in actors/replay's tests:
// its ReaderDone is journaled under the same opaque name as the message
// a connection's reader sends its client actor when the connection ends,
// "*client.readerDone", which the replay watches for (the real type is
// actors/client's own, out of a test's reach).
package client

type readerDone struct{}

// ReaderDone is a message the journal records as "*client.readerDone".
var ReaderDone any = &readerDone{}
