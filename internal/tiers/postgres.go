package tiers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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

// lookupManySQL is lookupSQL for many tokens at once; each row says which
// argument it answers (its ordinal, from 1), so that matching rows to
// lookups uses Postgres's own equality.
const lookupManySQL = `SELECT k.i, ` + Columns + `
FROM unnest($1::text[]) WITH ORDINALITY AS k(t, i)
JOIN platform.user_sessions s ON s.token = k.t
JOIN platform.users u ON u.id = s.user_id`

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
	share   *sharing // nil: every lookup its own query, at once
	queries atomic.Int64
	slow    atomic.Int64 // lookup queries that held their place slowLookup
}

// PostgresOptions configures the Postgres tier.
type PostgresOptions struct {
	// Storage says what the token column holds.
	Storage TokenStorage
	// Concurrent, when above 0, lets at most that many lookup queries be
	// under way at once, not counting those slower than slowLookup (no
	// more than the pool's size: more would wait for a connection anyway).
	// Lookups that arrive meanwhile wait, and go together, up to
	// maxLookupBatch of them, in one query when one under way ends. Under
	// load Postgres then answers several lookups per round trip: a flood
	// of unknown tokens, a cold start or a wave of logins costs it fewer
	// queries. With fewer lookups at once than Concurrent, none waits and
	// each is its own query, as with 0 (what a team without sessiond
	// runs: see package bench).
	Concurrent int
}

// maxLookupBatch bounds the lookups of one query.
const maxLookupBatch = 64

// sharing is the state of lookups sharing queries (see
// PostgresOptions.Concurrent). Lookups wait only while every place is
// taken, and a place that frees goes to those waiting: none is idle while
// one waits. A place frees when its query ends or has taken slowLookup.
type sharing struct {
	max     int
	slow    time.Duration // slowLookup; tests lengthen it
	mu      sync.Mutex
	busy    int       // places taken: queries under way
	waiting []*waiter // in arrival order
}

// waiter is a lookup waiting to share a query.
type waiter struct {
	ctx  context.Context
	arg  string
	done chan struct{} // closed when rec and err are set
	rec  *Record
	err  error
}

// NewPostgres reads sessions through pool.
func NewPostgres(pool *pgxpool.Pool, o PostgresOptions) *Postgres {
	p := &Postgres{pool: pool, storage: o.Storage}
	if o.Concurrent > 0 {
		p.share = &sharing{max: o.Concurrent, slow: slowLookup}
	}
	return p
}

// Queries counts the lookup queries sent to Postgres: fewer than lookups
// when they share (see PostgresOptions.Concurrent).
func (p *Postgres) Queries() int64 { return p.queries.Load() }

// SlowQueries counts the lookup queries that held their place for
// slowLookup and gave it up to the lookups waiting (see slowLookup).
func (p *Postgres) SlowQueries() int64 { return p.slow.Load() }

// Lookup returns the session whose token is token (raw, as presented) joined
// with its user, or nil when there is none. It returns an error wrapping
// ErrUnavailable when Postgres cannot be reached or cannot answer now, the
// context's error when ctx ends first, and any other failure wrapped as is.
// ctx bounds the whole lookup, a wait to share a query included.
func (p *Postgres) Lookup(ctx context.Context, token string) (*Record, error) {
	arg := token
	if p.storage != TokenStoragePlain {
		arg = TokenHash(token)
	}
	s := p.share
	if s == nil {
		return p.lookup(ctx, arg)
	}
	s.mu.Lock()
	if s.busy < s.max {
		s.busy++
		s.mu.Unlock()
		pl := p.hold()
		rec, err := p.lookup(ctx, arg)
		pl.end()
		return rec, err
	}
	w := &waiter{ctx: ctx, arg: arg, done: make(chan struct{})}
	s.waiting = append(s.waiting, w)
	s.mu.Unlock()
	select {
	case <-w.done:
		return w.rec, w.err
	case <-ctx.Done():
		s.mu.Lock()
		if i := slices.Index(s.waiting, w); i >= 0 {
			s.waiting = slices.Delete(s.waiting, i, i+1)
		}
		s.mu.Unlock()
		return nil, classify(ctx, ctx.Err())
	}
}

// handOn gives the place of a query that ended to the lookups waiting, if
// any: they go together in one query, in a goroutine of its own (the
// caller handing on has its own answer to return), which hands on in turn
// when it ends. Else the place is free.
func (p *Postgres) handOn() {
	s := p.share
	s.mu.Lock()
	if len(s.waiting) == 0 {
		s.busy--
		s.mu.Unlock()
		return
	}
	n := min(len(s.waiting), maxLookupBatch)
	ws := slices.Clone(s.waiting[:n])
	s.waiting = slices.Delete(s.waiting, 0, n)
	s.mu.Unlock()
	go func() {
		pl := p.hold()
		p.lookupShared(ws)
		pl.end()
	}()
}

