package tiers

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

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
	cfg, err := pgxpool.ParseConfig(devtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // the connection that prepared the statement is the one asked again
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	tok := hex.EncodeToString(b[:])
	if _, err := pool.Exec(ctx, `WITH u AS (INSERT INTO platform.users (id, email) VALUES (gen_random_uuid(), 'm@example.test') RETURNING id)
		INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at, user_agent)
		SELECT gen_random_uuid(), u.id, $1, now() + interval '1 hour', now(), 'Mozilla/5.0' FROM u`, TokenHash(tok)); err != nil {
		t.Fatal(err)
	}
	pg := NewPostgres(pool, TokenStorageHash)
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
