package tiers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakeCache is an in-memory l1; failing makes every call fail.
type fakeCache struct {
	mu      sync.Mutex
	m       map[string]*Record
	failing bool
	local   bool
	seq     atomic.Uint64 // invalidations handled
	gate    chan struct{} // when non-nil, Get waits for it to close
	sets    atomic.Int64  // fills written

	fillGate atomic.Pointer[chan struct{}] // when set, SetFills waits for it to close
	batches  []int                         // the fills of each SetFills
}

// Cached: the fake keeps nothing in process memory; every Get is a trip.
func (f *fakeCache) Cached(context.Context, string) (Lookup, bool) { return Lookup{}, false }

func (f *fakeCache) Seq() uint64 { return f.seq.Load() }

func (f *fakeCache) AwaitTrust(context.Context, time.Duration) bool { return true }

func (f *fakeCache) Get(_ context.Context, key string, _ time.Duration) (Lookup, error) {
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		return Lookup{}, errors.New("redis down")
	}
	return Lookup{Record: f.m[key], Local: f.local}, nil
}

// get is what the fake holds under key.
func (f *fakeCache) get(key string) *Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[key]
}

// SetFills writes each fill's record (a negative is skipped), as the real
// one does with KeepCached; while fillGate is set, it first waits for it.
func (f *fakeCache) SetFills(_ context.Context, fills []Fill) ([]WriteResult, []error) {
	if g := f.fillGate.Load(); g != nil {
		<-*g
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batches = append(f.batches, len(fills))
	res, errs := make([]WriteResult, len(fills)), make([]error, len(fills))
	for i, fl := range fills {
		_, held := f.m[fl.Key]
		switch {
		case f.failing:
			res[i], errs[i] = Failed, errors.New("redis down")
		case fl.Record == nil:
			res[i] = Skipped
		case held && fl.Stamp.KeepCached:
			res[i] = Kept
		default:
			f.sets.Add(1)
			f.m[fl.Key] = fl.Record
			res[i] = Written
		}
	}
	return res, errs
}

// fakeTruth is an l2 that can hold every query until released. A query
// reads the row when it starts, as a snapshot would.
type fakeTruth struct {
	mu      sync.Mutex
	rows    map[string]*Record // by raw token
	err     error
	queries atomic.Int64
	gate    chan struct{} // when non-nil, Lookup waits for it to close
	delay   time.Duration // each query takes this long (in a synctest bubble: on its clock)
}

func (f *fakeTruth) set(token string, rec *Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rows[token] = rec
}

func (f *fakeTruth) Lookup(ctx context.Context, token string) (*Record, error) {
	f.queries.Add(1)
	gate := f.gate
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	f.mu.Lock()
	rec := f.rows[token]
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.err != nil {
		return nil, f.err
	}
	return rec, nil
}

func newTestReadThrough(cache *fakeCache, truth *fakeTruth, now func() time.Time) *ReadThrough {
	return NewReadThrough(cache, truth, ReadThroughOptions{
		RedisTimeout: time.Second, PostgresTimeout: time.Second, Now: now,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestReadThroughTiers(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	rec := &Record{ID: "s1", UserID: "u1", ExpiresAt: now.Add(time.Hour)}
	tests := []struct {
		name       string
		cached     bool
		local      bool
		redisDown  bool
		pgErr      error
		wantSource Source
		wantReason Reason
		wantErr    error
		wantFill   bool
	}{
		{name: "local hit", cached: true, local: true, wantSource: SourceLocal},
		{name: "redis hit", cached: true, wantSource: SourceRedis},
		{name: "miss fills", wantSource: SourcePostgres, wantFill: true},
		{name: "redis down: postgres answers", redisDown: true, wantSource: SourcePostgres},
		{name: "postgres down, cached: answered", cached: true, pgErr: ErrUnavailable, wantSource: SourceRedis},
		{name: "postgres down, not cached: unavailable", pgErr: ErrUnavailable, wantErr: ErrUnavailable},
		{name: "both down: unavailable", redisDown: true, pgErr: ErrUnavailable, wantErr: ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := &fakeCache{m: map[string]*Record{}, local: tt.local}
			if tt.cached {
				cache.m[Key(TokenHash("tok"))] = rec
			}
			truth := &fakeTruth{rows: map[string]*Record{"tok": rec}, err: tt.pgErr}
			rt := newTestReadThrough(cache, truth, func() time.Time { return now })
			cache.failing = tt.redisDown
			res, err := rt.Validate(context.Background(), "tok")
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if res.Source != tt.wantSource || res.Reason != tt.wantReason || res.Record != rec {
				t.Errorf("got source %v reason %v record %p, want %v %v %p", res.Source, res.Reason, res.Record, tt.wantSource, tt.wantReason, rec)
			}
			rt.Wait() // the fill runs after the answer
			cache.failing = false
			if _, filled := cache.m[Key(TokenHash("tok"))]; tt.wantFill && !filled {
				t.Error("miss did not fill the cache")
			}
			if tt.redisDown && rt.Counters().Errors.Load() == 0 {
				t.Error("redis error not counted")
			}
		})
	}
}

func TestReadThroughRechecksTimeOnHit(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := now
	banEnd := now.Add(2 * time.Minute)
	rec := &Record{ID: "s1", UserID: "u1", ExpiresAt: now.Add(5 * time.Minute), BannedUntil: &banEnd}
	cache := &fakeCache{m: map[string]*Record{Key(TokenHash("tok")): rec}, local: true}
	rt := newTestReadThrough(cache, &fakeTruth{}, func() time.Time { return clock })
	for _, step := range []struct {
		at   time.Time
		want Reason
	}{
		{now, ReasonUserBanned},
		{banEnd.Add(time.Second), ReasonNone},      // the ban lapsed
		{now.Add(5 * time.Minute), ReasonExpired},  // expiry is exclusive
		{now.Add(10 * time.Minute), ReasonExpired}, // and stays so
	} {
		clock = step.at
		res, err := rt.Validate(context.Background(), "tok")
		if err != nil || res.Reason != step.want || res.Source != SourceLocal {
			t.Errorf("at %v: %v %v %v, want %v from local", step.at.Sub(now), res.Reason, res.Source, err, step.want)
		}
	}
}

func TestReadThroughCoalescesMisses(t *testing.T) {
	// synctest.Wait returns once every caller is durably blocked: one inside
	// the held query, the others waiting on it. Only then is the query let go.
	synctest.Test(t, func(t *testing.T) {
		const callers = 50
		rec := &Record{ID: "s1", UserID: "u1", ExpiresAt: time.Now().Add(time.Hour)}
		truth := &fakeTruth{rows: map[string]*Record{"tok": rec}, gate: make(chan struct{})}
		cache := &fakeCache{m: map[string]*Record{}}
		rt := newTestReadThrough(cache, truth, nil)

		results := make(chan Result, callers)
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				res, err := rt.Validate(context.Background(), "tok")
				if err != nil {
					t.Error(err)
				}
				results <- res
			})
		}
		synctest.Wait()
		close(truth.gate)
		wg.Wait()
		close(results)
		for res := range results {
			if res.Record != rec || res.Source != SourcePostgres {
				t.Errorf("caller got source %v record %p", res.Source, res.Record)
			}
		}
		if q := truth.queries.Load(); q != 1 {
			t.Errorf("%d concurrent misses made %d postgres queries, want 1", callers, q)
		}
	})
}

