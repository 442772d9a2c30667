package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// l1 is what the read-through needs of the cache tier.
type l1 interface {
	// Seq counts invalidations handled (see Fence.Seq).
	Seq() uint64
	// AwaitTrust waits at most d (and while ctx lasts) for the cache to
	// be believed, and reports whether it is.
	AwaitTrust(ctx context.Context, d time.Duration) bool
	// Cached is what Get would answer without a round trip to Redis (ok),
	// or else the generation a Postgres read begun now must carry.
	Cached(ctx context.Context, key string) (l Lookup, ok bool)
	// Get reads key; timeout bounds what waits for Redis.
	Get(ctx context.Context, key string, timeout time.Duration) (Lookup, error)
	// SetFills caches what Postgres reads found, each under its own stamp
	// (see Redis.SetFills).
	SetFills(ctx context.Context, fills []Fill) ([]WriteResult, []error)
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
	PostgresReads atomic.Int64 // lookups sent to Postgres, one per token at a time (see Postgres.Queries for the queries they took)
	// Distrusted counts misses that went to Postgres because the fence
	// could not vouch for the cache (see Fence.Trusted).
	Distrusted atomic.Int64
	// Rereads counts callers who could not share a Postgres read already
	// under way because an invalidation was handled after it began.
	Rereads atomic.Int64
	// FillsDropped counts fills not made because maxFills were already
	// queued or under way (Redis slow): the next miss of those tokens reads
	// again.
	FillsDropped atomic.Int64
	// EarlyReads counts misses read from Postgres without asking Redis
	// first (see earlyReads); EarlyReadsUnused those of a key Redis turned
	// out to hold (its fill found it there and left it as it was).
	EarlyReads       atomic.Int64
	EarlyReadsUnused atomic.Int64
	answers          answerCounts // by reason and source, except negative hits (see Answered)
}

// maxFills bounds the fills queued or under way at once: a fill runs after
// its callers have their answer, and a Redis that stops answering must not
// pile them up (each write waits at most RedisTimeout).
const maxFills = 1024

// maxFillBatch bounds the fills of one SetFills: under a millisecond of
// Redis's time.
const maxFillBatch = 128

// trustWait bounds how long a caller whose Postgres read failed waits for
// the fence to trust the cache (see Validate).
const trustWait = 250 * time.Millisecond

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
	c    Counters

	early earlyReads

	mu      sync.Mutex
	flights map[string]*flight // the newest Postgres read per key, until its fill is done
	fills   atomic.Int64       // queued or under way
	reads   sync.WaitGroup     // goroutines of flights and the filler

	// Fills wait in queue for the filler (see queueFill); filling says
	// whether it runs.
	fillMu  sync.Mutex
	queue   []queuedFill
	filling bool
}

// queuedFill is a fill waiting for the filler: what flight f read, and the
// context of the read (detached from its callers), whose trace the write
// joins.
type queuedFill struct {
	ctx  context.Context
	f    *flight
	fill Fill
}

// flight is one Postgres read shared by concurrent misses of one key. It
// stays findable until its fill has landed, so that callers who arrive
// meanwhile take its answer instead of reading again.
type flight struct {
	seq  uint64        // the fence's Seq before the read began
	done chan struct{} // closed when rec and err are set
	rec  *Record
	err  error
	// early: begun without asking Redis (see earlyReads). Its fill leaves
	// an entry Redis already holds in the current generation as it is
	// (rewriting it would only make every instance drop its local copy),
	// and tells the early-reads window whether Redis held the key.
	early bool
}

// Wait waits for the Postgres reads and fills under way to end (each is
// bounded by the configured timeouts): for shutdown, before Redis closes.
func (rt *ReadThrough) Wait() { rt.reads.Wait() }

// NewReadThrough joins a cache and a source of truth.
func NewReadThrough(cache l1, truth l2, o ReadThroughOptions, log *slog.Logger) *ReadThrough {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &ReadThrough{l1: cache, l2: truth, opts: o, log: log, flights: map[string]*flight{}}
}

