package seed_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/seed"
	"github.com/sessiond/sessiond/internal/tiers"
)

// The three things callers hand to Load.
var (
	_ seed.CopyFromer = (*pgxpool.Pool)(nil)
	_ seed.CopyFromer = (*pgx.Conn)(nil)
	_ seed.CopyFromer = (pgx.Tx)(nil)
)

func TestMain(m *testing.M) { devtest.Main(m) }

// migrated connects to a fresh, migrated database.
func migrated(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), devtest.Database(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if err := schema.Migrate(context.Background(), conn); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return conn
}

// testOptions has shares large enough that each kind of row appears often.
func testOptions() seed.Options {
	return seed.Options{
		Seed:         42,
		Users:        2000,
		Sessions:     5000,
		Now:          time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC),
		ExpiredShare: 0.10,
		BannedShare:  0.10,
		DeletedShare: 0.05,
		NullShare:    0.10,
		IPv6Share:    0.25,
	}
}

func load(t testing.TB, db seed.CopyFromer, opts seed.Options) (seed.Summary, []seed.Truth) {
	t.Helper()
	var truths []seed.Truth
	sum, err := seed.Load(context.Background(), db, opts, func(tr seed.Truth) error {
		truths = append(truths, tr)
		return nil
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return sum, truths
}

// dump returns every row of the platform tables as text, in id order.
func dump(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), `
		SELECT 'u ' || u::text FROM platform.users u
		UNION ALL
		SELECT 's ' || s::text FROM platform.user_sessions s
		ORDER BY 1`)
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	return out
}

// Same Options ⇒ the same rows and tokens, whichever kind of connection
// loads them; another seed ⇒ other data.
func TestLoadIsDeterministic(t *testing.T) {
	opts := testOptions()

	a := migrated(t)
	_, truthsA := load(t, a, opts)

	b := migrated(t)
	tx, err := b.Begin(t.Context())
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	_, truthsB := load(t, tx, opts)
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatalf("commit: %v", err)
	}

	dumpA, dumpB := dump(t, a), dump(t, b)
	if len(dumpA) != opts.Users+opts.Sessions {
		t.Fatalf("dump has %d rows, want %d", len(dumpA), opts.Users+opts.Sessions)
	}
	if !slices.Equal(dumpA, dumpB) {
		for i := range dumpA {
			if dumpA[i] != dumpB[i] {
				t.Fatalf("row %d differs:\n%s\n%s", i, dumpA[i], dumpB[i])
			}
		}
	}
	if !slices.Equal(truthsA, truthsB) {
		t.Errorf("emitted truths differ between two loads of the same Options")
	}

	opts.Seed++
	pool, err := pgxpool.New(t.Context(), a.Config().ConnString())
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(t.Context(), `TRUNCATE platform.users, platform.user_sessions`); err != nil {
		t.Fatalf("truncate: %v", err)
	}
	_, truthsC := load(t, pool, opts)
	if truthsC[0].Token == truthsA[0].Token || truthsC[0].UserID == truthsA[0].UserID {
		t.Errorf("seed %d and %d produced the same first session", opts.Seed-1, opts.Seed)
	}
}