// Fills queued while one is being written go to Redis together; a read
// stays shared until its fill has landed; beyond maxFills, fills are
// dropped and counted, and their tokens read again.
func TestReadThroughBatchesFills(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := time.Now().Add(time.Hour)
		truth := &fakeTruth{rows: map[string]*Record{}}
		toks := make([]string, 5)
		for i := range toks {
			toks[i] = fmt.Sprintf("tok%d", i)
			truth.rows[toks[i]] = &Record{ID: toks[i], UserID: "u", ExpiresAt: exp}
		}
		cache := &fakeCache{m: map[string]*Record{}}
		rt := newTestReadThrough(cache, truth, nil)
		ctx := context.Background()
		gate := make(chan struct{})
		cache.fillGate.Store(&gate)
		for _, tok := range toks { // the first fill is held; the others queue behind it
			if res, err := rt.Validate(ctx, tok); err != nil || res.Record.ID != tok {
				t.Fatal(res, err)
			}
			synctest.Wait()
		}
		if q := truth.queries.Load(); q != 5 {
			t.Fatalf("%d queries, want 5", q)
		}
		if res, err := rt.Validate(ctx, toks[3]); err != nil || res.Source != SourcePostgres || res.Record.ID != toks[3] {
			t.Fatal(res, err)
		}
		if q := truth.queries.Load(); q != 5 {
			t.Errorf("a token whose fill has not landed was read again: %d queries, want 5", q)
		}
		// Beyond maxFills: dropped.
		rt.fills.Add(maxFills - rt.fills.Load())
		truth.set("over", &Record{ID: "over", UserID: "u", ExpiresAt: exp})
		if _, err := rt.Validate(ctx, "over"); err != nil {
			t.Fatal(err)
		}
		// The read decides on its fill after its callers have their
		// answer: let it, before the count goes back down.
		synctest.Wait()
		rt.fills.Add(-(maxFills - 5))
		close(gate)
		rt.Wait()
		if got := cache.batches; !slices.Equal(got, []int{1, 4}) {
			t.Errorf("fills per SetFills: %v, want [1 4]", got)
		}
		for _, tok := range toks {
			if cache.get(Key(TokenHash(tok))) == nil {
				t.Errorf("%s not filled", tok)
			}
		}
		if d := rt.Counters().FillsDropped.Load(); d != 1 || cache.get(Key(TokenHash("over"))) != nil {
			t.Errorf("dropped %d (over filled: %v), want 1, not filled", d, cache.get(Key(TokenHash("over"))) != nil)
		}
		if rt.fills.Load() != 0 {
			t.Errorf("%d fills under way after Wait", rt.fills.Load())
		}
		before := truth.queries.Load()
		if _, err := rt.Validate(ctx, "over"); err != nil || truth.queries.Load() != before+1 {
			t.Errorf("a token whose fill was dropped: %v, %d queries; want read again", err, truth.queries.Load()-before)
		}
		rt.Wait()
	})
}

