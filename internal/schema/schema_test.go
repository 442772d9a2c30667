package schema_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
)

// The three things callers hand to Migrate.
var (
	_ schema.Execer = (*pgxpool.Pool)(nil)
	_ schema.Execer = (*pgx.Conn)(nil)
	_ schema.Execer = (pgx.Tx)(nil)
)

func TestMain(m *testing.M) { devtest.Main(m) }

func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// columns lists "table.column type nullability default" for the platform schema.
func columns(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), `
		SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
		FROM information_schema.columns
		WHERE table_schema = 'platform'
		ORDER BY table_name, ordinal_position`)
	if err != nil {
		t.Fatalf("query columns: %v", err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("read columns: %v", err)
	}
	return cols
}

// constraints lists the platform schema's constraints with their definitions.
func constraints(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), `
		SELECT c.conrelid::regclass::text || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid)
		FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
		WHERE n.nspname = 'platform'
		ORDER BY 1`)
	if err != nil {
		t.Fatalf("query constraints: %v", err)
	}
	cons, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("read constraints: %v", err)
	}
	return cons
}

// indexes maps index name to definition for the platform schema.
func indexes(t *testing.T, conn *pgx.Conn) map[string]string {
	t.Helper()
	rows, err := conn.Query(t.Context(), `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'platform'`)
	if err != nil {
		t.Fatalf("query indexes: %v", err)
	}
	defer rows.Close()
	idx := map[string]string{}
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			t.Fatalf("scan index: %v", err)
		}
		idx[name] = def
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read indexes: %v", err)
	}
	return idx
}

func checkIndexes(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	idx := indexes(t, conn)
	want := map[string]string{
		"idx_user_sessions_activity": "ON platform.user_sessions USING btree (last_activity_at DESC)",
		"idx_user_sessions_token":    "ON platform.user_sessions USING btree (token, expires_at)",
	}
	for name, suffix := range want {
		if def, ok := idx[name]; !ok {
			t.Errorf("index %s is missing; have %v", name, idx)
		} else if !strings.HasSuffix(def, suffix) {
			t.Errorf("index %s = %q, want it to end with %q", name, def, suffix)
		}
	}
}

func TestMigrateCreatesSchema(t *testing.T) {
	conn := connect(t, devtest.Database(t))
	if err := schema.Migrate(t.Context(), conn); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	want := []string{
		"user_sessions.id uuid NO ",
		"user_sessions.user_id uuid NO ",
		"user_sessions.token text NO ",
		"user_sessions.expires_at timestamp with time zone NO ",
		"user_sessions.last_activity_at timestamp with time zone NO ",
		"user_sessions.ip_address inet YES ",
		"user_sessions.user_agent text YES ",
		"user_sessions.created_at timestamp with time zone NO now()",
		"users.id uuid NO ",
		"users.email text NO ",
		"users.first_name text YES ",
		"users.last_name text YES ",
		"users.username text YES ",
		"users.deleted_at timestamp with time zone YES ",
		"users.banned_until timestamp with time zone YES ",
	}
	if got := columns(t, conn); !slices.Equal(got, want) {
		t.Errorf("columns:\n got %q\nwant %q", got, want)
	}
	wantCons := []string{
		"platform.user_sessions user_sessions_pkey PRIMARY KEY (id)",
		"platform.user_sessions user_sessions_token_key UNIQUE (token)",
		"platform.user_sessions user_sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES platform.users(id)",
		"platform.users users_pkey PRIMARY KEY (id)",
	}
	if got := constraints(t, conn); !slices.Equal(got, wantCons) {
		t.Errorf("constraints:\n got %q\nwant %q", got, wantCons)
	}
	checkIndexes(t, conn)
}

func TestMigrateTwice(t *testing.T) {
	conn := connect(t, devtest.Database(t))
	for i := range 2 {
		if err := schema.Migrate(t.Context(), conn); err != nil {
			t.Fatalf("Migrate #%d: %v", i+1, err)
		}
	}
	checkIndexes(t, conn)
}

