package invalidate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/tiers"
)

func TestMain(m *testing.M) { devtest.Main(m) }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// sharedRedis is what several fake fences share: the coverage key.
type sharedRedis struct {
	mu       sync.Mutex
	coverage int64
}

// fakeFence records what the invalidator asks of the fence.
type fakeFence struct {
	redis *sharedRedis

	mu      sync.Mutex
	batches []tiers.Batch
	states  []tiers.ListenerState
	resyncs int
	losses  int
	failing bool // Apply fails
}

func newFakeFence(r *sharedRedis) *fakeFence { return &fakeFence{redis: r} }

func (f *fakeFence) Apply(_ context.Context, b tiers.Batch) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		f.losses++
		return 0, errors.New("redis down")
	}
	f.batches = append(f.batches, b)
	return int64(b.Len()), nil
}

func (f *fakeFence) NoteLoss() { f.mu.Lock(); f.losses++; f.mu.Unlock() }

func (f *fakeFence) Heard(tiers.Batch) {}

func (f *fakeFence) Resync(context.Context, string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resyncs++
	return nil
}

func (f *fakeFence) SetListener(s tiers.ListenerState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.states); n == 0 || f.states[n-1] != s {
		f.states = append(f.states, s)
	}
}

func (f *fakeFence) setState(s tiers.ListenerState) { f.SetListener(s) }

func (f *fakeFence) state() tiers.ListenerState {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.states) == 0 {
		return tiers.ListenerLost
	}
	return f.states[len(f.states)-1]
}

func (f *fakeFence) Coverage(context.Context) (int64, error) {
	f.redis.mu.Lock()
	defer f.redis.mu.Unlock()
	return f.redis.coverage, nil
}

func (f *fakeFence) AdvanceCoverage(ctx context.Context, at int64) (bool, error) {
	if f.state() != tiers.ListenerCovering {
		return false, nil
	}
	return true, f.SetCoverage(ctx, at)
}

func (f *fakeFence) SetCoverage(_ context.Context, at int64) error {
	f.redis.mu.Lock()
	defer f.redis.mu.Unlock()
	f.redis.coverage = max(f.redis.coverage, at)
	return nil
}

func (f *fakeFence) counts() (resyncs, losses int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resyncs, f.losses
}

func (f *fakeFence) sawState(s tiers.ListenerState) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.states, s)
}

// dropped reports whether any batch applied so far names user.
func (f *fakeFence) droppedUser(user string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.batches {
		if slices.Contains(b.Users, user) {
			return true
		}
	}
	return false
}

var _ fence = (*fakeFence)(nil)