// A caller who arrives after an invalidation was handled does not share a
// Postgres read that began before it: it reads again. The caller who started
// the older read (it arrived before the invalidation) keeps its answer.
func TestReadThroughDoesNotShareReadsOlderThanAnInvalidation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		valid := &Record{ID: "s1", UserID: "u1", ExpiresAt: time.Now().Add(time.Hour)}
		banned := &Record{ID: "s1", UserID: "u1", ExpiresAt: valid.ExpiresAt, BannedUntil: ptrTime(time.Now().Add(time.Hour))}
		truth := &fakeTruth{rows: map[string]*Record{"tok": valid}, gate: make(chan struct{})}
		cache := &fakeCache{m: map[string]*Record{}}
		rt := newTestReadThrough(cache, truth, nil)

		validate := func() chan Result {
			ch := make(chan Result, 1)
			go func() {
				res, err := rt.Validate(context.Background(), "tok")
				if err != nil {
					t.Error(err)
				}
				ch <- res
			}()
			return ch
		}
		x := validate()
		synctest.Wait() // X's read has begun (and is held)
		truth.set("tok", banned)
		cache.seq.Add(1) // the ban is committed and handled
		y := validate()
		z := validate() // arrives with Y: shares Y's read
		synctest.Wait()
		close(truth.gate)
		if res := <-x; res.Reason != ReasonNone {
			t.Errorf("X (arrived before the ban) got %v, want valid", res.Reason)
		}
		for name, ch := range map[string]chan Result{"Y": y, "Z": z} {
			if res := <-ch; res.Reason != ReasonUserBanned {
				t.Errorf("%s (arrived after the ban was handled) got %v, want banned", name, res.Reason)
			}
		}
		if q, r := truth.queries.Load(), rt.Counters().Rereads.Load(); q != 2 || r != 1 {
			t.Errorf("%d queries, %d rereads; want 2 and 1", q, r)
		}
	})
}

