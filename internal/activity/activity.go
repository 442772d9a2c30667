// Package activity carries session activity seen on cache hits to Postgres, in batches (write-behind).
package activity

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Execer runs one SQL statement. *pgxpool.Pool, *pgx.Conn and pgx.Tx satisfy it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Options tunes a Recorder. A zero or negative field takes its default.
type Options struct {
	Interval    time.Duration // flush period, default 30s
	Granularity time.Duration // only sessions whose stored last_activity_at is older than seen-at minus this are written; default 60s
	MaxPending  int           // bound on sessions held between flushes, default 100_000
	BatchSize   int           // sessions per UPDATE statement, default 5_000
	Timeout     time.Duration // bound on one flush's statement, default 5s
}

func (o Options) withDefaults() Options {
	if o.Interval <= 0 {
		o.Interval = 30 * time.Second
	}
	if o.Granularity <= 0 {
		o.Granularity = 60 * time.Second
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 100_000
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 5_000
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	return o
}

// updateSQL moves last_activity_at forward, never back, and only where the
// stored value is older than the seen-at time by more than the granularity,
// so a busy session costs one row write per granularity, not one per flush.
// A row that no longer exists is not an error: it simply matches nothing.
const updateSQL = `UPDATE platform.user_sessions s
SET last_activity_at = greatest(s.last_activity_at, v.t)
FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, t)
WHERE s.id = v.id AND s.last_activity_at < v.t - $3::interval`

// Stats is a snapshot of a Recorder's counters, all since New.
type Stats struct {
	Recorded int64 // Record calls accepted: a session became pending, or a pending one saw a later time
	Skipped  int64 // Record calls refused: within Granularity of the stored time, or an id that is not a uuid
	Dropped  int64 // sessions given up unwritten: the oldest evicted at MaxPending, or a failed write not put back
	Written  int64 // rows updated in Postgres
	Failed   int64 // sessions whose write failed, once per failed flush
	Pending  int   // sessions held now, waiting for the next flush
}

// entry is one pending session.
type entry struct {
	at      time.Time // latest seen-at time recorded
	retried bool      // its write failed once and it was put back; a second failure drops it
}

// pendingSet is the sessions waiting for a flush, with the order in which
// they were first recorded. order holds each key of at exactly once, oldest
// first from head: it is appended to until it holds MaxPending ids, then
// used as a ring, where the oldest id is replaced by the newest.
type pendingSet struct {
	at    map[string]entry
	order []string
	head  int
}

// id returns the i-th oldest pending id.
func (p *pendingSet) id(i int) string { return p.order[(p.head+i)%len(p.order)] }

func (p *pendingSet) reset() {
	clear(p.at)
	clear(p.order) // drop the references to the callers' strings
	p.order = p.order[:0]
	p.head = 0
}

// Recorder holds the sessions seen on valid answers and writes their
// activity to Postgres in batches. Record is safe for concurrent use and
// never waits for I/O; Flush and Run write.
type Recorder struct {
	db  Execer
	o   Options
	log *slog.Logger

	mu       sync.Mutex
	cur      *pendingSet // what Record adds to
	recorded int64
	dropped  int64

	skipped atomic.Int64 // outside mu: the skip path takes no lock
	written atomic.Int64
	failed  atomic.Int64

	// flushMu serialises flushes. It guards spare, which Flush swaps with
	// cur, and the batch buffers, which it reuses, so a steady state
	// allocates no new maps or slices.
	flushMu sync.Mutex
	spare   *pendingSet
	ids     []string
	times   []time.Time
}

// New returns a Recorder that writes through db. A nil log discards.
func New(db Execer, o Options, log *slog.Logger) *Recorder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Recorder{
		db:    db,
		o:     o.withDefaults(),
		log:   log,
		cur:   &pendingSet{at: make(map[string]entry)},
		spare: &pendingSet{at: make(map[string]entry)},
	}
}

