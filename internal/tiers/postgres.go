package tiers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TokenStorage says what user_sessions.token holds.
type TokenStorage string

const (
	// TokenStorageHash: the lowercase hex SHA-256 of the token (the default,
	// as in the application the warming guide comes from).
	TokenStorageHash TokenStorage = "hash"
	// TokenStoragePlain: the raw token, for applications that store it so.
	TokenStoragePlain TokenStorage = "plain"
)

// Columns is the select list of a session joined with its user, in the order
// ScanRecord reads them. Named columns only: real databases have more.
// host() renders an inet as a bare address, without a /32 or /128.
const Columns = `s.id::text, s.user_id::text, s.expires_at, s.last_activity_at, s.created_at,
	host(s.ip_address), s.user_agent, u.email, u.first_name, u.last_name, u.username,
	u.deleted_at, u.banned_until`

const lookupSQL = `SELECT ` + Columns + `
FROM platform.user_sessions s
JOIN platform.users u ON u.id = s.user_id
WHERE s.token = $1`

// RecordDest is the scan destinations of Columns, in order, for r.
func RecordDest(r *Record) []any {
	return []any{&r.ID, &r.UserID, &r.ExpiresAt, &r.LastActivityAt, &r.CreatedAt,
		&r.IPAddress, &r.UserAgent, &r.Email, &r.FirstName, &r.LastName, &r.Username,
		&r.DeletedAt, &r.BannedUntil}
}

// Postgres is the L2 tier, the source of truth.
type Postgres struct {
	pool    *pgxpool.Pool
	storage TokenStorage
}

// NewPostgres reads sessions through pool; storage says what the token
// column holds.
func NewPostgres(pool *pgxpool.Pool, storage TokenStorage) *Postgres {
	return &Postgres{pool: pool, storage: storage}
}

// Lookup returns the session whose token is token (raw, as presented) joined
// with its user, or nil when there is none. It returns an error wrapping
// ErrUnavailable when Postgres cannot be reached or cannot answer now, the
// context's error when ctx ends first, and any other failure wrapped as is.
func (p *Postgres) Lookup(ctx context.Context, token string) (*Record, error) {
	arg := token
	if p.storage != TokenStoragePlain {
		arg = TokenHash(token)
	}
	var r Record
	err := p.pool.QueryRow(ctx, lookupSQL, arg).Scan(RecordDest(&r)...)
	switch {
	case err == nil:
		return Normalize(&r), nil
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	}
	return nil, classify(ctx, err)
}

// Normalize puts r's times in UTC, so that records read from either tier
// compare equal, and returns r.
func Normalize(r *Record) *Record {
	r.ExpiresAt = r.ExpiresAt.UTC()
	r.LastActivityAt = r.LastActivityAt.UTC()
	r.CreatedAt = r.CreatedAt.UTC()
	for _, t := range []*time.Time{r.DeletedAt, r.BannedUntil} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return r
}

// classify turns a driver error into what callers act on: the context's own
// error when it ended, ErrUnavailable when the server could not be reached or
// said it cannot serve now (SQLSTATE classes 08 connection exception, 53
// insufficient resources, 57 operator intervention), else the error as is
// (a bad schema, say: an operator must look, retrying will not help).
func classify(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("postgres: %w", ctxErr)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", "53", "57":
			return fmt.Errorf("%w: postgres: %w", ErrUnavailable, err)
		}
		return fmt.Errorf("postgres: %w", err)
	}
	// Everything else is the connection: refused, reset, timed out, closed.
	return fmt.Errorf("%w: postgres: %w", ErrUnavailable, err)
}
