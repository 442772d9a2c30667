// Package schema creates the platform tables sessiond reads, when they are absent.
package schema

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
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

// Channel is the LISTEN/NOTIFY channel the triggers notify. Payloads say
// what the cache must drop, never a token (a key is the hex SHA-256 of a
// token, which is what the cache is keyed by):
//
//	u:<user id>[,<user id>...]   users deleted, or whose deleted_at or banned_until changed
//	s:<key>[,<key>...]           sessions deleted, or whose token, expires_at or user_id changed (their old key)
//	i:<key>[,<key>...]           tokens a session was just created with (a cached "no such session" must go)
//	t                            a table was truncated: nothing cached may be believed
//
// Each statement sends a few notifications, whatever the number of rows
// (lists of at most 100 keys or 150 user ids, under the 8000-byte payload
// limit). Changes to sessions that were expired before and after (a purge
// of expired rows) are left out: their cached answer, "expired", may read
// so for up to the negative TTL after a deletion. sessiond's own heartbeats
// (h:...) go over the same channel; see package invalidate.
const Channel = "sessiond_invalidate"

// TriggerVersion is the version of the triggers Migrate installs; it is
// recorded, with the token storage they hash for, in the comment of
// sessiond_sessions_changed (see InstalledTriggers).
const TriggerVersion = 2

// v1 objects, replaced by Migrate: row triggers with UPDATE OF column lists
// (bypassed by an application's BEFORE trigger that changes those columns)
// and a payload that needed a Postgres query per notification.
var (
	v1Triggers  = [][2]string{{"user_sessions", "sessiond_session_insert"}, {"user_sessions", "sessiond_session_update"}, {"user_sessions", "sessiond_session_delete"}, {"users", "sessiond_user_update"}, {"users", "sessiond_user_delete"}}
	v1Functions = []string{"sessiond_notify_session", "sessiond_notify_user"}
)

// keyExpr is the SQL of the cache key (without its "session:" prefix) of a
// token column: the column itself when it holds the hash, its SHA-256 when
// it holds the raw token (never sent as it is).
func keyExpr(col string, plain bool) string {
	if plain {
		return "encode(sha256(convert_to(" + col + ", 'UTF8')), 'hex')"
	}
	return "lower(" + col + ")"
}

// notifyLoop is PL/pgSQL that sends prefix + a comma-separated list of the
// values of query's column v, chunk at a time.
func notifyLoop(prefix, query string, chunk int) string {
	return fmt.Sprintf(`FOR p IN SELECT string_agg(v, ',') FROM (SELECT v, row_number() OVER () AS r FROM (%s) q) c GROUP BY (r - 1) / %d LOOP
		PERFORM pg_notify('%s', '%s' || p);
	END LOOP;`, query, chunk, Channel, prefix)
}

