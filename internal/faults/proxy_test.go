package faults

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echo serves an echo on a free port until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return lis.Addr().String()
}

func newTestProxy(t *testing.T, upstream string) (*Proxy, net.Conn) {
	t.Helper()
	p, err := NewProxy(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return p, c
}

// roundTrip writes msg and reads it back within limit.
func roundTrip(c net.Conn, msg string, limit time.Duration) (string, error) {
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	return readN(c, len(msg), limit)
}

func readN(c net.Conn, n int, limit time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(limit))
	buf := make([]byte, n)
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

func TestProxyPassAndSlow(t *testing.T) {
	p, c := newTestProxy(t, echo(t))
	if got, err := roundTrip(c, "ping", 5*time.Second); err != nil || got != "ping" {
		t.Fatalf("pass: %q, %v", got, err)
	}
	p.Slow(100 * time.Millisecond)
	start := time.Now()
	if got, err := roundTrip(c, "slow", 5*time.Second); err != nil || got != "slow" {
		t.Fatalf("slow: %q, %v", got, err)
	}
	if rt := time.Since(start); rt < 200*time.Millisecond {
		t.Errorf("slow round trip took %v, want at least 2 × 100ms", rt)
	}
}

// A stalled proxy keeps the connection open and moves nothing; the bytes it
// holds arrive once it passes again, in order.
func TestProxyStallHoldsBytes(t *testing.T) {
	p, c := newTestProxy(t, echo(t))
	if _, err := roundTrip(c, "warm", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stall()
	if _, err := io.WriteString(c, "held"); err != nil {
		t.Fatal(err)
	}
	if _, err := readN(c, 4, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read through a stalled proxy: %v, want a timeout (nothing arrives, nothing fails)", err)
	}
	p.Pass()
	if got, err := readN(c, 4, 5*time.Second); err != nil || got != "held" {
		t.Fatalf("after Pass: %q, %v, want the held bytes", got, err)
	}
}

func TestProxyCutResets(t *testing.T) {
	p, c := newTestProxy(t, echo(t))
	if _, err := roundTrip(c, "warm", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stall()
	p.Cut()
	if _, err := readN(c, 1, 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after Cut: %v, want the connection closed", err)
	}
	// A new connection after Cut and Pass works.
	p.Pass()
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := roundTrip(c2, "again", 5*time.Second); err != nil || got != "again" {
		t.Fatalf("new connection after Cut: %q, %v", got, err)
	}
}

func TestProxyUpstreamDown(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	p, err := NewProxy(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return // reset before connect returned: as good as refused
	}
	defer c.Close()
	if _, err := readN(c, 1, 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read through a proxy whose upstream is down: %v, want the connection closed", err)
	}
}