// Counters returns the running totals.
func (rt *ReadThrough) Counters() *Counters { return &rt.c }

// Validate answers for a raw token. An invalid or unknown session is a
// normal Result, not an error. Errors: ErrInvalidToken (wrapped) for what
// cannot be a token, before any tier is asked; ErrUnavailable (wrapped) when
// the session is not cached and Postgres cannot answer within
// PostgresTimeout; ErrUnreadable (wrapped) when the row exists but cannot be
// decided; the context's error when ctx ends first. A Redis failure is never
// an error: it is counted and Postgres answers.
func (rt *ReadThrough) Validate(ctx context.Context, token string) (Result, error) {
	if err := CheckToken(token); err != nil {
		return Result{}, err
	}
	key := TokenKey(token)
	// Taken before anything is read: a Postgres read that began before an
	// invalidation handled after this point is not handed to this caller.
	arrived := rt.l1.Seq()

	l, cached := rt.l1.Cached(ctx, key)
	var early *flight
	var err error
	switch {
	case cached:
	case rt.early.on.Load():
		// Postgres alone: l is Cached's "not known here".
		early = rt.flight(ctx, token, key, l.Gen, arrived, true)
		rt.c.EarlyReads.Add(1)
	default:
		l, err = rt.get(ctx, key)
		rt.early.observe(err == nil && l.Found())
	}
	if err == nil {
		if res, ok := rt.fromCache(l); ok {
			return res, nil
		}
	}
	switch {
	case err != nil:
		if ctx.Err() != nil {
			return Result{}, ctx.Err()
		}
		rt.c.Errors.Add(1)
		rt.log.Debug("redis read failed; asking postgres", "key", key, "error", err)
	case l.Distrusted:
		rt.c.Distrusted.Add(1)
	}

	f := early
	if f == nil {
		f = rt.flight(ctx, token, key, l.Gen, arrived, false)
	}
	rec, err := rt.wait(ctx, f)
	if err != nil {
		// When Postgres fails, Redis may still answer: an early read never
		// asked it. And when the cache was distrusted, the listener
		// usually learns why within milliseconds: Postgres refuses
		// connections (nothing can be revoked, so the cache is believed
		// again, see ListenerPostgresDown), or it hears again. Wait a
		// little for the fence to trust the cache before failing the
		// caller.
		if errors.Is(err, ErrUnavailable) && (early != nil || l.Distrusted && rt.l1.AwaitTrust(ctx, trustWait)) {
			if again, gerr := rt.get(ctx, key); gerr == nil && !again.Distrusted {
				if res, ok := rt.fromCache(again); ok {
					return res, nil
				}
			}
		}
		return Result{}, err
	}
	rt.c.Misses.Add(1)
	res := rt.answer(rec, SourcePostgres)
	if res.Reason == ReasonUndecidable {
		return Result{}, fmt.Errorf("%w: session %s has a NULL expires_at", ErrUnreadable, rec.ID)
	}
	return res, nil
}

// fromCache is the answer, counted, of a Lookup that found something (ok):
// a cached "no such session", or a cached session under the rule.
func (rt *ReadThrough) fromCache(l Lookup) (Result, bool) {
	switch {
	case l.Negative:
		rt.c.NegativeHits.Add(1)
		return Result{Reason: ReasonNotFound, Source: source(l.Local)}, true
	case l.Record != nil:
		return rt.hit(l), true
	}
	return Result{}, false
}

// Peek is what the cache alone would answer for token, as Validate would
// (fence, rule and all), without asking Postgres, counting, or recording
// activity: ok is false when the cache has no answer it may give. For tools
// and benchmarks that watch the cache itself.
func (rt *ReadThrough) Peek(ctx context.Context, token string) (res Result, ok bool, err error) {
	if err := CheckToken(token); err != nil {
		return Result{}, false, err
	}
	l, err := rt.get(ctx, TokenKey(token))
	switch {
	case err != nil:
		return Result{}, false, err
	case l.Negative:
		return Result{Reason: ReasonNotFound, Source: source(l.Local)}, true, nil
	case l.Record != nil:
		return Result{Record: l.Record, Reason: Check(l.Record, rt.opts.Now()), Source: source(l.Local)}, true, nil
	}
	return Result{}, false, nil
}