// slowLookup is how long a lookup query may hold its place (see sharing):
// past it, the place goes to those waiting while the query goes on. A
// lookup takes well under a millisecond, a shared one a few; one that
// takes longer waits for a stalled connection (a Postgres failing over,
// a network gone quiet) or a pool emptied by others, and the lookups
// behind it should not wait for its timeout: they go ahead on another
// connection.
const slowLookup = 25 * time.Millisecond

// place is a place taken by a query under way (see sharing).
type place struct {
	p     *Postgres
	freed atomic.Bool
	timer *time.Timer
}

func (p *Postgres) hold() *place {
	pl := &place{p: p}
	pl.timer = time.AfterFunc(p.share.slow, func() {
		if pl.free() {
			p.slow.Add(1)
		}
	})
	return pl
}

// end frees the place when its query ends, unless slowLookup did first.
func (pl *place) end() {
	pl.timer.Stop()
	pl.free()
}

// free frees the place unless it was already, and reports whether it did.
func (pl *place) free() bool {
	if !pl.freed.CompareAndSwap(false, true) {
		return false
	}
	pl.p.handOn()
	return true
}

// lookupShared answers ws with one query, under the context of the first
// (its trace shows the query) and the latest deadline among them: none is
// failed by another's deadline; one whose own ended has left already.
func (p *Postgres) lookupShared(ws []*waiter) {
	ctx, cancel := sharedContext(ws)
	defer cancel()
	if len(ws) == 1 {
		ws[0].rec, ws[0].err = p.lookup(ctx, ws[0].arg)
		close(ws[0].done)
		return
	}
	args := make([]string, len(ws))
	for i, w := range ws {
		args[i] = w.arg
	}
	recs, err := p.lookupMany(ctx, args)
	var scanErr pgx.ScanArgError
	unreadable := errors.As(err, &scanErr)
	for i, w := range ws {
		switch {
		case unreadable:
			// A row sessiond cannot read fails its own lookup only.
			w.rec, w.err = p.lookup(ctx, w.arg)
		case err != nil:
			w.err = err
		default:
			w.rec = recs[i]
		}
		close(w.done)
	}
}

func sharedContext(ws []*waiter) (context.Context, context.CancelFunc) {
	ctx := context.WithoutCancel(ws[0].ctx)
	var last time.Time
	for _, w := range ws {
		d, ok := w.ctx.Deadline()
		if !ok {
			return context.WithCancel(ctx)
		}
		if d.After(last) {
			last = d
		}
	}
	return context.WithDeadline(ctx, last)
}

// lookup reads the session whose token column holds arg.
func (p *Postgres) lookup(ctx context.Context, arg string) (*Record, error) {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, classify(ctx, err)
	}
	defer conn.Release()
	p.queries.Add(1)
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
		p.queries.Add(1)
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

// lookupMany reads the sessions whose token column holds each of args, in
// one query: recs[i] is args[i]'s, nil when there is none. An error is
// every lookup's; a pgx.ScanArgError (a row sessiond cannot read) is
// returned as it is, for the caller to tell which.
func (p *Postgres) lookupMany(ctx context.Context, args []string) ([]*Record, error) {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, classify(ctx, err)
	}
	defer conn.Release()
	recs, err := p.queryMany(ctx, conn, args)
	if err != nil && staleStatement(err) {
		// See lookup.
		recs, err = p.queryMany(ctx, conn, args)
	}
	var scanErr pgx.ScanArgError
	if err != nil && !errors.As(err, &scanErr) {
		return nil, classify(ctx, err)
	}
	return recs, err
}

func (p *Postgres) queryMany(ctx context.Context, conn *pgxpool.Conn, args []string) ([]*Record, error) {
	p.queries.Add(1)
	rows, err := conn.Query(ctx, lookupManySQL, args)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	recs := make([]*Record, len(args))
	var (
		rs RowScan
		i  int64
	)
	dest := append([]any{&i}, rs.Dest()...)
	for rows.Next() {
		rs = RowScan{}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		// token is UNIQUE: one row per argument. Should a schema lack
		// that, the first row is the answer, as with lookup.
		if i >= 1 && int(i) <= len(recs) && recs[i-1] == nil {
			recs[i-1] = rs.Record()
		}
	}
	return recs, rows.Err()
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
