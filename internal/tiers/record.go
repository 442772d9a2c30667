// Package tiers holds sessiond's two storage tiers, Redis (L1, with rueidis's
// client-side cache in front of it) and Postgres (L2, the source of truth),
// and the read-through that joins them. It also holds the one validity rule
// that every tier's answer goes through.
package tiers

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// MaxTokenLen is the longest token accepted, in bytes.
const MaxTokenLen = 512

// ErrInvalidToken is returned, wrapped, for a token that cannot be a token:
// empty, too long, or with bytes outside printable ASCII. Such a token is
// refused before any tier is asked, so it never reaches Redis or Postgres.
var ErrInvalidToken = errors.New("invalid token")

// ErrUnavailable is returned, wrapped, when the answer cannot be known: the
// session is not cached and Postgres cannot be reached.
var ErrUnavailable = errors.New("session store unavailable")

// ErrUnreadable is returned, wrapped, when the session's row exists but
// sessiond cannot decide it: a NULL expires_at that no deletion or ban
// overrides, or a column whose type sessiond cannot read. Its message names
// the session id and the column, never the token.
var ErrUnreadable = errors.New("session row cannot be decided")

// Infinity and NegInfinity stand for Postgres's 'infinity' and '-infinity'
// timestamps: later (earlier) than any finite timestamp Postgres can hold
// (4713 BC to 294276 AD), so the rule compares them like any other time: a
// ban until infinity never ends, a session that expires at infinity never
// expires.
var (
	Infinity    = time.Date(294277, 1, 1, 0, 0, 0, 0, time.UTC)
	NegInfinity = time.Date(-4713, 1, 1, 0, 0, 0, 0, time.UTC)
)

// Reason says why a session is not valid. The zero value means valid.
type Reason int

const (
	ReasonNone Reason = iota
	ReasonNotFound
	ReasonExpired
	ReasonUserDeleted
	ReasonUserBanned
	// ReasonUndecidable: the row exists but its expires_at is NULL and
	// nothing else makes it invalid: sessiond cannot say (see ErrUnreadable).
	ReasonUndecidable
)

func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "valid"
	case ReasonNotFound:
		return "not_found"
	case ReasonExpired:
		return "expired"
	case ReasonUserDeleted:
		return "user_deleted"
	case ReasonUserBanned:
		return "user_banned"
	case ReasonUndecidable:
		return "undecidable"
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Source says which tier produced an answer.
type Source int

const (
	SourceNone Source = iota
	SourceLocal
	SourceRedis
	SourcePostgres
)

func (s Source) String() string {
	switch s {
	case SourceLocal:
		return "local"
	case SourceRedis:
		return "redis"
	case SourcePostgres:
		return "postgres"
	}
	return "none"
}

// Record is a session joined with its user: what both tiers hold. Nullable
// text columns are pointers, nil for NULL; a NULL timestamp is the zero
// time (deleted_at and banned_until: nil); 'infinity' and '-infinity' are
// Infinity and NegInfinity. It never holds the token.
type Record struct {
	ID             string
	UserID         string
	ExpiresAt      time.Time
	LastActivityAt time.Time
	CreatedAt      time.Time
	IPAddress      *string
	UserAgent      *string
	Email          string
	FirstName      *string
	LastName       *string
	Username       *string
	DeletedAt      *time.Time
	BannedUntil    *time.Time
}

// Check is the validity rule, the same for every tier: a session is valid iff
// it has not expired, its user is not deleted, and its user is not banned at
// now. A ban ends when banned_until passes (the guide's `banned_until IS
// NULL` made every ban permanent). When several reasons hold, the most
// lasting one is reported: deleted, then banned, then expired. A NULL
// expires_at (an application schema may allow it) decides nothing:
// ReasonUndecidable, unless a deletion or ban does.
func Check(r *Record, now time.Time) Reason {
	switch {
	case r == nil:
		return ReasonNotFound
	case r.DeletedAt != nil:
		return ReasonUserDeleted
	case r.BannedUntil != nil && r.BannedUntil.After(now):
		return ReasonUserBanned
	case r.ExpiresAt.IsZero():
		return ReasonUndecidable
	case !r.ExpiresAt.After(now):
		return ReasonExpired
	}
	return ReasonNone
}

// CheckToken refuses what cannot be a token. Printable ASCII is 0x20-0x7E.
// The error never repeats the token.
func CheckToken(token string) error {
	if token == "" {
		return fmt.Errorf("%w: empty", ErrInvalidToken)
	}
	if len(token) > MaxTokenLen {
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrInvalidToken, len(token), MaxTokenLen)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("%w: byte %d is 0x%02x, outside printable ASCII", ErrInvalidToken, i, c)
		}
	}
	return nil
}

// TokenHash is the lowercase hex SHA-256 of a token: what the application
// stores in user_sessions.token, and what names the session in Redis.
func TokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// ttlFor is how long a cache entry for r may live when written at now:
// min(ttl, time left until the session expires). A session that has already
// expired is cached for expired (the negative TTL) instead, so that a
// stream of an expired token costs one Postgres query per expired, not one
// per call; an update of its expires_at fires the triggers like any other
// change. Zero or less means the entry must not be written.
func ttlFor(r *Record, now time.Time, ttl, expired time.Duration) time.Duration {
	left := r.ExpiresAt.Sub(now)
	if left <= 0 {
		return expired
	}
	return min(ttl, left)
}