// triggerSteps installs the statement-level triggers (with transition
// tables) that tell every sessiond instance what to drop from its cache.
// They have no column lists and no WHEN: the body compares old and new rows,
// so no change of interest escapes them, whoever made it. The functions and
// triggers are sessiond's own (sessiond_ prefix) and are replaced on every
// migrate, so a migrate upgrades triggers of an earlier version in place.
func triggerSteps(plain bool) []step {
	storage := "hash"
	if plain {
		storage = "plain"
	}
	live := func(a string) string { return "coalesce(" + a + ".expires_at > now(), true)" }
	changed := "o.token IS DISTINCT FROM n.token OR o.expires_at IS DISTINCT FROM n.expires_at OR o.user_id IS DISTINCT FROM n.user_id"
	fn := func(name, body string) step {
		return step{"create function platform." + name, `CREATE OR REPLACE FUNCTION platform.` + name + `() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE p text;
BEGIN
	` + body + `
	RETURN NULL;
END
$fn$`}
	}
	var drops []string
	for _, t := range v1Triggers {
		drops = append(drops, fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON platform.%s;", t[1], t[0]))
	}
	for _, f := range v1Functions {
		drops = append(drops, fmt.Sprintf("DROP FUNCTION IF EXISTS platform.%s();", f))
	}
	create := func(table, name, event, referencing, function string) string {
		return fmt.Sprintf(`DROP TRIGGER IF EXISTS %[2]s ON platform.%[1]s;
CREATE TRIGGER %[2]s AFTER %[3]s ON platform.%[1]s %[4]s FOR EACH STATEMENT EXECUTE FUNCTION platform.%[5]s();`,
			table, name, event, referencing, function)
	}
	return []step{
		{"drop the triggers of version 1", strings.Join(drops, "\n")},
		// Every new token, expired or not: a cached "no such session" may
		// be there for any.
		fn("sessiond_sessions_inserted", notifyLoop("i:",
			`SELECT `+keyExpr("n.token", plain)+` AS v FROM new_rows n`, 100)),
		fn("sessiond_sessions_changed", notifyLoop("s:",
			`SELECT `+keyExpr("o.token", plain)+` AS v FROM old_rows o LEFT JOIN new_rows n ON n.id = o.id
			WHERE (n.id IS NULL OR `+changed+`) AND (`+live("o")+` OR coalesce(n.expires_at > now(), false))`, 100)+`
	`+notifyLoop("i:",
			`SELECT `+keyExpr("n.token", plain)+` AS v FROM new_rows n LEFT JOIN old_rows o ON o.id = n.id
			WHERE o.id IS NULL OR o.token IS DISTINCT FROM n.token`, 100)),
		fn("sessiond_sessions_deleted", notifyLoop("s:",
			`SELECT `+keyExpr("o.token", plain)+` AS v FROM old_rows o WHERE `+live("o"), 100)),
		fn("sessiond_users_changed", notifyLoop("u:",
			`SELECT o.id::text AS v FROM old_rows o LEFT JOIN new_rows n ON n.id = o.id
			WHERE n.id IS NULL OR o.deleted_at IS DISTINCT FROM n.deleted_at OR o.banned_until IS DISTINCT FROM n.banned_until`, 150)),
		fn("sessiond_users_deleted", notifyLoop("u:", `SELECT o.id::text AS v FROM old_rows o`, 150)),
		fn("sessiond_truncated", `PERFORM pg_notify('`+Channel+`', 't');`),
		{"record the trigger version", fmt.Sprintf(`COMMENT ON FUNCTION platform.sessiond_sessions_changed() IS 'sessiond triggers v%d token-storage=%s'`, TriggerVersion, storage)},
		{"create triggers", strings.Join([]string{
			create("user_sessions", "sessiond_sessions_insert", "INSERT", "REFERENCING NEW TABLE AS new_rows", "sessiond_sessions_inserted"),
			create("user_sessions", "sessiond_sessions_update", "UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows", "sessiond_sessions_changed"),
			create("user_sessions", "sessiond_sessions_delete", "DELETE", "REFERENCING OLD TABLE AS old_rows", "sessiond_sessions_deleted"),
			create("user_sessions", "sessiond_sessions_truncate", "TRUNCATE", "", "sessiond_truncated"),
			create("users", "sessiond_users_update", "UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows", "sessiond_users_changed"),
			create("users", "sessiond_users_delete", "DELETE", "REFERENCING OLD TABLE AS old_rows", "sessiond_users_deleted"),
			create("users", "sessiond_users_truncate", "TRUNCATE", "", "sessiond_truncated"),
		}, "\n")},
	}
}

// Querier runs a query that returns one row. *pgxpool.Pool, *pgx.Conn and
// pgx.Tx satisfy it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// InstalledTriggers reports the version of the invalidation triggers in the
// database and the token storage they were installed for: (0, "", nil) when
// none are installed, 1 for the triggers of the first version (no storage).
func InstalledTriggers(ctx context.Context, db Querier) (version int, storage string, err error) {
	var v2comment *string
	var v1 bool
	err = db.QueryRow(ctx, `SELECT
		(SELECT obj_description(p.oid, 'pg_proc') FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace
			WHERE ns.nspname = 'platform' AND p.proname = 'sessiond_sessions_changed'),
		EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'sessiond_session_insert')`).Scan(&v2comment, &v1)
	if err != nil {
		return 0, "", fmt.Errorf("read installed triggers: %w", err)
	}
	if v2comment != nil {
		if _, err := fmt.Sscanf(*v2comment, "sessiond triggers v%d token-storage=%s", &version, &storage); err != nil {
			return 0, "", fmt.Errorf("read installed triggers: comment %q: %w", *v2comment, err)
		}
		return version, storage, nil
	}
	if v1 {
		return 1, "", nil
	}
	return 0, "", nil
}

// Option changes what Migrate does.
type Option func(*options)

type options struct{ noTriggers, plain bool }

// WithoutTriggers leaves the invalidation triggers out, for databases where
// sessiond may not install them (the application then calls
// InvalidateSessions itself).
func WithoutTriggers() Option { return func(o *options) { o.noTriggers = true } }

// WithPlainTokens installs triggers for a token column that holds raw
// tokens (sessiond's --token-storage=plain): they send the SHA-256 of the
// column, never the column itself.
func WithPlainTokens() Option { return func(o *options) { o.plain = true } }

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
		fmt.Fprintf(&b, "-- %s\n%s;\n", s.name, strings.TrimSuffix(s.sql, ";"))
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
		all = append(all, triggerSteps(o.plain)...)
	}
	if _, err := db.Exec(ctx, script(all)); err != nil {
		return fmt.Errorf("schema: migrate: %w", err)
	}
	return nil
}