// The schema belongs to another system: Migrate must not drop, alter or
// empty what it finds, even where it differs from what Migrate would create.
func TestMigrateLeavesExistingTablesAlone(t *testing.T) {
	ctx := t.Context()
	conn := connect(t, devtest.Database(t))
	_, err := conn.Exec(ctx, `
		CREATE SCHEMA platform;
		CREATE TABLE platform.users (
			id uuid PRIMARY KEY, email text NOT NULL UNIQUE, first_name text, last_name text,
			username text, deleted_at timestamptz, banned_until timestamptz,
			role text NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'admin')));
		CREATE TABLE platform.user_sessions (
			id uuid PRIMARY KEY, user_id uuid NOT NULL REFERENCES platform.users (id) ON DELETE CASCADE,
			token text NOT NULL UNIQUE, expires_at timestamptz NOT NULL,
			last_activity_at timestamptz NOT NULL, ip_address inet, user_agent text,
			created_at timestamptz NOT NULL DEFAULT now(), device_id text,
			CHECK (created_at <= last_activity_at));
		-- Same name as one of Migrate's indexes, different definition: it must survive as is.
		CREATE INDEX idx_user_sessions_activity ON platform.user_sessions (last_activity_at);
		INSERT INTO platform.users (id, email, role) VALUES
			('00000000-0000-4000-8000-000000000001', 'a@example.com', 'admin'),
			('00000000-0000-4000-8000-000000000002', 'b@example.com', 'member');
		INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at, created_at, device_id) VALUES
			('10000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000001', 'aa', now() + interval '1 day', now(), now() - interval '1 hour', 'd1'),
			('10000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000002', 'bb', now() - interval '1 day', now() - interval '2 days', now() - interval '3 days', NULL);`)
	if err != nil {
		t.Fatalf("create existing schema: %v", err)
	}
	colsBefore, consBefore := columns(t, conn), constraints(t, conn)
	activityBefore := indexes(t, conn)["idx_user_sessions_activity"]

	if err := schema.Migrate(ctx, conn); err != nil {
		t.Fatalf("Migrate: %v", err)
	}

	if got := columns(t, conn); !slices.Equal(got, colsBefore) {
		t.Errorf("columns changed:\n got %q\nwant %q", got, colsBefore)
	}
	if got := constraints(t, conn); !slices.Equal(got, consBefore) {
		t.Errorf("constraints changed:\n got %q\nwant %q", got, consBefore)
	}
	idx := indexes(t, conn)
	if got := idx["idx_user_sessions_activity"]; got != activityBefore {
		t.Errorf("existing index idx_user_sessions_activity changed: %q, was %q", got, activityBefore)
	}
	if _, ok := idx["idx_user_sessions_token"]; !ok {
		t.Errorf("missing index idx_user_sessions_token was not created; have %v", idx)
	}
	var users, sessions int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM platform.users), (SELECT count(*) FROM platform.user_sessions)`).Scan(&users, &sessions); err != nil {
		t.Fatalf("count rows: %v", err)
	}
	if users != 2 || sessions != 2 {
		t.Errorf("rows: %d users, %d sessions; want 2 and 2", users, sessions)
	}
}

// Without the advisory lock, concurrent CREATE ... IF NOT EXISTS fail with
// unique_violation now and then, so run several rounds on fresh databases.
func TestMigrateConcurrently(t *testing.T) {
	const rounds, instances = 5, 4
	for r := range rounds {
		t.Run(fmt.Sprint("round", r), func(t *testing.T) {
			pool, err := pgxpool.New(t.Context(), devtest.Database(t))
			if err != nil {
				t.Fatalf("pool: %v", err)
			}
			defer pool.Close()
			var (
				wg    sync.WaitGroup
				start = make(chan struct{})
				errs  = make([]error, instances)
			)
			for i := range instances {
				wg.Go(func() {
					<-start
					errs[i] = schema.Migrate(t.Context(), pool)
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("Migrate #%d: %v", i, err)
				}
			}
			conn, err := pool.Acquire(t.Context())
			if err != nil {
				t.Fatalf("acquire: %v", err)
			}
			defer conn.Release()
			checkIndexes(t, conn.Conn())
		})
	}
}

// Inside a caller's transaction, Migrate's work commits or rolls back with it.
func TestMigrateInTransaction(t *testing.T) {
	ctx := t.Context()
	conn := connect(t, devtest.Database(t))

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	if err := schema.Migrate(ctx, tx); err != nil {
		t.Fatalf("Migrate in tx: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('platform.users') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatalf("check table: %v", err)
	}
	if exists {
		t.Errorf("platform.users exists after the caller rolled back")
	}

	if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return schema.Migrate(ctx, tx) }); err != nil {
		t.Fatalf("Migrate in committed tx: %v", err)
	}
	checkIndexes(t, conn)
}

// While another instance holds the migration lock, Migrate waits, and gives
// up when its ctx does.
func TestMigrateHonoursContextWhileWaiting(t *testing.T) {
	dbURL := devtest.Database(t)
	holder := connect(t, dbURL)
	tx, err := holder.Begin(t.Context())
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(t.Context(), `SELECT pg_advisory_xact_lock($1)`, schema.LockKey); err != nil {
		t.Fatalf("take lock: %v", err)
	}

	conn := connect(t, dbURL)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err = schema.Migrate(ctx, conn)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Migrate while locked = %v, want an error wrapping context.DeadlineExceeded", err)
	}
}
