package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/seed"
)

// seedOptions is the demo data's shape (seed.DefaultDemo: 10% expired, 3%
// of users banned, 2% deleted; activity over 30 days, most in the last few
// hours) at the given size, relative to now. users <= 0 means 2 users per 5
// sessions, as in the demo.
func seedOptions(users, sessions int, s int64) seed.Options {
	o := seed.DefaultDemo()
	o.Seed, o.Sessions = s, sessions
	o.Users = users
	if o.Users <= 0 {
		o.Users = max(1, sessions*2/5)
	}
	return o
}

// loadSeed migrates the database at url (schema.Migrate, triggers
// included), refuses one that already holds sessions, loads o with COPY
// (streamed: memory stays flat), passing each session's truth to emit, and
// runs ANALYZE on both tables so the planner knows their size.
func loadSeed(ctx context.Context, url string, o seed.Options, emit func(seed.Truth) error) (seed.Summary, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return seed.Summary{}, fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := schema.Migrate(ctx, conn); err != nil {
		return seed.Summary{}, err
	}
	var n int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM platform.user_sessions`).Scan(&n); err != nil {
		return seed.Summary{}, err
	}
	if n > 0 {
		return seed.Summary{}, fmt.Errorf("the database already holds %d sessions: seed an empty one (its truth would not cover them)", n)
	}
	sum, err := seed.Load(ctx, conn, o, emit)
	if err != nil {
		return sum, err
	}
	start := time.Now()
	if _, err := conn.Exec(ctx, `ANALYZE platform.users, platform.user_sessions`); err != nil {
		return sum, fmt.Errorf("analyze: %w", err)
	}
	sum.Duration += time.Since(start)
	return sum, nil
}

// rowsPerSecond is the seeding rate, users and sessions together.
func rowsPerSecond(s seed.Summary) float64 {
	if s.Duration <= 0 {
		return 0
	}
	return float64(s.Users+s.Sessions) / s.Duration.Seconds()
}

func summaryLine(s seed.Summary) string {
	return fmt.Sprintf("%d users (%d deleted, %d banned, %d bans lapsed), %d sessions (%d valid, %d expired, %d of deleted users, %d of banned users) in %v: %.0f rows/s",
		s.Users, s.DeletedUsers, s.BannedUsers, s.LapsedBans, s.Sessions, s.Valid, s.Expired, s.UserDeleted, s.UserBanned,
		s.Duration.Round(time.Millisecond), rowsPerSecond(s))
}
