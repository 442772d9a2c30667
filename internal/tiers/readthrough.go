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
	Get(ctx context.Context, key string) (Lookup, error)
	Set(ctx context.Context, key string, rec *Record, st Stamp) error
	SetNegative(ctx context.Context, key string, st Stamp) (WriteResult, error)
}

// l2 is what the read-through needs of the source of truth.
type l2 interface {
	Lookup(ctx context.Context, token string) (*Record, error)
}

var (
	_ l1 = (*Redis)(nil)
	_ l2 = (*Postgres)(nil)
)

// activity is told of every valid answer (see package activity).
type activity interface {
	Record(sessionID string, storedLast, seen time.Time)
}

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
	NegativeHits  atomic.Int64 // "no such session" answers from a cached negative
	Misses        atomic.Int64 // answers that needed Postgres
	Errors        atomic.Int64 // Redis errors, each treated as a miss
	PostgresReads atomic.Int64 // queries sent to Postgres (coalesced)
	answers       answerCounts // by reason and source, except negative hits (see Answered)
}

// ReadThroughOptions configures the read-through.
type ReadThroughOptions struct {
	// RedisTimeout bounds each Redis call, within the caller's deadline.
	RedisTimeout time.Duration
	// PostgresTimeout bounds each Postgres query, within the caller's deadline.
	PostgresTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Negative caches "no such session" answers (for NegativeTTL, see
	// RedisOptions), so that a flood of unknown tokens does not cost a
	// Postgres query each.
	Negative bool
	// Activity, when set, is told of every valid answer.
	Activity activity
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
	key := TokenKey(token)

	l, err := rt.get(ctx, key)
	switch {
	case err == nil && l.Negative:
		rt.c.NegativeHits.Add(1)
		return Result{Reason: ReasonNotFound, Source: source(l.Local)}, nil
	case err == nil && l.Record != nil:
		if l.Local {
			rt.c.LocalHits.Add(1)
		} else {
			rt.c.RedisHits.Add(1)
		}
		// The rule runs again on every hit: a cached entry never validates a
		// session past its expiry or during a ban.
		return rt.answer(l.Record, source(l.Local)), nil
	case err != nil:
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
		rt.c.Errors.Add(1)
		rt.log.Debug("redis read failed; asking postgres", "key", key, "error", err)
	}

	rec, err := rt.lookup(ctx, token, key, l.Gen)
	if err != nil {
		return Result{}, err
	}
	rt.c.Misses.Add(1)
	return rt.answer(rec, SourcePostgres), nil
}

func source(local bool) Source {
	if local {
		return SourceLocal
	}
	return SourceRedis
}

// answer applies the rule and tells Activity of a valid session.
func (rt *ReadThrough) answer(rec *Record, src Source) Result {
	now := rt.opts.Now()
	res := Result{Record: rec, Reason: Check(rec, now), Source: src}
	rt.c.answers.add(res)
	if res.Valid() && rt.opts.Activity != nil {
		rt.opts.Activity.Record(rec.ID, rec.LastActivityAt, now)
	}
	return res
}

func (rt *ReadThrough) get(ctx context.Context, key string) (Lookup, error) {
	ctx, cancel := context.WithTimeout(ctx, rt.opts.RedisTimeout)
	defer cancel()
	return rt.l1.Get(ctx, key)
}

// lookup asks Postgres, coalescing concurrent misses for one token into one
// query, then fills the cache. The shared query and fill run detached from
// any one caller (bounded by the configured timeouts), so a caller who hangs
// up does not fail the others waiting on the same token; each caller still
// leaves when its own ctx ends.
func (rt *ReadThrough) lookup(ctx context.Context, token, key string, gen int64) (*Record, error) {
	ch := rt.sf.DoChan(key, func() (any, error) {
		// Taken before the read: a write of what it returns is refused if
		// an invalidation came after this instant (see Redis.SetMany).
		st := Stamp{ReadStart: time.Now(), Gen: gen}
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
		rt.fill(ctx, key, rec, st)
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

// fill caches what Postgres said: the session, or (when negative caching is
// on) that there is none.
func (rt *ReadThrough) fill(ctx context.Context, key string, rec *Record, st Stamp) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rt.opts.RedisTimeout)
	defer cancel()
	var err error
	switch {
	case rec != nil:
		err = rt.l1.Set(wctx, key, rec, st)
	case rt.opts.Negative:
		_, err = rt.l1.SetNegative(wctx, key, st)
	default:
		return
	}
	if err != nil {
		rt.c.Errors.Add(1)
		rt.log.Debug("redis fill failed", "key", key, "error", err)
	}
}
