// Package schema creates the platform tables sessiond reads, when they are absent.
package schema

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Execer runs SQL. *pgxpool.Pool, *pgx.Conn and pgx.Tx satisfy it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// lockKey is the pg_advisory_xact_lock key that serialises concurrent
// migrations: "sessiond" in ASCII read as a big-endian int64, so it is
// unlikely to collide with another application's advisory locks.
const lockKey int64 = 0x73657373696f6e64

// A step is one idempotent statement of the migration. The name exists for
// readers and for the script's comments; steps run in slice order.
type step struct {
	name string
	sql  string
}

// steps returns the migration in order. sessiond reads this schema but does
// not own it, so every step must be a no-op where the object already exists,
// whoever created it and however it differs: CREATE ... IF NOT EXISTS only,
// never DROP or ALTER. Later changes append steps; they do not edit old ones.
func steps() []step {
	return []step{
		{"create schema platform", `CREATE SCHEMA IF NOT EXISTS platform`},
		{"create table platform.users", `CREATE TABLE IF NOT EXISTS platform.users (
	id           uuid PRIMARY KEY,
	email        text NOT NULL,
	first_name   text,
	last_name    text,
	username     text,
	deleted_at   timestamptz,
	banned_until timestamptz
)`},
		// token is the lowercase hex SHA-256 of the raw token, never the raw token.
		{"create table platform.user_sessions", `CREATE TABLE IF NOT EXISTS platform.user_sessions (
	id               uuid PRIMARY KEY,
	user_id          uuid NOT NULL REFERENCES platform.users (id),
	token            text NOT NULL UNIQUE,
	expires_at       timestamptz NOT NULL,
	last_activity_at timestamptz NOT NULL,
	ip_address       inet,
	user_agent       text,
	created_at       timestamptz NOT NULL DEFAULT now()
)`},
		// Cache warming reads the most recently active sessions first.
		{"create index idx_user_sessions_activity", `CREATE INDEX IF NOT EXISTS idx_user_sessions_activity
	ON platform.user_sessions (last_activity_at DESC)`},
		{"create index idx_user_sessions_token", `CREATE INDEX IF NOT EXISTS idx_user_sessions_token
	ON platform.user_sessions (token, expires_at)`},
	}
}

// Channel is the LISTEN/NOTIFY channel the triggers notify. Payloads name
// what changed, never a token:
//
//	u:<user id>                  a user was deleted, or deleted_at or banned_until changed
//	s:<session id>:<user id>     a session was deleted, or its token, expires_at or user_id changed
//	i:<session id>               a session was inserted, or given a new token
const Channel = "sessiond_invalidate"

