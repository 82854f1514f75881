//go:build !linux

package main

import (
	"net"
	"time"
)

// setUserTimeout is Linux-only (TCP_USER_TIMEOUT); elsewhere the kernel's
// own retransmission limits apply.
func setUserTimeout(*net.TCPConn, time.Duration) {}
