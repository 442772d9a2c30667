package tiers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
)

// An application migration that changes a column Lookup returns (here
// user_agent from text to varchar) leaves each pooled connection holding a
// prepared statement Postgres now refuses; Lookup asks again instead of
// failing its caller.
func TestLookupAfterAColumnChangesType(t *testing.T) {
	ctx := t.Context()
	// One connection: the one that prepared the statement is the one asked again.
	pool := onePool(t)
	tok := newToken(t)
	if _, err := pool.Exec(ctx, `WITH u AS (INSERT INTO platform.users (id, email) VALUES (gen_random_uuid(), 'm@example.test') RETURNING id)
		INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at, user_agent)
		SELECT gen_random_uuid(), u.id, $1, now() + interval '1 hour', now(), 'Mozilla/5.0' FROM u`, TokenHash(tok)); err != nil {
		t.Fatal(err)
	}
	pg := NewPostgres(pool, PostgresOptions{Storage: TokenStorageHash})
	if rec, err := pg.Lookup(ctx, tok); err != nil || rec == nil {
		t.Fatalf("before the migration: %v, %v", rec, err)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE platform.user_sessions ALTER COLUMN user_agent TYPE varchar(512)`); err != nil {
		t.Fatal(err)
	}
	rec, err := pg.Lookup(ctx, tok)
	if err != nil || rec == nil || rec.UserAgent == nil || *rec.UserAgent != "Mozilla/5.0" {
		t.Fatalf("after the migration: %+v, %v", rec, err)
	}
}

// Lookups that arrive while every allowed query is under way wait and go
// together in one query when one ends: each gets its own answer (a
// session, none, the same token twice), a waiter whose context ends leaves
// the queue alone, and a row sessiond cannot read fails its own lookup only.
func TestLookupsShareQueries(t *testing.T) {
	ctx := t.Context()
	// One connection, held by each case, so that the first lookup's query waits.
	pool := onePool(t)
	want := map[string]string{} // token: session id, "" for none
	session := func(firstName any) string {
		tok := newToken(t)
		var id string
		if err := pool.QueryRow(ctx, `WITH u AS (INSERT INTO platform.users (id, email, first_name) VALUES (gen_random_uuid(), 's@example.test', $2) RETURNING id)
			INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			SELECT gen_random_uuid(), u.id, $1, now() + interval '1 hour', now() FROM u RETURNING id::text`, TokenHash(tok), firstName).Scan(&id); err != nil {
			t.Fatal(err)
		}
		want[tok] = id
		return tok
	}
	a, b, named, unknown := session(nil), session(nil), session("Ann"), newToken(t)
	want[unknown] = ""
	pg := NewPostgres(pool, PostgresOptions{Storage: TokenStorageHash, Concurrent: 1})
	// Cases but the last hold the first's query as long as they need.
	pg.share.slow = time.Hour
	waitFor := func(t *testing.T, what string, cond func(s *sharing) bool) {
		t.Helper()
		devtest.Eventually(t, 10*time.Second, func() error {
			pg.share.mu.Lock()
			defer pg.share.mu.Unlock()
			if !cond(pg.share) {
				return fmt.Errorf("waiting until %s: %d under way, %d waiting", what, pg.share.busy, len(pg.share.waiting))
			}
			return nil
		})
	}

	type answer struct {
		tok string
		rec *Record
		err error
	}
	// run looks up first while the pool's one connection is held (its
	// query waits for it), then rest, each under its context, which wait
	// for first's place; meanwhile runs once they all wait, then the
	// connection is let go.
	run := func(t *testing.T, first string, rest []string, ctxs []context.Context, meanwhile func()) map[int]answer {
		t.Helper()
		held, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Release() // again, harmless: a failing wait must not hang the pool's Close
		type indexed struct {
			i int
			answer
		}
		out := make(chan indexed, 1+len(rest))
		lookup := func(i int, ctx context.Context, tok string) {
			rec, err := pg.Lookup(ctx, tok)
			out <- indexed{i, answer{tok, rec, err}}
		}
		go lookup(0, ctx, first)
		waitFor(t, "the first is under way", func(s *sharing) bool { return s.busy == 1 })
		for i, tok := range rest {
			go lookup(i+1, ctxs[i], tok)
		}
		waitFor(t, "the rest wait", func(s *sharing) bool { return len(s.waiting) == len(rest) })
		meanwhile()
		held.Release()
		answers := map[int]answer{}
		for range 1 + len(rest) {
			got := <-out
			answers[got.i] = got.answer
		}
		waitFor(t, "all is done", func(s *sharing) bool { return s.busy == 0 && len(s.waiting) == 0 })
		return answers
	}
	same := func(n int) []context.Context { return slices.Repeat([]context.Context{ctx}, n) }
	check := func(t *testing.T, got answer) {
		t.Helper()
		switch w := want[got.tok]; {
		case got.err != nil:
			t.Errorf("%s…: %v", got.tok[:6], got.err)
		case w == "" && got.rec != nil:
			t.Errorf("%s…: got session %s, want none", got.tok[:6], got.rec.ID)
		case w != "" && (got.rec == nil || got.rec.ID != w):
			t.Errorf("%s…: got %+v, want session %s", got.tok[:6], got.rec, w)
		}
	}

	t.Run("waiters share one query", func(t *testing.T) {
		before := pg.Queries()
		for _, got := range run(t, a, []string{b, unknown, a, b}, same(4), func() {}) {
			check(t, got)
		}
		if q := pg.Queries() - before; q != 2 {
			t.Errorf("%d queries for 5 lookups, want 2 (the first's, then one for the 4 waiting)", q)
		}
	})

	t.Run("a waiter whose context ends leaves alone", func(t *testing.T) {
		short, cancel := context.WithCancel(ctx)
		defer cancel()
		before := pg.Queries()
		answers := run(t, a, []string{b, unknown, a}, []context.Context{ctx, short, ctx}, func() {
			cancel()
			waitFor(t, "the cancelled one left", func(s *sharing) bool { return len(s.waiting) == 2 })
		})
		for i, got := range answers {
			if i == 2 {
				if !errors.Is(got.err, context.Canceled) || got.rec != nil {
					t.Errorf("the waiter that left: %+v, %v; want context.Canceled", got.rec, got.err)
				}
				continue
			}
			check(t, got)
		}
		if q := pg.Queries() - before; q != 2 {
			t.Errorf("%d queries, want 2", q)
		}
	})

	t.Run("a slow query lets those waiting go ahead", func(t *testing.T) {
		pg.share.slow = slowLookup
		defer func() { pg.share.slow = time.Hour }()
		before := pg.SlowQueries()
		held, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Release() // again, harmless: a failing wait must not hang the pool's Close
		out := make(chan answer, 2)
		for _, tok := range []string{a, b} {
			go func() {
				rec, err := pg.Lookup(ctx, tok)
				out <- answer{tok, rec, err}
			}()
		}
		// The connection is held: no query ends, yet the place of the
		// first goes to the second when the first has taken slowLookup.
		// Two places given up means both lookups held one: the second did
		// not wait for the first to end.
		waitFor(t, "no lookup waits behind the slow one", func(s *sharing) bool {
			return pg.SlowQueries() >= before+2 && len(s.waiting) == 0
		})
		held.Release()
		for range 2 {
			check(t, <-out)
		}
		waitFor(t, "all is done", func(s *sharing) bool { return s.busy == 0 && len(s.waiting) == 0 })
	})

	t.Run("a query that fails fails each lookup", func(t *testing.T) {
		// A schema the lookup no longer fits (the failure of every query,
		// as when Postgres refuses connections).
		if _, err := pool.Exec(ctx, `ALTER TABLE platform.users RENAME COLUMN email TO mail`); err != nil {
			t.Fatal(err)
		}
		answers := run(t, a, []string{b, unknown, a}, same(3), func() {})
		if _, err := pool.Exec(ctx, `ALTER TABLE platform.users RENAME COLUMN mail TO email`); err != nil {
			t.Fatal(err)
		}
		for i, got := range answers {
			if got.err == nil || got.rec != nil {
				t.Errorf("lookup %d: %+v, %v; want an error", i, got.rec, got.err)
			}
		}
	})

	t.Run("an unreadable row fails its own lookup only", func(t *testing.T) {
		// banned_until becomes a number, which sessiond cannot read as a
		// time: set for Ann alone, NULL (readable) for the others.
		if _, err := pool.Exec(ctx, `ALTER TABLE platform.users ALTER COLUMN banned_until TYPE int USING CASE WHEN first_name = 'Ann' THEN 1 END`); err != nil {
			t.Fatal(err)
		}
		answers := run(t, a, []string{b, named, unknown}, same(3), func() {})
		for i, got := range answers {
			if i == 2 {
				if !errors.Is(got.err, ErrUnreadable) {
					t.Errorf("the unreadable row: %+v, %v; want ErrUnreadable", got.rec, got.err)
				}
				continue
			}
			check(t, got)
		}
	})
}

// onePool is a pool of one connection on a fresh, migrated database.
func onePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(devtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// newToken is a random token of the usual shape (64 hex digits).
func newToken(t *testing.T) string {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}
