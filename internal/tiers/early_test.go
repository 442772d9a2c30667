package tiers

import (
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
)

// Early reads against a real Redis and Postgres: a window of never-seen
// tokens turns them on; a miss then answers from Postgres and fills Redis;
// a session Redis already held is answered and left as Redis held it (its
// entry keeps its own read start, not rewritten by the early read).
func TestEarlyReadsAgainstRealServers(t *testing.T) {
	ctx := t.Context()
	pool := devtest.Pool(t)
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	fresh, held := newToken(t), newToken(t)
	for _, tok := range []string{fresh, held} {
		if _, err := pool.Exec(ctx, `WITH u AS (INSERT INTO platform.users (id, email) VALUES (gen_random_uuid(), 'e@example.test') RETURNING id)
			INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			SELECT gen_random_uuid(), u.id, $1, now() + interval '1 hour', now() FROM u`, TokenHash(tok)); err != nil {
			t.Fatal(err)
		}
	}
	r := trustedRedis(t, devtestRedisURL(t))
	pg := NewPostgres(pool, PostgresOptions{Storage: TokenStorageHash})
	rt := NewReadThrough(r, pg, ReadThroughOptions{RedisTimeout: time.Second, PostgresTimeout: 5 * time.Second}, discard)
	t.Cleanup(rt.Wait)

	// Redis holds the session of held, read a while ago (by another
	// instance, say); this process has never read it.
	gen, err := r.Gen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := pg.Lookup(ctx, held)
	if err != nil || rec == nil {
		t.Fatal(rec, err)
	}
	readAt := time.Now().Add(-time.Second).Truncate(time.Millisecond)
	if _, err := r.Set(ctx, TokenKey(held), rec, Stamp{ReadStart: readAt, Gen: gen}); err != nil {
		t.Fatal(err)
	}

	// A window is earlyWindow round trips to Redis. A call the fence
	// distrusts makes none (a connection rueidis dials on first use is
	// distrusted until verified), so the window may take a few calls more.
	for calls := 0; rt.early.trips.Load() < earlyWindow; calls++ {
		if calls == 2*earlyWindow {
			t.Fatalf("%d calls made %d round trips to Redis", calls, rt.early.trips.Load())
		}
		res, err := rt.Validate(ctx, newToken(t))
		if err != nil || res.Reason != ReasonNotFound {
			t.Fatal(res, err)
		}
	}
	if !rt.early.on.Load() {
		t.Fatal("a window of never-seen tokens did not turn early reads on")
	}
	waitTrusted(t, r.Fence(), true)
	c := rt.Counters()
	reads, unused := c.EarlyReads.Load(), c.EarlyReadsUnused.Load()

	res, err := rt.Validate(ctx, fresh)
	if err != nil || !res.Valid() || res.Source != SourcePostgres {
		t.Fatalf("a session only Postgres has: %+v, %v; want valid from postgres", res, err)
	}
	rt.Wait()
	raw, err := r.Client()
	if err != nil {
		t.Fatal(err)
	}
	// Redis itself: this process's copy of "nothing there" may not have
	// heard of the fill yet.
	if b, err := raw.Do(ctx, raw.B().Get().Key(TokenKey(fresh)).Build()).AsBytes(); err != nil || len(b) == 0 {
		t.Errorf("the early read did not fill Redis: %v", err)
	}
	if c.EarlyReads.Load() != reads+1 || c.EarlyReadsUnused.Load() != unused {
		t.Errorf("early reads %d → %d, unused %d → %d; want one more read, no more unused", reads, c.EarlyReads.Load(), unused, c.EarlyReadsUnused.Load())
	}

	waitTrusted(t, r.Fence(), true)
	res, err = rt.Validate(ctx, held)
	if err != nil || !res.Valid() || res.Record.ID != rec.ID {
		t.Fatalf("a session Redis held: %+v, %v; want it valid", res, err)
	}
	rt.Wait()
	if c.EarlyReads.Load() != reads+2 || c.EarlyReadsUnused.Load() != unused+1 {
		t.Errorf("early reads %d, unused %d; want %d and %d", c.EarlyReads.Load(), c.EarlyReadsUnused.Load(), reads+2, unused+1)
	}
	b, err := raw.Do(ctx, raw.B().Get().Key(TokenKey(held)).Build()).AsBytes()
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := decodeEntry(b); err != nil || h.readStart != readAt.UnixMilli() {
		t.Errorf("held's entry read at %d (%v), want %d: the early read rewrote what Redis held", h.readStart, err, readAt.UnixMilli())
	}
}
