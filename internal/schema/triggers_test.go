package schema_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
)

// Each change sessiond must hear about notifies the channel with ids (never
// a token); changes it need not hear about notify nothing.
func TestTriggersNotify(t *testing.T) {
	dbURL := devtest.Database(t)
	conn := connect(t, dbURL)
	if err := schema.Migrate(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	if err := schema.Migrate(t.Context(), conn); err != nil { // idempotent with triggers too
		t.Fatal(err)
	}
	listener := connect(t, dbURL)
	if _, err := listener.Exec(t.Context(), "LISTEN "+schema.Channel); err != nil {
		t.Fatal(err)
	}
	const (
		uid  = "11111111-1111-4111-8111-111111111111"
		uid2 = "22222222-2222-4222-8222-222222222222"
		sid  = "33333333-3333-4333-8333-333333333333"
	)
	for _, tt := range []struct {
		name string
		sql  string
		want []string
	}{
		{"insert users: nothing", `INSERT INTO platform.users (id, email) VALUES ('` + uid + `', 'a@x'), ('` + uid2 + `', 'b@x')`, nil},
		{"insert session", `INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			VALUES ('` + sid + `', '` + uid + `', 'secret-token-hash', now() + interval '1 day', now())`, []string{"i:" + sid}},
		{"activity: nothing", `UPDATE platform.user_sessions SET last_activity_at = now() WHERE id = '` + sid + `'`, nil},
		{"same expiry: nothing", `UPDATE platform.user_sessions SET expires_at = expires_at WHERE id = '` + sid + `'`, nil},
		{"expiry", `UPDATE platform.user_sessions SET expires_at = now() WHERE id = '` + sid + `'`, []string{"s:" + sid + ":" + uid}},
		{"new token", `UPDATE platform.user_sessions SET token = 'another-hash' WHERE id = '` + sid + `'`, []string{"s:" + sid + ":" + uid, "i:" + sid}},
		{"moved to another user", `UPDATE platform.user_sessions SET user_id = '` + uid2 + `' WHERE id = '` + sid + `'`, []string{"s:" + sid + ":" + uid, "s:" + sid + ":" + uid2}},
		{"user renamed: nothing", `UPDATE platform.users SET first_name = 'x' WHERE id = '` + uid2 + `'`, nil},
		{"ban", `UPDATE platform.users SET banned_until = now() + interval '1 day' WHERE id = '` + uid2 + `'`, []string{"u:" + uid2}},
		{"soft delete", `UPDATE platform.users SET deleted_at = now() WHERE id = '` + uid2 + `'`, []string{"u:" + uid2}},
		{"session deleted", `DELETE FROM platform.user_sessions WHERE id = '` + sid + `'`, []string{"s:" + sid + ":" + uid2}},
		{"user deleted", `DELETE FROM platform.users WHERE id = '` + uid + `'`, []string{"u:" + uid}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := conn.Exec(t.Context(), tt.sql); err != nil {
				t.Fatal(err)
			}
			// A marker notification after the change: everything the change
			// sent arrives before it, so no waiting on silence.
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
					break
				}
				got = append(got, n.Payload)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("notified %q, want %q", got, tt.want)
			}
		})
	}
}