// The verdict Load emits for each token must be the one the rule gives when
// computed by SQL over the stored rows, and the stored token must be the
// SHA-256 of the emitted one.
func TestLoadVerdictsMatchSQL(t *testing.T) {
	opts := testOptions()
	conn := migrated(t)
	sum, truths := load(t, conn, opts)

	rows, err := conn.Query(t.Context(), `
		SELECT s.token, s.id::text, s.user_id::text, s.last_activity_at,
		       CASE WHEN u.deleted_at IS NOT NULL THEN 'user_deleted'
		            WHEN u.banned_until IS NOT NULL AND u.banned_until > $1 THEN 'user_banned'
		            WHEN s.expires_at <= $1 THEN 'expired'
		            ELSE '' END
		FROM platform.user_sessions s JOIN platform.users u ON u.id = s.user_id`, opts.Now)
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	type row struct {
		sessionID, userID, reason string
		last                      time.Time
	}
	byHash := map[string]row{}
	for rows.Next() {
		var hash string
		var r row
		if err := rows.Scan(&hash, &r.sessionID, &r.userID, &r.last, &r.reason); err != nil {
			t.Fatalf("scan: %v", err)
		}
		byHash[hash] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("rows: %v", err)
	}

	if len(truths) != opts.Sessions || len(byHash) != opts.Sessions {
		t.Fatalf("emitted %d truths, table has %d sessions; want %d", len(truths), len(byHash), opts.Sessions)
	}
	reasons := map[string]int{}
	hexToken := regexp.MustCompile(`^[0-9a-f]{64}$`)
	for _, tr := range truths {
		if !hexToken.MatchString(tr.Token) {
			t.Fatalf("token %q is not 64 lowercase hex characters", tr.Token)
		}
		h := sha256.Sum256([]byte(tr.Token))
		r, ok := byHash[hex.EncodeToString(h[:])]
		if !ok {
			t.Fatalf("no session stores sha256(%s)", tr.Token)
		}
		if r.sessionID != tr.SessionID || r.userID != tr.UserID || !r.last.Equal(tr.LastActivityAt) {
			t.Errorf("token %s: emitted (%s, %s, %v), stored (%s, %s, %v)",
				tr.Token, tr.SessionID, tr.UserID, tr.LastActivityAt, r.sessionID, r.userID, r.last)
		}
		if r.reason != tr.Reason || tr.Valid != (tr.Reason == "") {
			t.Errorf("token %s: emitted valid=%v reason=%q, SQL says %q", tr.Token, tr.Valid, tr.Reason, r.reason)
		}
		reasons[tr.Reason]++
	}
	want := map[string]int{
		"":                     sum.Valid,
		seed.ReasonExpired:     sum.Expired,
		seed.ReasonUserDeleted: sum.UserDeleted,
		seed.ReasonUserBanned:  sum.UserBanned,
	}
	for reason, n := range want {
		if reasons[reason] != n {
			t.Errorf("reason %q: %d emitted, Summary says %d", reason, reasons[reason], n)
		}
		if n == 0 {
			t.Errorf("no session with reason %q", reason)
		}
	}
	if sum.Users != opts.Users || sum.Sessions != opts.Sessions {
		t.Errorf("Summary counts %d users, %d sessions; want %d, %d", sum.Users, sum.Sessions, opts.Users, opts.Sessions)
	}
}

// within fails the test unless got is want ± tol.
func within(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.4f, want %.4f ± %.4f", what, got, want, tol)
	} else {
		t.Logf("%s = %.4f (want %.4f)", what, got, want)
	}
}

