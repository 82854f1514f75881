//go:build !unix

package wire

import "io"

type rawSource struct{}

func newRawSource(io.Reader) *rawSource { return nil }

func (*rawSource) read(*Reader) (int, error) { panic("unreachable") }
func (*rawSource) readFull([]byte) error     { panic("unreachable") }