// hit answers from a cached entry. The rule runs again on every hit: a
// cached entry never validates a session past its expiry or during a ban.
func (rt *ReadThrough) hit(l Lookup) Result {
	if l.Local {
		rt.c.LocalHits.Add(1)
	} else {
		rt.c.RedisHits.Add(1)
	}
	return rt.answer(l.Record, source(l.Local))
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

// get reads the cache; the read is bounded by RedisTimeout where it waits
// for Redis (the cache applies it, so that a local answer costs no timer).
func (rt *ReadThrough) get(ctx context.Context, key string) (Lookup, error) {
	return rt.l1.Get(ctx, key, rt.opts.RedisTimeout)
}

// flight returns the Postgres read of token to wait for: one under way
// (answered or not, still filling) if it began after every invalidation
// this instance had handled when the caller arrived, else a new one, which
// later callers join. So concurrent misses of one token cost one query.
// The read and its fill (off the callers' path) run detached from any one
// caller, bounded by the configured timeouts: a caller who hangs up does
// not fail the others waiting on the same token. gen is the generation the
// fill carries (see Stamp). An early read (see earlyReads) is one begun
// without asking Redis first: see flight.early.
func (rt *ReadThrough) flight(ctx context.Context, token, key string, gen int64, arrived uint64, early bool) *flight {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	f := rt.flights[key]
	if f == nil || f.seq < arrived {
		if f != nil {
			rt.c.Rereads.Add(1)
		}
		f = &flight{seq: rt.l1.Seq(), done: make(chan struct{}), early: early}
		rt.flights[key] = f
		rt.reads.Add(1)
		go rt.read(context.WithoutCancel(ctx), f, token, key, gen)
	}
	return f
}

// wait waits for f's answer; each caller leaves when its own ctx ends.
func (rt *ReadThrough) wait(ctx context.Context, f *flight) (*Record, error) {
	select {
	case <-f.done:
		return f.rec, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// earlyReads decides whether a miss asks Postgres alone, without the
// Redis read before it. A Redis round trip is a good part of a miss (0.13
// ms on loopback on the machines of docs/performance.md, against 0.45 ms
// for the query, and at many callers a good part of the process's CPU),
// and when Redis rarely holds what the process does not, asking it first
// only adds that round trip. But an early read of a key Redis holds is a
// Postgres query spent for nothing, and Postgres is the tier that must stay
// lightly loaded. So early reads are on while fewer than one in earlyFound
// of the last earlyWindow round trips found their key in Redis (a flood of
// unknown tokens, a cold or flushed Redis, a wave of new logins): they then
// cost at most one query in seven more than the misses need. They are off
// while Redis answers more often (the default mix of docs/performance.md,
// where a third of the round trips find a session warmed but not yet
// local, or a cold process beside a warm Redis), and at start. An early
// read's round trip to Redis is its fill, which leaves what Redis already
// holds as it is and so says whether Redis held the key. Correctness does
// not depend on any of it: an early read is a flight like any other, begun
// after the caller arrived, and what Postgres holds is the truth; only when
// Postgres fails does the caller ask Redis (what the fence lets it believe).
type earlyReads struct {
	on    atomic.Bool
	trips atomic.Int64 // round trips to Redis
	found atomic.Int64 // of those in the current window, the ones Redis answered
}

const (
	earlyWindow = 256
	earlyFound  = 8
)

// observe counts one round trip and whether Redis answered it.
func (e *earlyReads) observe(found bool) {
	if found {
		e.found.Add(1)
	}
	if e.trips.Add(1)%earlyWindow == 0 {
		e.on.Store(earlyFound*e.found.Swap(0) < earlyWindow)
	}
}

// read runs one flight: the Postgres query, the answer, then the fill.
func (rt *ReadThrough) read(ctx context.Context, f *flight, token, key string, gen int64) {
	defer rt.reads.Done()
	// Taken before the read, and before any wait to share its query (see
	// Postgres.Lookup): a write of what it returns is refused if an
	// invalidation came after this instant (see Redis.SetFills).
	st := Stamp{ReadStart: time.Now(), Gen: gen}
	qctx, cancel := context.WithTimeout(ctx, rt.opts.PostgresTimeout)
	rt.c.PostgresReads.Add(1)
	rec, err := rt.l2.Lookup(qctx, token)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		// Our own bound, not the caller's: Postgres is too slow to count on.
		err = fmt.Errorf("%w: postgres did not answer within %s", ErrUnavailable, rt.opts.PostgresTimeout)
	}
	f.rec, f.err = rec, err
	if err != nil || (rec == nil && !rt.opts.Negative) {
		// Nothing to fill: later callers read again.
		rt.forget(key, f)
		close(f.done)
		return
	}
	close(f.done) // the callers have their answer
	if rt.fills.Add(1) > maxFills {
		rt.fills.Add(-1)
		rt.c.FillsDropped.Add(1)
		rt.forget(key, f)
		return
	}
	st.KeepCached = f.early
	rt.queueFill(queuedFill{ctx: ctx, f: f, fill: Fill{Key: key, Record: rec, Stamp: st}})
}

// queueFill hands q to the filler: one goroutine that writes whatever
// fills were queued while it wrote the last ones, up to maxFillBatch in one
// SetFills (one round trip, one script call per slot), instead of a script
// call per fill. A script call costs Redis and this process more than the
// entry it writes: at 32 callers of never-seen tokens, fills one call each
// cost a third of the throughput (docs/performance.md). The filler runs
// while there is work and ends when the queue is empty, so nothing needs
// stopping; Wait counts it. Its flights stay findable until their fills
// have landed.
func (rt *ReadThrough) queueFill(q queuedFill) {
	rt.fillMu.Lock()
	rt.queue = append(rt.queue, q)
	start := !rt.filling
	rt.filling = true
	rt.fillMu.Unlock()
	if start {
		rt.reads.Add(1) // while the caller's own count holds: Wait cannot slip between
		go rt.filler()
	}
}

func (rt *ReadThrough) filler() {
	defer rt.reads.Done()
	var spare []queuedFill
	for {
		rt.fillMu.Lock()
		batch := rt.queue
		rt.queue = spare[:0]
		if len(batch) == 0 {
			rt.filling = false
			rt.fillMu.Unlock()
			return
		}
		rt.fillMu.Unlock()
		for i := 0; i < len(batch); i += maxFillBatch {
			rt.writeFills(batch[i:min(i+maxFillBatch, len(batch))])
		}
		clear(batch) // let go of the records and contexts
		spare = batch
	}
}

// writeFills writes qs in one SetFills, bounded by RedisTimeout, under the
// first one's context (its trace shows the batch).
func (rt *ReadThrough) writeFills(qs []queuedFill) {
	fills := make([]Fill, len(qs))
	for i, q := range qs {
		fills[i] = q.fill
	}
	ctx, cancel := context.WithTimeout(qs[0].ctx, rt.opts.RedisTimeout)
	res, errs := rt.l1.SetFills(ctx, fills)
	cancel()
	rt.fills.Add(-int64(len(qs)))
	for i, q := range qs {
		if errs[i] != nil {
			rt.c.Errors.Add(1)
			rt.log.Debug("redis fill failed", "key", q.fill.Key, "error", errs[i])
		}
		if q.f.early && res[i] != Failed {
			// The fill is the early read's round trip to Redis: it found
			// the key there (Kept) or not.
			if res[i] == Kept {
				rt.c.EarlyReadsUnused.Add(1)
			}
			rt.early.observe(res[i] == Kept)
		}
		rt.forget(q.fill.Key, q.f)
	}
}

// forget makes f unfindable, unless a newer flight already replaced it.
func (rt *ReadThrough) forget(key string, f *flight) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.flights[key] == f {
		delete(rt.flights, key)
	}
}
