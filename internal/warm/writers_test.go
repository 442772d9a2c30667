package warm_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// scriptedCache stands in for Redis where the test needs to hold or fail a
// given write: the real Redis answers too fast to see batches overlap.
type scriptedCache struct {
	batchSize int
	// hold: the first write of a full batch waits until the batch shorter
	// than batchSize (the last one) has been written, so that writes
	// overlap and finish out of the rows' order. (Not simply the first
	// write: writers race for batches, and the last batch's write may be
	// the first to reach Redis.)
	hold     bool
	failFrom int           // from this write on (1-based), every entry fails; 0: never
	gate     chan struct{} // when not nil, every write waits for it to close

	mu          sync.Mutex
	calls       int
	held        bool // a full batch's write has been held
	partialDone chan struct{}
	overlapped  bool
}

var errDown = errors.New("redis down (scripted)")

func (c *scriptedCache) Gen(context.Context) (int64, error)          { return 1, nil }
func (c *scriptedCache) Ping(context.Context) (time.Duration, error) { return 0, nil }

func (c *scriptedCache) SetMany(ctx context.Context, entries []tiers.Entry, _ tiers.Stamp) ([]tiers.WriteResult, []error) {
	c.mu.Lock()
	c.calls++
	n := c.calls
	hold := c.hold && !c.held && len(entries) == c.batchSize
	c.held = c.held || hold
	c.mu.Unlock()
	if c.gate != nil {
		<-c.gate
	}
	if len(entries) < c.batchSize {
		defer close(c.partialDone)
	}
	if hold {
		select {
		case <-c.partialDone:
			c.mu.Lock()
			c.overlapped = true
			c.mu.Unlock()
		case <-time.After(10 * time.Second): // not written at once: the test fails on overlapped
		case <-ctx.Done():
		}
	}
	res, errs := make([]tiers.WriteResult, len(entries)), make([]error, len(entries))
	for i := range entries {
		if c.failFrom > 0 && n >= c.failFrom || ctx.Err() != nil {
			res[i], errs[i] = tiers.Failed, errDown
		}
	}
	return res, errs
}

// progressLog keeps the "done" of every progress line a run logs.
type progressLog struct {
	mu   sync.Mutex
	done []int64
}

func (p *progressLog) Enabled(context.Context, slog.Level) bool { return true }
func (p *progressLog) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *progressLog) WithGroup(string) slog.Handler            { return p }
func (p *progressLog) Handle(_ context.Context, r slog.Record) error {
	if !strings.HasPrefix(r.Message, "[CacheWarming] Progress") {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "done" {
			p.mu.Lock()
			p.done = append(p.done, a.Value.Int64())
			p.mu.Unlock()
		}
		return true
	})
	return nil
}