func TestReadThroughCallerLeavesOthersStay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &Record{ID: "s1", UserID: "u1", ExpiresAt: time.Now().Add(time.Hour)}
		truth := &fakeTruth{rows: map[string]*Record{"tok": rec}, gate: make(chan struct{})}
		rt := newTestReadThrough(&fakeCache{m: map[string]*Record{}}, truth, nil)

		leaver, leave := context.WithCancel(context.Background())
		leaverErr := make(chan error, 1)
		go func() {
			_, err := rt.Validate(leaver, "tok")
			leaverErr <- err
		}()
		stayer := make(chan Result, 1)
		go func() {
			res, _ := rt.Validate(context.Background(), "tok")
			stayer <- res
		}()
		synctest.Wait()
		leave()
		if err := <-leaverErr; !errors.Is(err, context.Canceled) {
			t.Errorf("leaver got %v, want context.Canceled", err)
		}
		close(truth.gate)
		if res := <-stayer; res.Record != rec {
			t.Errorf("the caller who stayed got %+v, want the session", res)
		}
	})
}

func TestReadThroughPostgresTimeoutIsUnavailable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		truth := &fakeTruth{gate: make(chan struct{})} // never answers
		rt := newTestReadThrough(&fakeCache{m: map[string]*Record{}}, truth, nil)
		_, err := rt.Validate(context.Background(), "tok")
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("a hung postgres gave %v, want ErrUnavailable", err)
		}
	})
}

func TestReadThroughRefusesBadTokensBeforeAnyTier(t *testing.T) {
	cache := &fakeCache{m: map[string]*Record{}}
	truth := &fakeTruth{}
	rt := newTestReadThrough(cache, truth, nil)
	if _, err := rt.Validate(context.Background(), "bad\ntoken\x00"); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("err = %v", err)
	}
	if truth.queries.Load() != 0 || len(cache.m) != 0 {
		t.Error("a malformed token reached a tier")
	}
}

