// Package seed loads deterministic, realistic users and sessions into the
// platform schema and reports each session's raw token and expected verdict.
package seed

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reasons a session is invalid, as the service reports them. The empty
// string means valid.
const (
	ReasonNotFound    = "not_found" // never emitted by Load: for tokens that are not in the table
	ReasonExpired     = "expired"
	ReasonUserDeleted = "user_deleted"
	ReasonUserBanned  = "user_banned"
)

// LapsedBanShare is the share of banned users whose ban has already ended
// (banned_until <= Now): they are banned in the data but valid, which is what
// a check of "banned_until IS NULL" alone gets wrong.
const LapsedBanShare = 0.25

// Options says what Load generates. Same Options (Seed and Now included) ⇒
// the same rows and tokens.
type Options struct {
	Seed         int64
	Users        int
	Sessions     int
	Now          time.Time // the reference time; every age and verdict is relative to it
	ExpiredShare float64   // share of sessions whose expires_at is before Now
	BannedShare  float64   // share of users with banned_until set; LapsedBanShare of them have lapsed
	DeletedShare float64   // share of users with deleted_at set
	NullShare    float64   // share of NULLs in each nullable column except deleted_at and banned_until
	IPv6Share    float64   // share of non-NULL ip_address values that are IPv6
}

// DefaultDemo returns the demo data set for `make run`: 2,000 users and
// 5,000 sessions relative to the current time, so tokens are stable across
// runs but verdicts are for today.
func DefaultDemo() Options {
	return Options{
		Seed:         1,
		Users:        2000,
		Sessions:     5000,
		Now:          time.Now().UTC().Truncate(time.Second),
		ExpiredShare: 0.10,
		BannedShare:  0.03,
		DeletedShare: 0.02,
		NullShare:    0.10,
		IPv6Share:    0.25,
	}
}

func (o Options) validate() error {
	switch {
	case o.Users < 0:
		return fmt.Errorf("seed: invalid Users %d: must be >= 0", o.Users)
	case o.Sessions < 0:
		return fmt.Errorf("seed: invalid Sessions %d: must be >= 0", o.Sessions)
	case o.Sessions > 0 && o.Users == 0:
		return fmt.Errorf("seed: invalid Users 0: %d sessions need at least one user", o.Sessions)
	case o.Now.IsZero():
		return errors.New("seed: invalid Now: zero time")
	}
	for _, s := range []struct {
		name string
		v    float64
	}{
		{"ExpiredShare", o.ExpiredShare},
		{"BannedShare", o.BannedShare},
		{"DeletedShare", o.DeletedShare},
		{"NullShare", o.NullShare},
		{"IPv6Share", o.IPv6Share},
	} {
		if !(s.v >= 0 && s.v <= 1) { // also rejects NaN
			return fmt.Errorf("seed: invalid %s %v: must be in [0, 1]", s.name, s.v)
		}
	}
	return nil
}

// Truth is one generated session: the raw token a client would present and
// the verdict the service must give for it at Options.Now.
type Truth struct {
	Token          string // 64 lowercase hex characters; the table holds hex(sha256(Token)), the hash of these characters, not of the 32 bytes they encode
	SessionID      string
	UserID         string
	Valid          bool
	Reason         string // "" when Valid, else one of the Reason constants
	LastActivityAt time.Time
}

// Summary counts what Load generated.
type Summary struct {
	Users        int
	DeletedUsers int // deleted_at set
	BannedUsers  int // ban in force at Now
	LapsedBans   int // banned_until set but <= Now

	Sessions    int
	Valid       int
	Expired     int // invalid because expired (the user is fine)
	UserDeleted int // invalid because the user is deleted
	UserBanned  int // invalid because the user is banned (and not deleted)

	Duration time.Duration
}

// CopyFromer bulk-loads rows. *pgxpool.Pool, *pgx.Conn and pgx.Tx satisfy it.
type CopyFromer interface {
	CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error)
}

