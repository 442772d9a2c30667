package tiers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
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

// RowScan reads one row of Columns into a Record, whatever value Postgres
// holds: NULL in any column, 'infinity' and '-infinity', and every year
// Postgres can store. Scan into Dest(), then take Record().
type RowScan struct {
	r     Record
	email pgtype.Text
	times [5]pgtype.Timestamptz // expires, last activity, created, deleted, banned
}

// Dest is the scan destinations of Columns, in order.
func (s *RowScan) Dest() []any {
	return []any{&s.r.ID, &s.r.UserID, &s.times[0], &s.times[1], &s.times[2],
		&s.r.IPAddress, &s.r.UserAgent, &s.email, &s.r.FirstName, &s.r.LastName, &s.r.Username,
		&s.times[3], &s.times[4]}
}

// Record returns a new Record of the last row scanned, times in UTC.
func (s *RowScan) Record() *Record {
	r := s.r
	r.Email = s.email.String
	r.ExpiresAt = fromPG(s.times[0])
	r.LastActivityAt = fromPG(s.times[1])
	r.CreatedAt = fromPG(s.times[2])
	r.DeletedAt = optFromPG(s.times[3])
	r.BannedUntil = optFromPG(s.times[4])
	return &r
}

func fromPG(t pgtype.Timestamptz) time.Time {
	switch {
	case !t.Valid:
		return time.Time{}
	case t.InfinityModifier == pgtype.Infinity:
		return Infinity
	case t.InfinityModifier == pgtype.NegativeInfinity:
		return NegInfinity
	}
	return t.Time.UTC()
}

func optFromPG(t pgtype.Timestamptz) *time.Time {
	if !t.Valid {
		return nil
	}
	v := fromPG(t)
	return &v
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
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, classify(ctx, err)
	}
	defer conn.Release()
	var rs RowScan
	err = conn.QueryRow(ctx, lookupSQL, arg).Scan(rs.Dest()...)
	// ErrNoRows first: every never-seen token ends here, and errors.As
	// costs a reflective walk.
	if err != nil && !errors.Is(err, pgx.ErrNoRows) && staleStatement(err) {
		// A migration changed a column this statement returns (ALTER
		// COLUMN ... TYPE, say): this connection's prepared statement no
		// longer fits, and pgx has just dropped it from its cache. Asked
		// again on the same connection, it is prepared afresh. Without
		// this, every pooled connection would fail one caller after each
		// such migration.
		rs = RowScan{}
		err = conn.QueryRow(ctx, lookupSQL, arg).Scan(rs.Dest()...)
	}
	switch {
	case err == nil:
		return rs.Record(), nil
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	}
	var scanErr pgx.ScanArgError
	if errors.As(err, &scanErr) {
		// The row is there but a column's type is not what sessiond reads
		// (an application schema that differs): an operator must look.
		return nil, fmt.Errorf("%w: session %s: %w", ErrUnreadable, rs.r.ID, err)
	}
	return nil, classify(ctx, err)
}

// staleStatement reports whether err is Postgres refusing a prepared
// statement whose result columns changed since it was prepared (SQLSTATE
// 0A000, "cached plan must not change result type").
func staleStatement(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "0A000" && strings.Contains(pgErr.Message, "cached plan must not change result type")
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