// Record notes that session id (a uuid string) was used at t; storedLast is
// the last_activity_at the caller's copy of the session holds.
//
// It is meant for the hot path of every valid answer: it does no I/O, takes
// one short lock (none when it skips), allocates nothing when the session is
// already pending, and is safe for concurrent use. It skips, counting
// Skipped, when t.Sub(storedLast) < Granularity, and when id is not a uuid
// in the canonical lowercase form Postgres prints (as tiers.Record.ID
// holds), so one bad id cannot fail a whole batch's ::uuid[] cast.
//
// A session already pending keeps the later of its times. When MaxPending
// sessions are held and a new one arrives, the one first recorded longest
// ago is dropped, counting Dropped.
func (r *Recorder) Record(id string, storedLast, t time.Time) {
	if t.Sub(storedLast) < r.o.Granularity || !isUUID(id) {
		r.skipped.Add(1)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recorded++
	p := r.cur
	if e, ok := p.at[id]; ok {
		if t.After(e.at) {
			e.at = t
			p.at[id] = e
		}
		return
	}
	if len(p.at) < r.o.MaxPending {
		p.order = append(p.order, id)
	} else {
		delete(p.at, p.order[p.head])
		p.order[p.head] = id
		p.head = (p.head + 1) % len(p.order)
		r.dropped++
	}
	p.at[id] = entry{at: t}
}

// Flush writes everything pending now, oldest first, in statements of at
// most BatchSize sessions, each bounded by Timeout and by ctx. It returns
// the number of rows updated: sessions that no longer exist, or whose stored
// time is already within Granularity of the recorded one, update none.
//
// Record is not blocked while Flush writes: what it records meanwhile waits
// for the next flush. Concurrent Flush calls run one after the other. With
// nothing pending, Flush returns 0, nil without a round trip.
//
// On the first failed statement (Postgres down, ctx ended) Flush stops and
// returns the rows updated so far with an error wrapping the driver's or
// ctx's error. Every session not written is counted Failed and put back
// once, oldest first, if there is room under MaxPending; one that already
// failed before, or finds no room, is dropped and counted Dropped. So an
// outage costs at most one Timeout per flush and never holds more than
// MaxPending sessions.
func (r *Recorder) Flush(ctx context.Context) (int64, error) {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()

	r.mu.Lock()
	p := r.cur
	r.cur, r.spare = r.spare, p
	r.mu.Unlock()
	defer p.reset() // p becomes the spare again, empty, once written

	n := len(p.order)
	var rows int64
	for start := 0; start < n; start += r.o.BatchSize {
		end := min(start+r.o.BatchSize, n)
		ids, times := r.ids[:0], r.times[:0]
		for i := start; i < end; i++ {
			id := p.id(i)
			ids = append(ids, id)
			times = append(times, p.at[id].at)
		}
		r.ids, r.times = ids, times

		bctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
		tag, err := r.db.Exec(bctx, updateSQL, ids, times, r.o.Granularity)
		cancel()
		clear(r.ids) // keep no references to the callers' strings
		if err != nil {
			r.putBack(p, start)
			return rows, fmt.Errorf("activity: flush: %d of %d sessions not written: %w", n-start, n, err)
		}
		rows += tag.RowsAffected()
		r.written.Add(tag.RowsAffected())
	}
	return rows, nil
}

// putBack returns the sessions of p from the from-th oldest on, which were
// not written, to the pending set. Those that already failed once are
// dropped; of the rest, as many as fit under MaxPending go back, newest
// first, ahead of everything recorded since the swap: they were first
// recorded earlier, so they are the first to be evicted.
func (r *Recorder) putBack(p *pendingSet, from int) {
	n := len(p.order) - from
	r.failed.Add(int64(n))

	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cur
	var back []string // oldest first
	for i := from; i < len(p.order); i++ {
		id := p.id(i)
		e := p.at[id]
		if ce, ok := c.at[id]; ok { // recorded again since the swap: one entry, the later time
			ce.at = later(ce.at, e.at)
			ce.retried = ce.retried || e.retried
			c.at[id] = ce
			continue
		}
		if e.retried {
			r.dropped++
			continue
		}
		back = append(back, id)
	}
	room := r.o.MaxPending - len(c.at)
	if room <= 0 {
		r.dropped += int64(len(back))
		return
	}
	if len(back) > room {
		r.dropped += int64(len(back) - room)
		back = back[len(back)-room:]
	}
	for _, id := range back {
		c.at[id] = entry{at: p.at[id].at, retried: true}
	}
	order := make([]string, 0, len(back)+len(c.order))
	order = append(order, back...)
	for i := range len(c.order) {
		order = append(order, c.id(i))
	}
	c.order, c.head = order, 0
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Run flushes every Interval until ctx ends, logging a failed flush at Warn
// and going on. When ctx ends it flushes once more under a fresh context
// bounded by Timeout, so what it holds on shutdown is written, and returns
// that flush's error: nil when everything pending was written or there was
// nothing to write. It never returns ctx's error.
func (r *Recorder) Run(ctx context.Context) error {
	tick := time.NewTicker(r.o.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.o.Timeout)
			defer cancel()
			rows, err := r.Flush(fctx)
			r.log.Debug("activity: final flush", "rows", rows, "err", err)
			return err
		case <-tick.C:
			rows, err := r.Flush(ctx)
			if err != nil && ctx.Err() == nil {
				r.log.Warn("activity: flush failed", "rows", rows, "err", err)
			} else if rows > 0 {
				r.log.Debug("activity: flushed", "rows", rows)
			}
		}
	}
}

// Stats returns the counters now.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	s := Stats{Recorded: r.recorded, Dropped: r.dropped, Pending: len(r.cur.at)}
	r.mu.Unlock()
	s.Skipped = r.skipped.Load()
	s.Written = r.written.Load()
	s.Failed = r.failed.Load()
	return s
}

// isUUID reports whether s is a uuid as Postgres prints one: 8-4-4-4-12
// lowercase hex digits.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}