// Load writes opts.Users users, then opts.Sessions sessions, with COPY.
// Rows are generated as COPY consumes them, so memory stays flat however
// many sessions are asked for. The tables must exist (schema.Migrate) and
// must not already hold this seed's rows.
//
// emit, if not nil, is called once per session in order, from a goroutine
// of pgx's, before that session's COPY has committed; an error from emit
// stops the load. If Load returns an error, discard what emit received: it
// may describe rows that were rolled back. The users and sessions are two
// COPY statements; pass a pgx.Tx to make them one unit.
//
// Load honours ctx; on error the Summary counts what was generated so far,
// not what was committed.
func Load(ctx context.Context, db CopyFromer, opts Options, emit func(Truth) error) (Summary, error) {
	var sum Summary
	if err := opts.validate(); err != nil {
		return sum, err
	}
	start := time.Now()
	g := newGenerator(opts)

	users := &userSource{g: g, sum: &sum, row: make([]any, len(userColumns()))}
	if _, err := db.CopyFrom(ctx, pgx.Identifier{"platform", "users"}, userColumns(), users); err != nil {
		return sum, fmt.Errorf("seed: copy users: %w", withContext(ctx, err))
	}
	sessions := newSessionSource(g, &sum, emit)
	if _, err := db.CopyFrom(ctx, pgx.Identifier{"platform", "user_sessions"}, sessionColumns(), sessions); err != nil {
		if sessions.err != nil {
			// pgx sends a source's error to the server as COPY's failure
			// message and returns the server's error, losing the chain.
			err = sessions.err
		}
		return sum, fmt.Errorf("seed: copy sessions: %w", withContext(ctx, err))
	}
	sum.Duration = time.Since(start)
	return sum, nil
}

// withContext adds ctx's error to err when ctx is done: pgx sometimes reports
// a cancelled COPY only as a write on the connection it closed.
func withContext(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	return err
}

// userColumns and sessionColumns name the columns in the order the row
// generators fill them.
func userColumns() []string {
	return []string{"id", "email", "first_name", "last_name", "username", "deleted_at", "banned_until"}
}

func sessionColumns() []string {
	return []string{"id", "user_id", "token", "expires_at", "last_activity_at", "ip_address", "user_agent", "created_at"}
}

// userSource streams users 0..Users-1 into COPY.
type userSource struct {
	g   *generator
	sum *Summary
	i   int
	row []any
}

func (s *userSource) Next() bool {
	if s.i >= s.g.opts.Users {
		return false
	}
	u := s.g.user(s.i)
	s.g.userRow(s.i, u, s.row)
	s.sum.Users++
	if !u.deletedAt.IsZero() {
		s.sum.DeletedUsers++
	}
	if !u.bannedUntil.IsZero() {
		if u.bannedUntil.After(s.g.now) {
			s.sum.BannedUsers++
		} else {
			s.sum.LapsedBans++
		}
	}
	s.i++
	return true
}

func (s *userSource) Values() ([]any, error) { return s.row, nil }
func (s *userSource) Err() error             { return nil }

// sessionSource streams sessions into COPY and reports each to emit.
type sessionSource struct {
	g    *generator
	sg   *sessionGen
	sum  *Summary
	emit func(Truth) error
	i    int
	row  []any
	err  error
}

func newSessionSource(g *generator, sum *Summary, emit func(Truth) error) *sessionSource {
	return &sessionSource{g: g, sg: g.sessions(), sum: sum, emit: emit, row: make([]any, len(sessionColumns()))}
}

func (s *sessionSource) Next() bool {
	if s.err != nil || s.i >= s.g.opts.Sessions {
		return false
	}
	t := s.sg.next(s.row)
	s.sum.Sessions++
	switch t.Reason {
	case "":
		s.sum.Valid++
	case ReasonExpired:
		s.sum.Expired++
	case ReasonUserDeleted:
		s.sum.UserDeleted++
	case ReasonUserBanned:
		s.sum.UserBanned++
	}
	if s.emit != nil {
		if err := s.emit(t); err != nil {
			s.err = fmt.Errorf("emit: %w", err)
			return false
		}
	}
	s.i++
	return true
}

func (s *sessionSource) Values() ([]any, error) { return s.row, nil }
func (s *sessionSource) Err() error             { return s.err }
