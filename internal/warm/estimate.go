package warm

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// maxCachedEstimates bounds the estimates kept for reuse: one per count
// asked for within EstimateTTL, and callers choose the counts.
const maxCachedEstimates = 64

// estimates shares estimate queries between callers. x/sync/singleflight
// does the sharing but runs the query under the first caller's context (or
// none): it cannot cancel a query when every caller waiting for it has left,
// so a flood of callers who hang up would leave queries queued behind each
// other. A flight here is cancelled when its last waiter leaves.
type estimates struct {
	slot chan struct{} // held by the one estimate query running

	mu      sync.Mutex
	flights map[int]*flight // by count
	cached  map[int]estimate
}

type flight struct {
	cancel  context.CancelFunc
	waiters int
	done    chan struct{} // closed once n and err are set
	n       int
	err     error
}

type estimate struct {
	n  int
	at time.Time
}

func newEstimates() estimates {
	return estimates{slot: make(chan struct{}, 1), flights: map[int]*flight{}, cached: map[int]estimate{}}
}

// Estimate counts the warmable sessions (active within the window, valid),
// at most count when count > 0, writing nothing: the guide's
// estimateWarmableSessionCount. With count 0 it is not capped by the
// configured run size, so that it can be compared with what a run warms
// ("not enough sessions warmed" in the guide's troubleshooting).
//
// Estimates are admin calls that must not hurt everyone: callers asking for
// the same count at the same time share one query, its answer is reused for
// Config.EstimateTTL (5 s by default: an estimate may be that old), and at
// most one estimate query runs at a time, whatever the counts. A caller who
// leaves gets its context's error; the query goes on while anyone waits for
// it, bounded by Config.Timeout.
func (w *Warmer) Estimate(ctx context.Context, count int) (int, error) {
	if count <= 0 {
		count = math.MaxInt32
	}
	e := &w.est
	e.mu.Lock()
	if c, ok := e.cached[count]; ok && time.Since(c.at) < w.cfg.EstimateTTL {
		e.mu.Unlock()
		return c.n, nil
	}
	f := e.flights[count]
	if f == nil {
		fctx, cancel := context.WithTimeout(w.base, w.cfg.Timeout)
		f = &flight{cancel: cancel, done: make(chan struct{})}
		e.flights[count] = f
		go w.fly(fctx, count, f)
	}
	f.waiters++
	e.mu.Unlock()

	select {
	case <-f.done:
		return f.n, f.err
	case <-ctx.Done():
		e.mu.Lock()
		if f.waiters--; f.waiters == 0 {
			f.cancel()
			if e.flights[count] == f {
				delete(e.flights, count) // a newcomer starts afresh
			}
		}
		e.mu.Unlock()
		return 0, ctx.Err()
	}
}

// fly runs f's query when the slot is free, and publishes its answer.
func (w *Warmer) fly(ctx context.Context, count int, f *flight) {
	e := &w.est
	defer f.cancel()
	select {
	case e.slot <- struct{}{}:
		f.n, f.err = w.count(ctx, count)
		<-e.slot
	case <-ctx.Done():
		f.err = ctx.Err()
	}
	e.mu.Lock()
	if e.flights[count] == f {
		delete(e.flights, count)
	}
	if f.err == nil {
		now := time.Now()
		for k, c := range e.cached {
			if now.Sub(c.at) >= w.cfg.EstimateTTL {
				delete(e.cached, k)
			}
		}
		if len(e.cached) < maxCachedEstimates {
			e.cached[count] = estimate{n: f.n, at: now}
		}
	}
	e.mu.Unlock()
	close(f.done)
}

// count runs the estimate query.
func (w *Warmer) count(ctx context.Context, count int) (int, error) {
	tx, err := w.db.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrPostgres, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	var n int
	if err := tx.QueryRow(ctx, countSQL, w.cfg.Window.Seconds(), count).Scan(&n); err != nil {
		return 0, fmt.Errorf("%w: count warmable sessions: %w", ErrPostgres, err)
	}
	return n, nil
}
