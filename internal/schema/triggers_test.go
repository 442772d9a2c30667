package schema_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
)

const (
	uid  = "11111111-1111-4111-8111-111111111111"
	uid2 = "22222222-2222-4222-8222-222222222222"
	sid  = "33333333-3333-4333-8333-333333333333"
	sid2 = "44444444-4444-4444-8444-444444444444"
)

// notified runs sql on conn and returns what listener heard because of it.
func notified(t *testing.T, conn, listener *pgx.Conn, sql string) []string {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatal(err)
	}
	// A marker notification after the change: everything the change sent
	// arrives before it, so no waiting on silence.
	if _, err := conn.Exec(t.Context(), `SELECT pg_notify('`+schema.Channel+`', 'marker')`); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		n, err := listener.WaitForNotification(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if n.Payload == "marker" {
			return got
		}
		got = append(got, n.Payload)
	}
}

func listen(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	l := connect(t, dbURL)
	if _, err := l.Exec(t.Context(), "LISTEN "+schema.Channel); err != nil {
		t.Fatal(err)
	}
	return l
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// Each change sessiond must hear about notifies the channel with what to
// drop (user ids, keys: never a token); changes it need not hear about
// notify nothing.
func TestTriggersNotify(t *testing.T) {
	dbURL := devtest.Database(t)
	conn := connect(t, dbURL)
	if err := schema.Migrate(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	if err := schema.Migrate(t.Context(), conn); err != nil { // idempotent with triggers too
		t.Fatal(err)
	}
	listener := listen(t, dbURL)
	// Token hashes as an application stores them, one in capitals: the key
	// is always lowercase.
	k1, k2, k3 := strings.Repeat("a1", 32), strings.Repeat("B2", 32), strings.Repeat("c3", 32)
	for _, tt := range []struct {
		name string
		sql  string
		want []string
	}{
		{"insert users: nothing", `INSERT INTO platform.users (id, email) VALUES ('` + uid + `', 'a@x'), ('` + uid2 + `', 'b@x')`, nil},
		{"insert session", `INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			VALUES ('` + sid + `', '` + uid + `', '` + k1 + `', now() + interval '1 day', now())`, []string{"i:" + k1}},
		{"insert an expired session: its token (a cached \"no such session\" may be there)", `INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			VALUES ('` + sid2 + `', '` + uid + `', '` + k3 + `', now() - interval '1 day', now())`, []string{"i:" + k3}},
		{"activity: nothing", `UPDATE platform.user_sessions SET last_activity_at = now() WHERE id = '` + sid + `'`, nil},
		{"same expiry: nothing", `UPDATE platform.user_sessions SET expires_at = expires_at WHERE id = '` + sid + `'`, nil},
		{"expiry", `UPDATE platform.user_sessions SET expires_at = now() + interval '1 hour' WHERE id = '` + sid + `'`, []string{"s:" + k1}},
		{"new token", `UPDATE platform.user_sessions SET token = '` + k2 + `' WHERE id = '` + sid + `'`, []string{"s:" + k1, "i:" + strings.ToLower(k2)}},
		{"moved to another user", `UPDATE platform.user_sessions SET user_id = '` + uid2 + `' WHERE id = '` + sid + `'`, []string{"s:" + strings.ToLower(k2)}},
		{"expired stays expired: nothing", `UPDATE platform.user_sessions SET expires_at = now() - interval '2 days' WHERE id = '` + sid2 + `'`, nil},
		{"expired renewed", `UPDATE platform.user_sessions SET expires_at = now() + interval '1 day' WHERE id = '` + sid2 + `'`, []string{"s:" + k3}},
		{"user renamed: nothing", `UPDATE platform.users SET first_name = 'x' WHERE id = '` + uid2 + `'`, nil},
		{"ban", `UPDATE platform.users SET banned_until = now() + interval '1 day' WHERE id = '` + uid2 + `'`, []string{"u:" + uid2}},
		{"ban forever", `UPDATE platform.users SET banned_until = 'infinity' WHERE id = '` + uid2 + `'`, []string{"u:" + uid2}},
		{"soft delete", `UPDATE platform.users SET deleted_at = now() WHERE id = '` + uid2 + `'`, []string{"u:" + uid2}},
		{"session deleted", `DELETE FROM platform.user_sessions WHERE id = '` + sid + `'`, []string{"s:" + strings.ToLower(k2)}},
		{"expired session deleted: nothing", `UPDATE platform.user_sessions SET expires_at = now() - interval '1 day' WHERE id = '` + sid2 + `';
			DELETE FROM platform.user_sessions WHERE id = '` + sid2 + `'`, []string{"s:" + k3}}, // the update, not the delete
		{"user deleted", `DELETE FROM platform.users WHERE id = '` + uid + `'`, []string{"u:" + uid}},
		{"truncate sessions", `TRUNCATE platform.user_sessions`, []string{"t"}},
		{"truncate users", `TRUNCATE platform.users CASCADE`, []string{"t"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := notified(t, conn, listener, tt.sql); !slices.Equal(got, tt.want) {
				t.Errorf("notified %q, want %q", got, tt.want)
			}
		})
	}
}

// An application's own BEFORE UPDATE trigger that changes expires_at when
// something else is updated cannot slip past (column-list triggers did).
func TestTriggersSeeBeforeTriggerChanges(t *testing.T) {
	dbURL := devtest.Database(t)
	conn := connect(t, dbURL)
	if err := schema.Migrate(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	k := strings.Repeat("d4", 32)
	if _, err := conn.Exec(t.Context(), `
		INSERT INTO platform.users (id, email) VALUES ('`+uid+`', 'a@x');
		INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			VALUES ('`+sid+`', '`+uid+`', '`+k+`', now() + interval '1 day', now());
		CREATE FUNCTION platform.app_logout() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.user_agent = 'logged out' THEN NEW.expires_at := now(); END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER app_logout BEFORE UPDATE ON platform.user_sessions FOR EACH ROW EXECUTE FUNCTION platform.app_logout();`); err != nil {
		t.Fatal(err)
	}
	listener := listen(t, dbURL)
	got := notified(t, conn, listener, `UPDATE platform.user_sessions SET user_agent = 'logged out' WHERE id = '`+sid+`'`)
	if want := []string{"s:" + k}; !slices.Equal(got, want) {
		t.Errorf("notified %q, want %q", got, want)
	}
}

// A bulk change sends a few notifications, not one per row, and every row
// is in them.
func TestTriggersBulk(t *testing.T) {
	dbURL := devtest.Database(t)
	conn := connect(t, dbURL)
	if err := schema.Migrate(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	const users, sessions = 400, 250
	if _, err := conn.Exec(t.Context(), fmt.Sprintf(`
		INSERT INTO platform.users (id, email)
			SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'u' || i FROM generate_series(1, %d) i`, users)); err != nil {
		t.Fatal(err)
	}
	listener := listen(t, dbURL)
	got := notified(t, conn, listener, fmt.Sprintf(`
		INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', md5(i::text) || md5(i::text), now() + interval '1 day', now()
			FROM generate_series(1, %d) i`, sessions))
	if len(got) != 3 || countItems(got, "i:") != sessions {
		t.Errorf("insert of %d sessions: %d notifications, %d keys; want 3 and %d", sessions, len(got), countItems(got, "i:"), sessions)
	}
	got = notified(t, conn, listener, `UPDATE platform.users SET banned_until = now() + interval '1 hour'`)
	if len(got) != 3 || countItems(got, "u:") != users {
		t.Errorf("ban of %d users: %d notifications, %d ids; want 3 and %d", users, len(got), countItems(got, "u:"), users)
	}
	for _, p := range got {
		if len(p) > 8000 {
			t.Errorf("payload of %d bytes, over Postgres's limit", len(p))
		}
	}
}

func countItems(payloads []string, prefix string) int {
	n := 0
	for _, p := range payloads {
		if rest, ok := strings.CutPrefix(p, prefix); ok {
			n += len(strings.Split(rest, ","))
		}
	}
	return n
}

// With raw tokens in the column, the triggers send their SHA-256, never the
// token.
func TestTriggersPlainTokens(t *testing.T) {
	dbURL := devtest.Database(t)
	conn := connect(t, dbURL)
	if err := schema.Migrate(t.Context(), conn, schema.WithPlainTokens()); err != nil {
		t.Fatal(err)
	}
	if v, storage, err := schema.InstalledTriggers(t.Context(), conn); err != nil || v != schema.TriggerVersion || storage != "plain" {
		t.Fatalf("InstalledTriggers = %d, %q, %v; want %d, plain", v, storage, err, schema.TriggerVersion)
	}
	listener := listen(t, dbURL)
	const raw = "raw-secret-token"
	got := notified(t, conn, listener, `
		INSERT INTO platform.users (id, email) VALUES ('`+uid+`', 'a@x');
		INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			VALUES ('`+sid+`', '`+uid+`', '`+raw+`', now() + interval '1 day', now());
		DELETE FROM platform.user_sessions`)
	if want := []string{"i:" + sha(raw), "s:" + sha(raw)}; !slices.Equal(got, want) {
		t.Errorf("notified %q, want %q", got, want)
	}
	for _, p := range got {
		if strings.Contains(p, raw) {
			t.Errorf("a notification carries the raw token: %q", p)
		}
	}
}

// A database with the first version's triggers is upgraded in place: the
// old triggers and functions go, the new ones come, once.
func TestMigrateUpgradesV1Triggers(t *testing.T) {
	dbURL := devtest.Database(t)
	conn := connect(t, dbURL)
	if err := schema.Migrate(t.Context(), conn, schema.WithoutTriggers()); err != nil {
		t.Fatal(err)
	}
	if v, _, err := schema.InstalledTriggers(t.Context(), conn); err != nil || v != 0 {
		t.Fatalf("InstalledTriggers without triggers = %d, %v; want 0", v, err)
	}
	// What version 1 installed (abridged to the objects' names and kinds).
	if _, err := conn.Exec(t.Context(), `
		CREATE FUNCTION platform.sessiond_notify_session() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
		CREATE FUNCTION platform.sessiond_notify_user() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
		CREATE TRIGGER sessiond_session_insert AFTER INSERT ON platform.user_sessions FOR EACH ROW EXECUTE FUNCTION platform.sessiond_notify_session();
		CREATE TRIGGER sessiond_session_update AFTER UPDATE OF token, expires_at, user_id ON platform.user_sessions FOR EACH ROW EXECUTE FUNCTION platform.sessiond_notify_session();
		CREATE TRIGGER sessiond_session_delete AFTER DELETE ON platform.user_sessions FOR EACH ROW EXECUTE FUNCTION platform.sessiond_notify_session();
		CREATE TRIGGER sessiond_user_update AFTER UPDATE OF deleted_at, banned_until ON platform.users FOR EACH ROW EXECUTE FUNCTION platform.sessiond_notify_user();
		CREATE TRIGGER sessiond_user_delete AFTER DELETE ON platform.users FOR EACH ROW EXECUTE FUNCTION platform.sessiond_notify_user();`); err != nil {
		t.Fatal(err)
	}
	if v, _, err := schema.InstalledTriggers(t.Context(), conn); err != nil || v != 1 {
		t.Fatalf("InstalledTriggers with v1 = %d, %v; want 1", v, err)
	}
	if err := schema.Migrate(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	if v, storage, err := schema.InstalledTriggers(t.Context(), conn); err != nil || v != schema.TriggerVersion || storage != "hash" {
		t.Fatalf("InstalledTriggers after migrate = %d, %q, %v", v, storage, err)
	}
	var names []string
	rows, err := conn.Query(t.Context(), `SELECT tgname FROM pg_trigger WHERE tgname LIKE 'sessiond%' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	names, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"sessiond_sessions_delete", "sessiond_sessions_insert", "sessiond_sessions_truncate", "sessiond_sessions_update",
		"sessiond_users_delete", "sessiond_users_truncate", "sessiond_users_update"}
	if !slices.Equal(names, want) {
		t.Errorf("triggers after the upgrade: %q, want %q", names, want)
	}
	var oldFns int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_proc WHERE proname IN ('sessiond_notify_session', 'sessiond_notify_user')`).Scan(&oldFns); err != nil || oldFns != 0 {
		t.Errorf("version 1 functions left: %d (%v)", oldFns, err)
	}
}
