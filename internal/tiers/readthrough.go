package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// l1 is what the read-through needs of the cache tier.
type l1 interface {
	Get(ctx context.Context, key string) (rec *Record, local bool, err error)
	Set(ctx context.Context, key string, rec *Record, now time.Time) error
}

// l2 is what the read-through needs of the source of truth.
type l2 interface {
	Lookup(ctx context.Context, token string) (*Record, error)
}

var (
	_ l1 = (*Redis)(nil)
	_ l2 = (*Postgres)(nil)
)

// Result is the answer for one token.
type Result struct {
	// Record is the session, nil when there is none. It is set for invalid
	// sessions too; callers show it only when Reason is ReasonNone.
	Record *Record
	Reason Reason
	Source Source
}

// Valid reports whether the session is valid.
func (r Result) Valid() bool { return r.Reason == ReasonNone }

// Counters are the read-through's running totals since start.
type Counters struct {
	LocalHits     atomic.Int64 // answers from the client-side cache
	RedisHits     atomic.Int64 // answers from a Redis round trip
	Misses        atomic.Int64 // answers that needed Postgres
	Errors        atomic.Int64 // Redis errors, each treated as a miss
	PostgresReads atomic.Int64 // queries sent to Postgres (coalesced)
	Fills         atomic.Int64 // entries written to Redis after a Postgres read
}

// ReadThroughOptions configures the read-through.
type ReadThroughOptions struct {
	// RedisTimeout bounds each Redis call, within the caller's deadline.
	RedisTimeout time.Duration
	// PostgresTimeout bounds each Postgres query, within the caller's deadline.
	PostgresTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// ReadThrough answers ValidateSession: L1, then L2, filling L1 after an L2
// read. It is safe for concurrent use.
type ReadThrough struct {
	l1   l1
	l2   l2
	opts ReadThroughOptions
	log  *slog.Logger
	sf   singleflight.Group
	c    Counters
}

// NewReadThrough joins a cache and a source of truth.
func NewReadThrough(cache l1, truth l2, o ReadThroughOptions, log *slog.Logger) *ReadThrough {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &ReadThrough{l1: cache, l2: truth, opts: o, log: log}
}

// Counters returns the running totals.
func (rt *ReadThrough) Counters() *Counters { return &rt.c }

// Validate answers for a raw token. An invalid or unknown session is a
// normal Result, not an error. Errors: ErrInvalidToken (wrapped) for what
// cannot be a token, before any tier is asked; ErrUnavailable (wrapped) when
// the session is not cached and Postgres cannot answer within
// PostgresTimeout; the context's error when ctx ends first. A Redis failure
// is never an error: it is counted and Postgres answers.
func (rt *ReadThrough) Validate(ctx context.Context, token string) (Result, error) {
	if err := CheckToken(token); err != nil {
		return Result{}, err
	}
	hash := TokenHash(token)
	key := Key(hash)

	rec, local, err := rt.get(ctx, key)
	if err == nil && rec != nil {
		src := SourceRedis
		if local {
			src = SourceLocal
			rt.c.LocalHits.Add(1)
		} else {
			rt.c.RedisHits.Add(1)
		}
		// The rule runs again on every hit: a cached entry never validates a
		// session past its expiry or during a ban.
		return Result{Record: rec, Reason: Check(rec, rt.opts.Now()), Source: src}, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
		rt.c.Errors.Add(1)
		rt.log.Debug("redis read failed; asking postgres", "key", key, "error", err)
	}

	rec, err = rt.lookup(ctx, token, key)
	if err != nil {
		return Result{}, err
	}
	rt.c.Misses.Add(1)
	return Result{Record: rec, Reason: Check(rec, rt.opts.Now()), Source: SourcePostgres}, nil
}

func (rt *ReadThrough) get(ctx context.Context, key string) (*Record, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, rt.opts.RedisTimeout)
	defer cancel()
	return rt.l1.Get(ctx, key)
}

// lookup asks Postgres, coalescing concurrent misses for one token into one
// query, then fills the cache. The shared query and fill run detached from
// any one caller (bounded by the configured timeouts), so a caller who hangs
// up does not fail the others waiting on the same token; each caller still
// leaves when its own ctx ends.
func (rt *ReadThrough) lookup(ctx context.Context, token, key string) (*Record, error) {
	ch := rt.sf.DoChan(key, func() (any, error) {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rt.opts.PostgresTimeout)
		defer cancel()
		rt.c.PostgresReads.Add(1)
		rec, err := rt.l2.Lookup(qctx, token)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				// Our own bound, not the caller's: Postgres is too slow to
				// count on.
				err = fmt.Errorf("%w: postgres did not answer within %s", ErrUnavailable, rt.opts.PostgresTimeout)
			}
			return nil, err
		}
		if rec != nil {
			rt.fill(ctx, key, rec)
		}
		return rec, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		rec, _ := res.Val.(*Record)
		return rec, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (rt *ReadThrough) fill(ctx context.Context, key string, rec *Record) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rt.opts.RedisTimeout)
	defer cancel()
	if err := rt.l1.Set(wctx, key, rec, rt.opts.Now()); err != nil {
		rt.c.Errors.Add(1)
		rt.log.Debug("redis fill failed", "key", key, "error", err)
		return
	}
	rt.c.Fills.Add(1)
}