// triggerSteps installs the triggers that tell every sessiond instance what
// to drop from its cache. The functions are sessiond's own (sessiond_
// prefix) and are replaced on every migrate; the triggers are created only
// where absent. A WHEN clause keeps updates that change nothing of interest
// quiet.
func triggerSteps() []step {
	return []step{
		{"create function platform.sessiond_notify_session", `CREATE OR REPLACE FUNCTION platform.sessiond_notify_session() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
	IF TG_OP = 'INSERT' THEN
		PERFORM pg_notify('` + Channel + `', 'i:' || NEW.id);
		RETURN NULL;
	END IF;
	PERFORM pg_notify('` + Channel + `', 's:' || OLD.id || ':' || OLD.user_id);
	IF TG_OP = 'UPDATE' THEN
		IF NEW.user_id IS DISTINCT FROM OLD.user_id THEN
			PERFORM pg_notify('` + Channel + `', 's:' || NEW.id || ':' || NEW.user_id);
		END IF;
		IF NEW.token IS DISTINCT FROM OLD.token THEN
			-- a cached "no such session" for the new token must go
			PERFORM pg_notify('` + Channel + `', 'i:' || NEW.id);
		END IF;
	END IF;
	RETURN NULL;
END
$fn$`},
		{"create function platform.sessiond_notify_user", `CREATE OR REPLACE FUNCTION platform.sessiond_notify_user() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
	PERFORM pg_notify('` + Channel + `', 'u:' || OLD.id);
	RETURN NULL;
END
$fn$`},
		{"create triggers", `DO $do$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'platform.user_sessions'::regclass AND tgname = 'sessiond_session_insert') THEN
		CREATE TRIGGER sessiond_session_insert AFTER INSERT ON platform.user_sessions
			FOR EACH ROW EXECUTE FUNCTION platform.sessiond_notify_session();
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'platform.user_sessions'::regclass AND tgname = 'sessiond_session_update') THEN
		CREATE TRIGGER sessiond_session_update AFTER UPDATE OF token, expires_at, user_id ON platform.user_sessions
			FOR EACH ROW WHEN (OLD.token IS DISTINCT FROM NEW.token OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
				OR OLD.user_id IS DISTINCT FROM NEW.user_id)
			EXECUTE FUNCTION platform.sessiond_notify_session();
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'platform.user_sessions'::regclass AND tgname = 'sessiond_session_delete') THEN
		CREATE TRIGGER sessiond_session_delete AFTER DELETE ON platform.user_sessions
			FOR EACH ROW EXECUTE FUNCTION platform.sessiond_notify_session();
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'platform.users'::regclass AND tgname = 'sessiond_user_update') THEN
		CREATE TRIGGER sessiond_user_update AFTER UPDATE OF deleted_at, banned_until ON platform.users
			FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at OR OLD.banned_until IS DISTINCT FROM NEW.banned_until)
			EXECUTE FUNCTION platform.sessiond_notify_user();
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'platform.users'::regclass AND tgname = 'sessiond_user_delete') THEN
		CREATE TRIGGER sessiond_user_delete AFTER DELETE ON platform.users
			FOR EACH ROW EXECUTE FUNCTION platform.sessiond_notify_user();
	END IF;
END
$do$`},
	}
}

// Option changes what Migrate does.
type Option func(*options)

type options struct{ noTriggers bool }

// WithoutTriggers leaves the invalidation triggers out, for databases where
// sessiond may not install them (the application then calls
// InvalidateSessions itself).
func WithoutTriggers() Option { return func(o *options) { o.noTriggers = true } }

// script joins the steps into one multi-statement string behind the advisory
// lock.
//
// It is one string, not one Exec per step, because Execer cannot begin a
// transaction and a pool may run each Exec on a different connection. Sent
// without arguments, pgx uses the simple query protocol, and PostgreSQL runs
// all statements of one simple query as a single implicit transaction (or
// inside the caller's, when db is a pgx.Tx). The lock is therefore held until
// every step has committed, and a failure rolls back every step.
//
// The lock is needed even though every step says IF NOT EXISTS: two sessions
// creating the same object at once can both pass the existence check, and the
// loser fails with unique_violation on pg_namespace, pg_type or pg_class.
func script(steps []step) string {
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT pg_advisory_xact_lock(%d);\n", lockKey)
	for _, s := range steps {
		fmt.Fprintf(&b, "-- %s\n%s;\n", s.name, s.sql)
	}
	return b.String()
}

// Migrate creates the platform schema, its tables and indexes where they do
// not exist yet, and leaves everything that exists untouched: existing
// tables keep their columns, constraints and rows even where they differ
// from what Migrate would have created. Running it again is a no-op.
//
// Concurrent calls, from this process or another instance, are serialised by
// a transaction-scoped advisory lock and all succeed. Migrate is all or
// nothing: on error nothing it created remains (when db is a pgx.Tx, the
// caller's transaction is aborted and must be rolled back). It honours ctx,
// including while it waits for another instance's migration; an expired
// or cancelled ctx yields an error wrapping the ctx error.
//
// On a populated user_sessions table, creating a missing index blocks writes
// to that table until the index is built.
//
// Unless WithoutTriggers is given, it also installs the triggers that notify
// Channel when a session or user changes (see triggerSteps).
func Migrate(ctx context.Context, db Execer, opts ...Option) error {
	var o options
	for _, f := range opts {
		f(&o)
	}
	all := steps()
	if !o.noTriggers {
		all = append(all, triggerSteps()...)
	}
	if _, err := db.Exec(ctx, script(all)); err != nil {
		return fmt.Errorf("schema: migrate: %w", err)
	}
	return nil
}