// The data has the shape the package comment promises.
func TestLoadShape(t *testing.T) {
	opts := testOptions()
	conn := migrated(t)
	sum, _ := load(t, conn, opts)
	ctx := t.Context()

	var (
		users, deleted, banned, lapsed                   int
		nullFirst, nullLast, nullUsername, emails, ascii int
	)
	err := conn.QueryRow(ctx, `
		SELECT count(*),
		       count(deleted_at),
		       count(banned_until),
		       count(*) FILTER (WHERE banned_until <= $1),
		       count(*) - count(first_name),
		       count(*) - count(last_name),
		       count(*) - count(username),
		       count(DISTINCT email),
		       count(*) FILTER (WHERE email ~ '^[a-z]+\.?[a-z]+[0-9]+@[a-z.]+$' AND coalesce(username, '') ~ '^[a-z0-9_]*$')
		FROM platform.users`, opts.Now).
		Scan(&users, &deleted, &banned, &lapsed, &nullFirst, &nullLast, &nullUsername, &emails, &ascii)
	if err != nil {
		t.Fatalf("query users: %v", err)
	}
	n := float64(users)
	// Tolerances are about 4 standard deviations of a binomial share.
	tol := func(p, n float64) float64 { return 4 * math.Sqrt(p*(1-p)/n) }
	within(t, "deleted users", float64(deleted)/n, opts.DeletedShare, tol(opts.DeletedShare, n))
	within(t, "banned users", float64(banned)/n, opts.BannedShare, tol(opts.BannedShare, n))
	within(t, "lapsed bans", float64(lapsed)/float64(banned), seed.LapsedBanShare, tol(seed.LapsedBanShare, float64(banned)))
	within(t, "NULL first_name", float64(nullFirst)/n, opts.NullShare, tol(opts.NullShare, n))
	within(t, "NULL last_name", float64(nullLast)/n, opts.NullShare, tol(opts.NullShare, n))
	within(t, "NULL username", float64(nullUsername)/n, opts.NullShare, tol(opts.NullShare, n))
	if emails != users {
		t.Errorf("%d distinct emails for %d users", emails, users)
	}
	if ascii != users {
		t.Errorf("%d of %d users have an email or username that is not lowercase ASCII", users-ascii, users)
	}
	if sum.DeletedUsers != deleted || sum.BannedUsers+sum.LapsedBans != banned || sum.LapsedBans != lapsed {
		t.Errorf("Summary %+v disagrees with the table: %d deleted, %d banned, %d lapsed", sum, deleted, banned, lapsed)
	}

	var (
		sessions, expired, nullIP, v6, nullUA, createdAfter, last6h, older30d int
		idle                                                                  int
	)
	err = conn.QueryRow(ctx, `
		SELECT count(*),
		       count(*) FILTER (WHERE expires_at <= $1),
		       count(*) - count(ip_address),
		       count(*) FILTER (WHERE family(ip_address) = 6),
		       count(*) - count(user_agent),
		       count(*) FILTER (WHERE created_at > last_activity_at),
		       count(*) FILTER (WHERE last_activity_at > $1 - interval '6 hours'),
		       count(*) FILTER (WHERE last_activity_at < $1 - interval '30 days' OR last_activity_at > $1),
		       count(*) FILTER (WHERE last_activity_at < $1 - interval '7 days')
		FROM platform.user_sessions`, opts.Now).
		Scan(&sessions, &expired, &nullIP, &v6, &nullUA, &createdAfter, &last6h, &older30d, &idle)
	if err != nil {
		t.Fatalf("query sessions: %v", err)
	}
	s := float64(sessions)
	within(t, "expired sessions", float64(expired)/s, opts.ExpiredShare, tol(opts.ExpiredShare, s))
	within(t, "NULL ip_address", float64(nullIP)/s, opts.NullShare, tol(opts.NullShare, s))
	within(t, "IPv6 among addresses", float64(v6)/float64(sessions-nullIP), opts.IPv6Share, tol(opts.IPv6Share, float64(sessions-nullIP)))
	within(t, "NULL user_agent", float64(nullUA)/s, opts.NullShare, tol(opts.NullShare, s))
	if createdAfter != 0 {
		t.Errorf("%d sessions created after their last activity", createdAfter)
	}
	if older30d != 0 {
		t.Errorf("%d sessions last active more than 30 days ago or in the future", older30d)
	}
	// 70% exponential with a 2 h mean puts 0.70·(1−e⁻³) = 66.5% within 6 h;
	// the 30% log-uniform tail on [5 min, 30 d] adds 0.30·ln 72/ln 8640 =
	// 14.2%, and puts 0.30·ln(30/7)/ln 8640 = 4.8% beyond 7 days.
	within(t, "active in the last 6 hours", float64(last6h)/s, 0.807, 0.025)
	within(t, "idle for more than 7 days", float64(idle)/s, 0.048, 0.015)

	// Skew: some users hold many sessions, a good share hold none.
	var withNone, most int
	err = conn.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM platform.users u WHERE NOT EXISTS (SELECT 1 FROM platform.user_sessions s WHERE s.user_id = u.id)),
		       (SELECT max(c) FROM (SELECT count(*) c FROM platform.user_sessions GROUP BY user_id) x)`).Scan(&withNone, &most)
	if err != nil {
		t.Fatalf("query skew: %v", err)
	}
	t.Logf("users without sessions: %d of %d; most sessions for one user: %d", withNone, users, most)
	if withNone < users/10 || most < 20 {
		t.Errorf("sessions per user not skewed: %d of %d users have none, the busiest has %d", withNone, users, most)
	}
}

func TestLoadStopsWhenEmitFails(t *testing.T) {
	conn := migrated(t)
	boom := errors.New("boom")
	calls := 0
	_, err := seed.Load(t.Context(), conn, testOptions(), func(seed.Truth) error {
		calls++
		if calls == 10 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Load = %v, want an error wrapping the emit error", err)
	}
	if calls != 10 {
		t.Errorf("emit called %d times after failing on the 10th", calls)
	}
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM platform.user_sessions`).Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	if n != 0 {
		t.Errorf("%d sessions committed although the COPY failed", n)
	}
}

