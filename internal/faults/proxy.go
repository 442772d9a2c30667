package faults

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// Proxy forwards TCP connections from a 127.0.0.1 port to an upstream
// address and misbehaves on demand, for every connection at once (those open
// now and those opened later): it can forward normally (Pass), late (Slow),
// not at all while keeping every connection open (Stall: a half-open path,
// no FIN, no RST), and close everything with a reset (Cut).
//
// It is hand-written rather than toxiproxy (github.com/Shopify/toxiproxy/v2
// v2.12.0, which works as a library here): used in process, toxiproxy wants
// its API server, a Prometheus metrics container and a zerolog logger, takes
// its faults as JSON, and adds five direct dependencies to go.mod; and its
// "timeout" toxic drops the bytes of a stalled path, where a real half-open
// path holds them (TCP flow control) and delivers them if it heals. The three
// behaviours needed here are the code below.
type Proxy struct {
	lis      net.Listener
	upstream string

	mu      sync.Mutex
	mode    mode
	latency time.Duration
	changed chan struct{} // closed and replaced on every change of mode
	links   map[*link]struct{}
	closed  bool
	wg      sync.WaitGroup
}

type mode uint8

const (
	pass mode = iota
	slow
	stall
)

// chunkSize is what one read moves; a stalled link holds at most
// chunkBacklog of them per direction before it stops reading, so the
// sender's kernel buffers fill up as on a real stalled path.
const (
	chunkSize    = 32 << 10
	chunkBacklog = 16
)

// NewProxy starts a proxy to upstream (host:port) on a free 127.0.0.1 port,
// forwarding normally.
func NewProxy(upstream string) (*Proxy, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy to %s: %w", upstream, err)
	}
	p := &Proxy{lis: lis, upstream: upstream, changed: make(chan struct{}), links: map[*link]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Pass makes the proxy forward bytes as they come, on every connection.
func (p *Proxy) Pass() { p.set(pass, 0) }

// Slow makes the proxy deliver every byte d after it arrived, in both
// directions (a round trip takes 2d longer), on every connection.
func (p *Proxy) Slow(d time.Duration) { p.set(slow, d) }

// Stall makes the proxy stop moving bytes, both ways, on every connection,
// without closing any: a half-open path. New connections are accepted and
// stall too. Bytes already read are held, and delivered if Pass or Slow
// comes next; Cut discards them.
func (p *Proxy) Stall() { p.set(stall, 0) }

// Cut resets every open connection (RST to both ends). The mode stays: in
// Pass, new connections work at once.
func (p *Proxy) Cut() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.reset()
	}
}

// Close stops accepting, resets every connection and waits for the proxy's
// goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.lis.Close()
	p.Cut()
	p.wg.Wait()
	return err
}

func (p *Proxy) set(m mode, latency time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode, p.latency = m, latency
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proxy) state() (mode, time.Duration, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.latency, p.changed
}

func (p *Proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return // closed
		}
		up, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
		if err != nil {
			// The upstream is down: the client sees its connection reset, as
			// it would see a refused one.
			resetConn(c)
			continue
		}
		l := &link{a: c, b: up, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			l.reset()
			return
		}
		p.links[l] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() {
			var dirs sync.WaitGroup
			dirs.Go(func() { p.forward(l, up, c) })
			dirs.Go(func() { p.forward(l, c, up) })
			dirs.Wait()
			p.mu.Lock()
			delete(p.links, l)
			p.mu.Unlock()
		})
	}
}

// link is one proxied connection: the client's end a, the upstream's b.
type link struct {
	a, b net.Conn
	once sync.Once
	done chan struct{} // closed when the link is torn down
}

func (l *link) reset() {
	l.once.Do(func() {
		close(l.done)
		resetConn(l.a)
		resetConn(l.b)
	})
}

// resetConn closes c with an RST rather than a FIN, as a dead peer's
// host or a middlebox that dropped the flow would.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

type chunk struct {
	at   time.Time
	data []byte
}

// forward moves bytes from src to dst, obeying the mode, until either end
// fails; then it tears the whole link down (a half-closed connection is
// closed both ways, which neither Postgres nor Redis clients mind).
func (p *Proxy) forward(l *link, dst, src net.Conn) {
	chunks := make(chan chunk, chunkBacklog)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, chunkSize)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case chunks <- chunk{at: time.Now(), data: buf[:n]}:
				case <-l.done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	defer l.reset()
	for c := range chunks {
		if !p.hold(l, c.at) {
			return
		}
		if _, err := dst.Write(c.data); err != nil {
			return
		}
	}
}

// hold waits until a chunk read at `at` may be written under the current
// mode; false if the link was torn down meanwhile.
func (p *Proxy) hold(l *link, at time.Time) bool {
	for {
		m, latency, changed := p.state()
		if m == pass {
			return true
		}
		var timer *time.Timer
		var due <-chan time.Time // nil while stalled: wait for a change of mode
		if m == slow {
			d := time.Until(at.Add(latency))
			if d <= 0 {
				return true
			}
			timer = time.NewTimer(d)
			due = timer.C
		}
		select {
		case <-due:
			return true
		case <-changed:
		case <-l.done:
			return false
		}
		if timer != nil {
			timer.Stop()
		}
	}
}