// Early reads: after a window of round trips in which Redis rarely had the
// key, a miss's Postgres read begins while its Redis read is still under
// way; when Redis then has the key, its answer is the one given and the
// early read fills nothing; after a window in which Redis had a quarter of
// the keys, misses wait for Redis again before asking Postgres.
func TestReadThroughEarlyReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := time.Now().Add(time.Hour)
		inRedis := &Record{ID: "s2", UserID: "u2", ExpiresAt: exp}
		truth := &fakeTruth{rows: map[string]*Record{
			"tok1": {ID: "s1", UserID: "u1", ExpiresAt: exp},
			"tok2": {ID: "s2", UserID: "u2", ExpiresAt: exp},
			"tok3": {ID: "s3", UserID: "u3", ExpiresAt: exp},
			"tok4": {ID: "s4", UserID: "u4", ExpiresAt: exp},
		}, delay: time.Millisecond} // slower than the fake Redis, as Postgres is
		cache := &fakeCache{m: map[string]*Record{Key(TokenHash("tok2")): inRedis}}
		rt := newTestReadThrough(cache, truth, nil)
		ctx := context.Background()
		c := rt.Counters()
		// validating starts a Validate of tok; its answer comes on the channel.
		validating := func(tok string) <-chan Result {
			done := make(chan Result, 1)
			go func() {
				res, err := rt.Validate(ctx, tok)
				if err != nil {
					t.Error(err)
				}
				done <- res
			}()
			return done
		}

		// Off at start: Postgres is asked only once Redis has missed.
		cache.gate, truth.gate = make(chan struct{}), make(chan struct{})
		done := validating("tok1")
		synctest.Wait()
		if q := truth.queries.Load(); q != 0 {
			t.Fatalf("at start: %d queries while Redis was asked; want 0", q)
		}
		close(cache.gate)
		synctest.Wait()
		close(truth.gate)
		if res := <-done; res.Source != SourcePostgres {
			t.Fatalf("at start: source %v, want postgres", res.Source)
		}
		rt.Wait()
		cache.gate, truth.gate = nil, nil
		for i := range earlyWindow - 1 { // with tok1's, a window of round trips
			if _, err := rt.Validate(ctx, fmt.Sprintf("unknown%d", i)); err != nil {
				t.Fatal(err)
			}
		}

		// Redis missed a whole window: on. A miss asks Postgres alone (Redis
		// is held and never answers), then fills.
		early := func(tok string) Result {
			t.Helper()
			cache.gate = make(chan struct{})
			defer func() { close(cache.gate); cache.gate = nil }()
			done := validating(tok)
			synctest.Wait()
			time.Sleep(truth.delay) // the query's time passes; Redis is still held
			synctest.Wait()
			select {
			case res := <-done:
				rt.Wait() // the fill
				return res
			default:
				t.Fatalf("%s: the caller waits on Redis, though early reads are on", tok)
				return Result{}
			}
		}
		if res := early("tok3"); res.Source != SourcePostgres || res.Record.ID != "s3" {
			t.Fatalf("after a window of misses: %+v; want s3 from postgres", res)
		}
		if cache.get(Key(TokenHash("tok3"))) == nil {
			t.Error("the early read did not fill")
		}
		// An early read of a key Redis holds: Postgres's answer, and the
		// fill leaves Redis's entry as it is.
		sets := cache.sets.Load()
		if res := early("tok2"); res.Source != SourcePostgres || res.Record == inRedis || res.Record.ID != "s2" {
			t.Fatalf("early read of a key Redis holds: %+v; want s2 from postgres", res)
		}
		if cache.sets.Load() != sets || cache.get(Key(TokenHash("tok2"))) != inRedis {
			t.Error("an early read whose key Redis held wrote it again")
		}
		// Postgres fails: the caller asks Redis after all.
		truth.err = fmt.Errorf("%w: down", ErrUnavailable)
		if res, err := rt.Validate(ctx, "tok2"); err != nil || res.Source != SourceRedis || res.Record != inRedis {
			t.Fatalf("postgres down, key in Redis: %+v, %v; want Redis's answer", res, err)
		}
		if _, err := rt.Validate(ctx, "tok4"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("postgres down, key not in Redis: %v; want ErrUnavailable", err)
		}
		truth.err = nil
		rt.Wait()
		if c.EarlyReads.Load() != 4 || c.EarlyReadsUnused.Load() != 1 {
			t.Errorf("early reads %d, unused %d; want 4 and 1", c.EarlyReads.Load(), c.EarlyReadsUnused.Load())
		}

		// A window of round trips (with tok3's and tok2's fills; the failed
		// reads filled nothing) a quarter of which find their key in Redis:
		// off again.
		for i := range earlyWindow - 2 {
			tok := "tok2"
			if i%4 != 0 {
				tok = fmt.Sprintf("new%d", i)
				truth.set(tok, &Record{ID: tok, UserID: "u", ExpiresAt: exp})
			}
			if _, err := rt.Validate(ctx, tok); err != nil {
				t.Fatal(err)
			}
			rt.Wait() // its fill, the early read's round trip
		}
		if c.EarlyReadsUnused.Load() != 1+(earlyWindow-2+3)/4 {
			t.Errorf("unused %d, want %d", c.EarlyReadsUnused.Load(), 1+(earlyWindow-2+3)/4)
		}
		cache.gate, truth.gate = make(chan struct{}), make(chan struct{})
		before := truth.queries.Load()
		done = validating("tok4")
		synctest.Wait()
		q := truth.queries.Load() - before
		close(cache.gate)
		close(truth.gate)
		<-done
		rt.Wait()
		if q != 0 {
			t.Errorf("after a window of a quarter Redis hits: %d queries while Redis was asked; want 0", q)
		}
	})
}