// poolWithSessions is a pool on a fresh database holding n warmable
// sessions of one user.
func poolWithSessions(t *testing.T, n int) *pgxpool.Pool {
	t.Helper()
	ctx := t.Context()
	pool := devtest.Pool(t)
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	_, err := pool.Exec(ctx, `
WITH u AS (
  INSERT INTO platform.users (id, email) VALUES (gen_random_uuid(), 'writers-' || gen_random_uuid() || '@example.test') RETURNING id
)
INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
SELECT gen_random_uuid(), u.id, encode(sha256(('writers-' || i)::bytea), 'hex'), now() + interval '1 hour', now() - interval '1 minute'
FROM u, generate_series(1, $1) i`, n)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

// A run without pauses writes several batches at once, yet counts and
// reports them in the rows' order; a run whose writes fail stops, says so,
// and counts only what was written.
func TestWritersOverlapInOrder(t *testing.T) {
	pool := poolWithSessions(t, 25)

	for _, tt := range []struct {
		name     string
		cache    *scriptedCache
		outcome  warm.Outcome
		progress []int64 // nil: not checked
	}{
		{"overlapping writes, reported in order", &scriptedCache{hold: true}, warm.Completed, []int64{10, 20, 25}},
		{"writes failing from the second", &scriptedCache{failFrom: 2}, warm.Failed, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cache.batchSize, tt.cache.partialDone = 10, make(chan struct{})
			logs := &progressLog{}
			w := warm.New(t.Context(), pool, tt.cache, warm.Config{
				Count: 1000, BatchSize: 10, Window: time.Hour, Timeout: time.Minute, Storage: tiers.TokenStorageHash,
			}, slog.New(logs))
			run, _ := w.Start(warm.Request{}, true)
			select {
			case <-run.Done():
			case <-time.After(30 * time.Second):
				t.Fatal("run did not end")
			}
			p := run.Snapshot()
			if p.Total != 25 || p.Outcome != tt.outcome {
				t.Fatalf("run %v of %d sessions (%v), want %v of 25", p.Outcome, p.Total, p.Err, tt.outcome)
			}
			logs.mu.Lock()
			done := slices.Clone(logs.done)
			logs.mu.Unlock()
			switch tt.outcome {
			case warm.Completed:
				tt.cache.mu.Lock()
				overlapped := tt.cache.overlapped
				tt.cache.mu.Unlock()
				if !overlapped {
					t.Error("the first batch's write ended before the last one's began: batches were not written at once")
				}
				if p.Warmed != 25 || !slices.Equal(done, tt.progress) {
					t.Errorf("warmed %d, progress %v; want 25, %v", p.Warmed, done, tt.progress)
				}
			case warm.Failed:
				if !errors.Is(p.Err, warm.ErrRedis) || !errors.Is(p.Err, errDown) {
					t.Errorf("error %v, want the scripted Redis failure", p.Err)
				}
				// Only the first write succeeded: whatever batch it
				// carried, at most 10 sessions are warmed.
				if p.Warmed > 10 || p.Warmed+p.Failed > 25 {
					t.Errorf("warmed %d, failed %d of 25, want at most 10 warmed", p.Warmed, p.Failed)
				}
				if !slices.IsSorted(done) {
					t.Errorf("progress %v goes backwards", done)
				}
			}
			t.Logf("progress %v", done)
		})
	}
}

// A caller who starts a run with StartWatching sees it from its count on:
// every batch, then the end; one who joins it sees it from where it is.
func TestStartWatchingSeesEveryBatch(t *testing.T) {
	pool := poolWithSessions(t, 25)
	cache := &scriptedCache{batchSize: 10, partialDone: make(chan struct{}), gate: make(chan struct{})}
	w := warm.New(t.Context(), pool, cache, warm.Config{
		Count: 1000, BatchSize: 10, Window: time.Hour, Timeout: time.Minute, Storage: tiers.TokenStorageHash,
	}, slog.New(slog.DiscardHandler))
	run, progress, unwatch, joined := w.StartWatching(warm.Request{})
	defer unwatch()
	if joined {
		t.Fatal("joined a run, with none running")
	}
	_, again, unwatchAgain, joined := w.StartWatching(warm.Request{}) // the writes are held: still running
	defer unwatchAgain()
	if !joined {
		t.Error("a second caller started a second run")
	}
	close(cache.gate)
	var batches []int
	for p := range progress {
		if p.RunID != run.ID() || p.Total != 25 {
			t.Fatalf("progress %+v: want run %s of 25", p, run.ID())
		}
		if !p.Done {
			batches = append(batches, p.Batches)
		} else if p.Outcome != warm.Completed || p.Warmed != 25 {
			t.Errorf("last message %+v, want completed, 25 warmed", p)
		}
	}
	if !slices.Equal(batches, []int{0, 1, 2, 3}) {
		t.Errorf("batches seen %v, want the count (0), then 1, 2 and 3", batches)
	}
	var last warm.Progress
	for p := range again {
		last = p
	}
	if !last.Done || last.RunID != run.ID() {
		t.Errorf("the joiner's last message %+v, want the run's end", last)
	}
}