func TestHandle(t *testing.T) {
	k1, k2 := strings.Repeat("ab", 32), strings.Repeat("cd", 32)
	const u1, u2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-22222222222A"
	for _, tt := range []struct {
		name     string
		payloads []string
		want     tiers.Batch
		losses   int
		vouch    int64
	}{
		{"users", []string{"u:" + u1 + "," + u2}, tiers.Batch{Users: []string{u1, strings.ToLower(u2)}}, 0, 0},
		{"sessions and new tokens together", []string{"s:" + k1, "i:" + k2 + "," + k1},
			tiers.Batch{Keys: []string{tiers.Key(k1)}, NewKeys: []string{tiers.Key(k2), tiers.Key(k1)}}, 0, 0},
		{"truncate resyncs", []string{"t"}, tiers.Batch{}, 1, 0},
		{"version 1: a session drop becomes its user's", []string{"s:33333333-3333-4333-8333-333333333333:" + u1}, tiers.Batch{Users: []string{u1}}, 0, 0},
		{"version 1: an insert needs a query: resync", []string{"i:33333333-3333-4333-8333-333333333333"}, tiers.Batch{}, 1, 0},
		{"not ours: ignored", []string{"x:1", "u:not-a-uuid", "s:short"}, tiers.Batch{}, 0, 0},
		{"own heartbeat vouched after what came before it", []string{"u:" + u1, "h:me:500", "h:me:400"}, tiers.Batch{Users: []string{u1}}, 0, 500},
		{"another's heartbeat is not, a joiner's is", []string{"h:other:900", "h:new:700:j1"}, tiers.Batch{}, 0, 700},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeFence(&sharedRedis{})
			v := New(f, Options{}, discard)
			v.id = "me"
			f.setState(tiers.ListenerCovering)
			if err := v.Handle(t.Context(), tt.payloads); err != nil {
				t.Fatal(err)
			}
			var got tiers.Batch // revocations in one batch, then new keys
			for _, b := range f.batches {
				got.Users = append(got.Users, b.Users...)
				got.Keys = append(got.Keys, b.Keys...)
				got.NewKeys = append(got.NewKeys, b.NewKeys...)
			}
			if !slices.Equal(got.Users, tt.want.Users) || !slices.Equal(got.Keys, tt.want.Keys) || !slices.Equal(got.NewKeys, tt.want.NewKeys) {
				t.Errorf("applied %+v, want %+v", got, tt.want)
			}
			if _, losses := f.counts(); losses != tt.losses {
				t.Errorf("%d losses, want %d", losses, tt.losses)
			}
			if c, _ := f.Coverage(t.Context()); c != tt.vouch {
				t.Errorf("vouched for %d, want %d", c, tt.vouch)
			}
		})
	}

	t.Run("a failed apply vouches for nothing", func(t *testing.T) {
		f := newFakeFence(&sharedRedis{})
		f.failing = true
		v := New(f, Options{}, discard)
		v.id = "me"
		f.setState(tiers.ListenerCovering)
		if err := v.Handle(t.Context(), []string{"u:" + u1, "h:me:500"}); err == nil {
			t.Error("a failed apply reported no error")
		}
		if c, _ := f.Coverage(t.Context()); c != 0 {
			t.Errorf("vouched for %d after a failed apply, want nothing", c)
		}
	})

	t.Run("revocations go before the new tokens of a burst", func(t *testing.T) {
		f := newFakeFence(&sharedRedis{})
		v := New(f, Options{}, discard)
		var burst []string
		for i := range 2 * newKeyChunk {
			burst = append(burst, fmt.Sprintf("%064x", i))
		}
		var w work
		v.take([]string{"i:" + strings.Join(burst[:newKeyChunk], ","), "i:" + strings.Join(burst[newKeyChunk:], ",")}, &w)
		if err := v.step(t.Context(), &w); err != nil { // one chunk of the burst
			t.Fatal(err)
		}
		v.take([]string{"u:" + u1}, &w) // a ban arrives meanwhile
		if err := v.step(t.Context(), &w); err != nil {
			t.Fatal(err)
		}
		if len(f.batches) != 3 || !slices.Equal(f.batches[1].Users, []string{u1}) {
			t.Errorf("batches %d, second %+v: want the ban applied before the rest of the burst", len(f.batches), f.batches[1])
		}
	})
}

// startInvalidator runs an invalidator on dbURL until the test ends.
func startInvalidator(t *testing.T, f *fakeFence, dbURL string) *Invalidator {
	t.Helper()
	v := New(f, Options{DatabaseURL: dbURL, Storage: tiers.TokenStorageHash, Timeout: 2 * time.Second, Heartbeat: 100 * time.Millisecond}, discard)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = v.Run(ctx, true) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-v.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("the listener never covered")
	}
	return v
}