func TestLoadHonoursContext(t *testing.T) {
	conn := migrated(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	opts := testOptions()
	opts.Sessions = 200_000 // far more than are generated before the cancel takes effect
	calls := 0
	_, err := seed.Load(ctx, conn, opts, func(seed.Truth) error {
		if calls++; calls == 1000 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Load = %v, want an error wrapping context.Canceled", err)
	}
	if calls == opts.Sessions {
		t.Errorf("Load generated every session despite the cancel")
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, tc := range []struct {
		field  string
		modify func(*seed.Options)
	}{
		{"Users", func(o *seed.Options) { o.Users = -1 }},
		{"Sessions", func(o *seed.Options) { o.Sessions = -1 }},
		{"Users", func(o *seed.Options) { o.Users = 0 }},
		{"Now", func(o *seed.Options) { o.Now = time.Time{} }},
		{"ExpiredShare", func(o *seed.Options) { o.ExpiredShare = 1.5 }},
		{"BannedShare", func(o *seed.Options) { o.BannedShare = -0.1 }},
		{"DeletedShare", func(o *seed.Options) { o.DeletedShare = math.NaN() }},
		{"NullShare", func(o *seed.Options) { o.NullShare = 2 }},
		{"IPv6Share", func(o *seed.Options) { o.IPv6Share = -1 }},
	} {
		opts := testOptions()
		tc.modify(&opts)
		// No database is needed: Load validates before it touches db.
		_, err := seed.Load(t.Context(), nil, opts, nil)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Load with bad %s = %v, want an error naming %s", tc.field, err, tc.field)
		}
	}
}

func TestDefaultDemoIsValid(t *testing.T) {
	conn := migrated(t)
	opts := seed.DefaultDemo()
	sum, err := seed.Load(t.Context(), conn, opts, nil)
	if err != nil {
		t.Fatalf("Load(DefaultDemo()): %v", err)
	}
	if sum.Users != opts.Users || sum.Sessions != opts.Sessions || sum.Valid == 0 {
		t.Errorf("Summary %+v", sum)
	}
	t.Logf("DefaultDemo: %+v", sum)
}

func TestTokensRoundTrip(t *testing.T) {
	in := []seed.Truth{
		{Token: strings.Repeat("ab", 32), SessionID: "10000000-0000-4000-8000-000000000001", UserID: "00000000-0000-4000-8000-000000000001",
			Valid: true, LastActivityAt: time.Date(2026, 6, 1, 11, 59, 59, 123456000, time.UTC)},
		{Token: strings.Repeat("cd", 32), SessionID: "10000000-0000-4000-8000-000000000002", UserID: "00000000-0000-4000-8000-000000000002",
			Reason: seed.ReasonUserBanned, LastActivityAt: time.Date(2026, 5, 2, 0, 0, 0, 0, time.UTC)},
	}
	var buf bytes.Buffer
	emit := seed.WriteTokens(&buf)
	for _, tr := range in {
		if err := emit(tr); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	wantText := strings.Repeat("ab", 32) + "\t10000000-0000-4000-8000-000000000001\t00000000-0000-4000-8000-000000000001\ttrue\t\t2026-06-01T11:59:59.123456Z\n" +
		strings.Repeat("cd", 32) + "\t10000000-0000-4000-8000-000000000002\t00000000-0000-4000-8000-000000000002\tfalse\tuser_banned\t2026-05-02T00:00:00Z\n"
	if buf.String() != wantText {
		t.Errorf("tokens file:\n%q\nwant\n%q", buf.String(), wantText)
	}
	out, err := seed.ReadTokens(&buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !slices.Equal(out, in) {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, in)
	}

	for _, bad := range []string{
		"abc\tx\ty\ttrue\t\n",                              // 5 fields
		"abc\tx\ty\tyes\t\t2026-06-01T00:00:00Z\n",         // bad bool
		"abc\tx\ty\ttrue\t\t1 June\n",                      // bad time
		"abc\tx\ty\tfalse\t\t2026-06-01T00:00:00Z\n",       // invalid without a reason
		"abc\tx\ty\ttrue\texpired\t2026-06-01T00:00:00Z\n", // valid with a reason
	} {
		if _, err := seed.ReadTokens(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("ReadTokens(%q) = %v, want an error naming line 1", bad, err)
		}
	}
}

// BenchmarkLoad measures Load end to end into a migrated database (both
// tables with their indexes and the foreign key), 2.5 sessions per user.
// rows/s counts users and sessions; sessions/s counts sessions only.
func BenchmarkLoad(b *testing.B) {
	for _, sessions := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			ctx := context.Background()
			pool, err := pgxpool.New(ctx, devtest.Database(b))
			if err != nil {
				b.Fatalf("pool: %v", err)
			}
			defer pool.Close()
			if err := schema.Migrate(ctx, pool); err != nil {
				b.Fatalf("migrate: %v", err)
			}
			opts := testOptions()
			opts.Sessions, opts.Users = sessions, sessions*2/5
			var (
				elapsed time.Duration
				loads   int
			)
			for b.Loop() {
				b.StopTimer()
				if _, err := pool.Exec(ctx, `TRUNCATE platform.users, platform.user_sessions`); err != nil {
					b.Fatalf("truncate: %v", err)
				}
				b.StartTimer()
				start := time.Now()
				if _, err := seed.Load(ctx, pool, opts, func(seed.Truth) error { return nil }); err != nil {
					b.Fatalf("Load: %v", err)
				}
				elapsed += time.Since(start)
				loads++
			}
			b.ReportMetric(float64(loads*(opts.Users+opts.Sessions))/elapsed.Seconds(), "rows/s")
			b.ReportMetric(float64(loads*opts.Sessions)/elapsed.Seconds(), "sessions/s")
		})
	}
}

// The truth's reasons are the service's own names for them.
func TestReasonsAreTheServicesNames(t *testing.T) {
	for _, tt := range []struct {
		seed string
		svc  tiers.Reason
	}{
		{seed.ReasonNotFound, tiers.ReasonNotFound}, {seed.ReasonExpired, tiers.ReasonExpired},
		{seed.ReasonUserDeleted, tiers.ReasonUserDeleted}, {seed.ReasonUserBanned, tiers.ReasonUserBanned},
	} {
		if tt.seed != tt.svc.String() {
			t.Errorf("seed says %q, the service %q", tt.seed, tt.svc.String())
		}
	}
}
