package warm

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/seed"
)

// countingDB counts the estimate queries (each is one read-only
// transaction) and how many run at once; with a gate, each waits for the
// gate to open (or its context to end) before it begins.
type countingDB struct {
	pool       *pgxpool.Pool
	gate       chan struct{}
	began      atomic.Int64
	running    atomic.Int64
	maxRunning atomic.Int64
	canceled   atomic.Int64
}

func (d *countingDB) BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	d.began.Add(1)
	n := d.running.Add(1)
	for m := d.maxRunning.Load(); n > m && !d.maxRunning.CompareAndSwap(m, n); m = d.maxRunning.Load() {
	}
	if d.gate != nil {
		select {
		case <-d.gate:
		case <-ctx.Done():
			d.canceled.Add(1)
			d.running.Add(-1)
			return nil, ctx.Err()
		}
	}
	tx, err := d.pool.BeginTx(ctx, opts)
	if err != nil {
		d.running.Add(-1)
		return nil, err
	}
	return &countedTx{Tx: tx, running: &d.running}, nil
}

type countedTx struct {
	pgx.Tx
	running *atomic.Int64
	once    sync.Once
}

func (t *countedTx) Rollback(ctx context.Context) error {
	t.once.Do(func() { t.running.Add(-1) })
	return t.Tx.Rollback(ctx)
}

func newEstimating(t *testing.T, ttl time.Duration) (*Warmer, *countingDB) {
	t.Helper()
	ctx := t.Context()
	pool := devtest.Pool(t)
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	opts := seed.DefaultDemo()
	opts.Users, opts.Sessions = 20, 200
	if _, err := seed.Load(ctx, pool, opts, func(seed.Truth) error { return nil }); err != nil {
		t.Fatal(err)
	}
	db := &countingDB{pool: pool}
	w := New(t.Context(), db, nil, Config{Window: 24 * time.Hour, Timeout: time.Minute, EstimateTTL: ttl}, slog.New(slog.DiscardHandler))
	return w, db
}

// N concurrent callers asking for the same estimate cost one count query.
func TestEstimateCoalesced(t *testing.T) {
	w, db := newEstimating(t, time.Minute)
	const callers = 20
	got := make([]int, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			n, err := w.Estimate(t.Context(), 0)
			if err != nil {
				t.Error(err)
			}
			got[i] = n
		})
	}
	wg.Wait()
	if n := db.began.Load(); n != 1 {
		t.Errorf("%d count queries for %d concurrent callers, want 1", n, callers)
	}
	for i, n := range got {
		if n != got[0] || n == 0 {
			t.Fatalf("caller %d got %d, caller 0 got %d: want the same, non-zero", i, n, got[0])
		}
	}
}

// An estimate is reused for EstimateTTL, per count; after it, it is asked
// again.
func TestEstimateCachedBriefly(t *testing.T) {
	w, db := newEstimating(t, time.Minute)
	for range 3 {
		if _, err := w.Estimate(t.Context(), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Estimate(t.Context(), 10); err != nil {
		t.Fatal(err)
	}
	if n := db.began.Load(); n != 2 {
		t.Errorf("%d count queries for 3 same estimates and 1 other within the TTL, want 2", n)
	}

	w, db = newEstimating(t, time.Nanosecond)
	for range 3 {
		if _, err := w.Estimate(t.Context(), 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := db.began.Load(); n != 3 {
		t.Errorf("%d count queries for 3 estimates past the TTL, want 3", n)
	}
}

// Estimates of different counts wait for each other: one query at a time.
func TestEstimatesOneAtATime(t *testing.T) {
	w, db := newEstimating(t, time.Minute)
	db.gate = make(chan struct{})
	var wg sync.WaitGroup
	for _, count := range []int{1, 2, 3} {
		wg.Go(func() {
			if _, err := w.Estimate(t.Context(), count); err != nil {
				t.Error(err)
			}
		})
	}
	devtest.Eventually(t, 10*time.Second, func() error { // all three asked and waiting
		w.est.mu.Lock()
		defer w.est.mu.Unlock()
		if len(w.est.flights) != 3 || db.began.Load() == 0 {
			return errors.New("not all flights started")
		}
		return nil
	})
	close(db.gate)
	wg.Wait()
	if n, m := db.began.Load(), db.maxRunning.Load(); n != 3 || m != 1 {
		t.Errorf("%d queries, %d at most at once; want 3, 1 at a time", n, m)
	}
}

// A query nobody waits for any more is cancelled, and the next caller
// starts afresh.
func TestEstimateAbandoned(t *testing.T) {
	w, db := newEstimating(t, time.Minute)
	db.gate = make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := w.Estimate(ctx, 0)
		done <- err
	}()
	devtest.Eventually(t, 10*time.Second, func() error {
		if db.began.Load() == 0 {
			return errors.New("query not begun")
		}
		return nil
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned estimate: %v, want context.Canceled", err)
	}
	devtest.Eventually(t, 10*time.Second, func() error {
		if db.canceled.Load() != 1 {
			return errors.New("the query was not cancelled")
		}
		return nil
	})
	close(db.gate)
	if n, err := w.Estimate(t.Context(), 0); err != nil || n == 0 {
		t.Errorf("next estimate: %d, %v", n, err)
	}
	if n := db.began.Load(); n != 2 {
		t.Errorf("%d queries, want 2 (the abandoned one is not reused)", n)
	}
}
