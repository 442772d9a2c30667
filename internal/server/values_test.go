package server_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// Every value Postgres can hold in a timestamp column is answered by the
// rule, from Postgres and from the cache alike: a ban until 'infinity' (or
// year 294,270) is a ban, a session that expires at 'infinity' is valid.
// A NULL expires_at (an application schema may allow it) cannot be decided:
// INTERNAL, never valid. Such rows do not fail a warm, nor hold health at
// NOT_SERVING; a row sessiond cannot read at all is skipped and counted.
func TestEveryTimestampValue(t *testing.T) {
	h := prepare(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.WarmOnStart = true })
	h.exec(`ALTER TABLE platform.user_sessions ALTER COLUMN expires_at DROP NOT NULL`)
	ok := h.addUser(user{})
	forever := h.addUser(user{})
	h.exec(`UPDATE platform.users SET banned_until = 'infinity' WHERE id = $1`, forever.id)
	farFuture := h.addUser(user{})
	h.exec(`UPDATE platform.users SET banned_until = '294270-01-01 00:00:00+00' WHERE id = $1`, farFuture.id)
	lifted := h.addUser(user{})
	h.exec(`UPDATE platform.users SET banned_until = '-infinity' WHERE id = $1`, lifted.id)

	immortal := h.addSession(ok, session{})
	h.exec(`UPDATE platform.user_sessions SET expires_at = 'infinity' WHERE id = $1`, immortal.id)
	longLived := h.addSession(ok, session{})
	h.exec(`UPDATE platform.user_sessions SET expires_at = '294276-12-31 23:59:59.999999+00' WHERE id = $1`, longLived.id)
	deadForever := h.addSession(ok, session{})
	h.exec(`UPDATE platform.user_sessions SET expires_at = '-infinity' WHERE id = $1`, deadForever.id)
	bannedForever := h.addSession(forever, session{})
	bannedFar := h.addSession(farFuture, session{})
	liftedBan := h.addSession(lifted, session{})
	noExpiry := h.addSession(ok, session{})
	h.exec(`UPDATE platform.user_sessions SET expires_at = NULL WHERE id = $1`, noExpiry.id)
	noExpiryBanned := h.addSession(forever, session{})
	h.exec(`UPDATE platform.user_sessions SET expires_at = NULL WHERE id = $1`, noExpiryBanned.id)

	// A warm meets every one of these rows in its window and must still
	// complete; health turns SERVING.
	h.run()
	h.waitServing()
	last, found := h.lastWarming()
	if !found || last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED {
		t.Fatalf("startup warm: %v, want completed", last)
	}

	for _, tt := range []struct {
		name   string
		s      session
		valid  bool
		reason sessiondv1.Reason
	}{
		{"expires at infinity", immortal, true, sessiondv1.Reason_REASON_UNSPECIFIED},
		{"expires in year 294276", longLived, true, sessiondv1.Reason_REASON_UNSPECIFIED},
		{"expired since -infinity", deadForever, false, sessiondv1.Reason_REASON_EXPIRED},
		{"banned until infinity", bannedForever, false, sessiondv1.Reason_REASON_USER_BANNED},
		{"banned until year 294270", bannedFar, false, sessiondv1.Reason_REASON_USER_BANNED},
		{"ban until -infinity is over", liftedBan, true, sessiondv1.Reason_REASON_UNSPECIFIED},
		{"no expiry but banned: the ban decides", noExpiryBanned, false, sessiondv1.Reason_REASON_USER_BANNED},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Twice: from Postgres (or the warm), then from the cache.
			for range 2 {
				r := h.mustValidate(tt.s.token)
				if r.GetValid() != tt.valid || r.GetReason() != tt.reason {
					t.Errorf("valid=%v %v from %v, want valid=%v %v", r.GetValid(), r.GetReason(), r.GetSource(), tt.valid, tt.reason)
				}
				if tt.valid {
					if exp := r.GetSession().GetExpiresAt(); exp == nil || exp.AsTime().Year() < 9999 && tt.s.id != liftedBan.id {
						t.Errorf("expires_at in the answer: %v, want clamped to 9999-12-31", exp)
					}
				}
			}
		})
	}
	t.Run("NULL expires_at cannot be decided", func(t *testing.T) {
		for range 2 {
			_, err := h.validate(noExpiry.token)
			if status.Code(err) != codes.Internal {
				t.Errorf("got %v, want INTERNAL", err)
			}
		}
	})

}

// A row that sessiond cannot read at all (a column of a type it does not
// read) is skipped by warming, logged and counted as failed, and the startup
// warm still completes; ValidateSession answers INTERNAL for it.
func TestUnreadableRowIsSkippedByWarming(t *testing.T) {
	h := prepare(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.WarmOnStart = true })
	u := h.addUser(user{})
	readable := h.addSession(u, session{})
	unreadable := h.addSession(u, session{})
	h.exec(`ALTER TABLE platform.user_sessions ALTER COLUMN user_agent TYPE point USING NULL`)
	h.exec(`UPDATE platform.user_sessions SET user_agent = point(1, 2) WHERE id = $1`, unreadable.id)
	h.run()
	h.waitServing()
	last, found := h.lastWarming()
	if !found || last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED || last.GetWarmed() != 1 || last.GetFailed() != 1 {
		t.Errorf("startup warm over an unreadable row: %v, want completed, 1 warmed, 1 failed", last)
	}
	if r := h.mustValidate(readable.token); !r.GetValid() {
		t.Errorf("the readable session: %v", r)
	}
	if _, err := h.validate(unreadable.token); status.Code(err) != codes.Internal {
		t.Errorf("ValidateSession of an unreadable row: %v, want INTERNAL", err)
	}
}