func migrated(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if err := schema.Migrate(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	return conn
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	devtest.Eventually(t, 20*time.Second, func() error {
		if !cond() {
			return errors.New(what)
		}
		return nil
	})
}

// The listener applies what the triggers send, and hands over coverage: the
// first instance bumps (nobody covered before it), the second does not, and
// one that starts after a gap nobody covered does.
func TestListenerCoverage(t *testing.T) {
	dbURL := devtest.Database(t)
	conn := migrated(t, dbURL)
	shared := &sharedRedis{}

	first := newFakeFence(shared)
	startInvalidator(t, first, dbURL)
	if r, _ := first.counts(); r != 1 {
		t.Errorf("first instance: %d resyncs, want 1", r)
	}
	const uid = "11111111-1111-4111-8111-111111111111"
	if _, err := conn.Exec(t.Context(), `INSERT INTO platform.users (id, email) VALUES ($1, 'a@x')`, uid); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), `UPDATE platform.users SET banned_until = 'infinity' WHERE id = $1`, uid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ban was not applied", func() bool { return first.droppedUser(uid) })

	second := newFakeFence(shared)
	startInvalidator(t, second, dbURL)
	if r, _ := second.counts(); r != 0 {
		t.Errorf("second instance, started while the first covers: %d resyncs, want 0", r)
	}

	gapped := newFakeFence(&sharedRedis{coverage: 1}) // a coverage long past
	startInvalidator(t, gapped, dbURL)
	if r, _ := gapped.counts(); r != 1 {
		t.Errorf("instance after a gap: %d resyncs, want 1", r)
	}
}

// A killed LISTEN connection is noticed at once and the listener covers
// again; Postgres going away is told apart from a lost connection, and the
// listener covers again when it is back.
func TestListenerLossAndPostgresDown(t *testing.T) {
	pg := devtest.OwnPostgres(t)
	dbURL, err := pg.CreateDatabase(t.Context(), "inval")
	if err != nil {
		t.Fatal(err)
	}
	migrated(t, dbURL)
	f := newFakeFence(&sharedRedis{})
	startInvalidator(t, f, dbURL)

	admin, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var killed int
	if err := admin.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1`, ListenerApplicationName).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d listeners (%v), want 1", killed, err)
	}
	waitFor(t, "the listener did not report the loss", func() bool { return f.sawState(tiers.ListenerLost) })
	waitFor(t, "the listener did not cover again", func() bool { return f.state() == tiers.ListenerCovering })
	admin.Close(context.Background())

	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "postgres down was not recognised", func() bool { return f.state() == tiers.ListenerPostgresDown })
	if err := pg.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the listener did not cover after postgres came back", func() bool { return f.state() == tiers.ListenerCovering })
}

// A LISTEN connection that stops delivering without closing (a half-open
// TCP connection, a host gone without a reset) is noticed by the missing
// heartbeats within 3 heartbeats and a watchdog tick.
func TestListenerHalfOpen(t *testing.T) {
	dbURL := devtest.Database(t)
	migrated(t, dbURL)
	p := newStallProxy(t, dbURL)
	f := newFakeFence(&sharedRedis{})
	v := startInvalidator(t, f, p.url)
	start := time.Now()
	p.stall()
	waitFor(t, "a half-open listener was not noticed", func() bool { return f.state() == tiers.ListenerLost })
	noticed := time.Since(start)
	if bound := 3*v.opts.Heartbeat + watchdogTick + 500*time.Millisecond; noticed > bound {
		// Not a timing assertion on a loaded machine: a bound this loose
		// only fails if the watchdog does not work.
		t.Errorf("noticed after %s, bound %s", noticed, bound)
	}
	t.Logf("half-open listener noticed after %s (heartbeat %s)", noticed.Round(time.Millisecond), v.opts.Heartbeat)
}

// stallProxy forwards TCP to Postgres until stall, after which it holds every
// connection open and forwards nothing (new connections included): what a
// host that vanished without a reset looks like. Hand-written because this
// one behaviour is all the test needs; the fault suite uses toxiproxy.
type stallProxy struct {
	url     string
	mu      sync.Mutex
	stalled bool
	conns   []net.Conn
}

func newStallProxy(t *testing.T, dbURL string) *stallProxy {
	t.Helper()
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	target := net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{url: strings.Replace(dbURL, target, l.Addr().String(), 1)}
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go p.pipe(in, out)
			go p.pipe(out, in)
		}
	}()
	return p
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

func (p *stallProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		stalled := p.stalled
		p.mu.Unlock()
		if stalled {
			continue // swallowed: nothing gets through, nothing is closed
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}
