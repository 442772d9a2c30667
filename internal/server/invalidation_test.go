package server_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/invalidate"
	"github.com/sessiond/sessiond/internal/schema"
)

// Far below the cache TTL (5 minutes): an answer that changes within it did
// not wait for a TTL.
const propagation = 5 * time.Second

// localOn waits until the session is answered from the client-side cache of
// every instance.
func localOn(t *testing.T, token string, hs ...*harness) {
	t.Helper()
	for i, h := range hs {
		eventually(t, 5*time.Second, func() error {
			if r := h.mustValidate(token); r.GetSource() != sessiondv1.Source_SOURCE_LOCAL {
				return fmt.Errorf("instance %d answers from %v", i, r.GetSource())
			}
			return nil
		})
	}
}

// becomes waits until every instance answers valid and reason as wanted.
func becomes(t *testing.T, token string, valid bool, reason sessiondv1.Reason, hs ...*harness) {
	t.Helper()
	for i, h := range hs {
		eventually(t, propagation, func() error {
			r := h.mustValidate(token)
			if r.GetValid() != valid || r.GetReason() != reason {
				return fmt.Errorf("instance %d: valid=%v reason=%v from %v", i, r.GetValid(), r.GetReason(), r.GetSource())
			}
			return nil
		})
	}
}

func (h *harness) exec(sql string, args ...any) {
	h.t.Helper()
	if _, err := h.db.Exec(h.t.Context(), sql, args...); err != nil {
		h.t.Fatal(err)
	}
}

// Two instances share Redis and Postgres; a change committed in Postgres
// reaches both, through the triggers, without waiting for a TTL.
func TestRevocationReachesEveryInstance(t *testing.T) {
	dbURL, redisURL := devtest.Database(t), devtest.RedisURL(t)
	a := start(t, dbURL, redisURL)
	b := start(t, dbURL, redisURL)
	unbanned := sessiondv1.Reason_REASON_UNSPECIFIED
	for _, tt := range []struct {
		name   string
		before user
		change func(u user, s session)
		valid  bool
		reason sessiondv1.Reason
	}{
		{"session deleted (sign-out)", user{}, func(_ user, s session) {
			a.exec(`DELETE FROM platform.user_sessions WHERE id = $1`, s.id)
		}, false, sessiondv1.Reason_REASON_NOT_FOUND},
		{"session revoked by expiry", user{}, func(_ user, s session) {
			a.exec(`UPDATE platform.user_sessions SET expires_at = now() - interval '1 second' WHERE id = $1`, s.id)
		}, false, sessiondv1.Reason_REASON_EXPIRED},
		{"user banned", user{}, func(u user, _ session) {
			a.exec(`UPDATE platform.users SET banned_until = now() + interval '1 day' WHERE id = $1`, u.id)
		}, false, sessiondv1.Reason_REASON_USER_BANNED},
		{"ban lifted", user{bannedUntil: time.Now().Add(24 * time.Hour)}, func(u user, _ session) {
			a.exec(`UPDATE platform.users SET banned_until = NULL WHERE id = $1`, u.id)
		}, true, unbanned},
		{"user deleted", user{}, func(u user, _ session) {
			a.exec(`UPDATE platform.users SET deleted_at = now() WHERE id = $1`, u.id)
		}, false, sessiondv1.Reason_REASON_USER_DELETED},
		{"session moved to a deleted user", user{}, func(_ user, s session) {
			gone := a.addUser(user{deletedAt: time.Now().Add(-time.Hour)})
			a.exec(`UPDATE platform.user_sessions SET user_id = $1 WHERE id = $2`, gone.id, s.id)
		}, false, sessiondv1.Reason_REASON_USER_DELETED},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := a.addUser(tt.before)
			s := a.addSession(u, session{})
			localOn(t, s.token, a, b)
			tt.change(u, s)
			becomes(t, s.token, tt.valid, tt.reason, a, b)
		})
	}
}

// Without triggers, an application calls InvalidateSessions; from then on
// the instance that handled it never answers from a stale local copy, and
// the other one follows through Redis.
func TestInvalidateSessionsRPC(t *testing.T) {
	dbURL, redisURL := devtest.Database(t), devtest.RedisURL(t)
	migrateWithoutTriggers(t, dbURL)
	a := start(t, dbURL, redisURL)
	b := start(t, dbURL, redisURL)

	u := a.addUser(user{})
	byToken := a.addSession(u, session{})
	v := a.addUser(user{})
	byUser := []session{a.addSession(v, session{}), a.addSession(v, session{})}
	for _, s := range append([]session{byToken}, byUser...) {
		localOn(t, s.token, a, b)
	}
	// The application signs out and bans, without triggers to tell us.
	a.exec(`DELETE FROM platform.user_sessions WHERE id = $1`, byToken.id)
	a.exec(`UPDATE platform.users SET banned_until = now() + interval '1 hour' WHERE id = $1`, v.id)
	if r := a.mustValidate(byToken.token); !r.GetValid() {
		t.Fatal("without triggers the cache does not know yet; the test premise is wrong")
	}

	resp, err := a.client.InvalidateSessions(t.Context(), &sessiondv1.InvalidateSessionsRequest{
		Tokens: []string{byToken.token}, UserId: v.id,
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetInvalidated() != 2 { // the token's entry, and the user
		t.Errorf("invalidated %d, want 2", resp.GetInvalidated())
	}
	// At once on the instance that handled the call: not one stale answer.
	if r := a.mustValidate(byToken.token); r.GetValid() || r.GetReason() != sessiondv1.Reason_REASON_NOT_FOUND {
		t.Errorf("right after InvalidateSessions: %v", r)
	}
	for _, s := range byUser {
		if r := a.mustValidate(s.token); r.GetValid() {
			t.Errorf("right after InvalidateSessions: %v", r)
		}
	}
	becomes(t, byToken.token, false, sessiondv1.Reason_REASON_NOT_FOUND, b)
	for _, s := range byUser {
		becomes(t, s.token, false, sessiondv1.Reason_REASON_USER_BANNED, b)
	}
	st, err := a.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetCache().GetInvalidations() < 2 {
		t.Errorf("invalidations %d, want at least 2", st.GetCache().GetInvalidations())
	}
	// The first instance on a new Redis and database bumps twice: once for
	// a dataset never verified, once because nobody listened before it. The
	// second, started while the first covers, empties nothing.
	if st.GetCache().GetResyncs() != 2 {
		t.Errorf("first instance: resyncs %d, want 2", st.GetCache().GetResyncs())
	}
	if st, err := b.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{}); err != nil || st.GetCache().GetResyncs() != 0 {
		t.Errorf("second instance: resyncs %d (%v), want 0", st.GetCache().GetResyncs(), err)
	}

	for _, bad := range []*sessiondv1.InvalidateSessionsRequest{
		{},
		{Tokens: []string{""}},
		{Tokens: []string{"bad\x00token"}},
		{UserId: "not-a-uuid"},
	} {
		if _, err := a.client.InvalidateSessions(t.Context(), bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want InvalidArgument", bad, err)
		}
	}
}

func migrateWithoutTriggers(t *testing.T, dbURL string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := schema.Migrate(t.Context(), conn, schema.WithoutTriggers()); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'sessiond_%'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d sessiond triggers (%v), want none", n, err)
	}
}

// Unknown tokens cost one Postgres query per negative TTL, and a session
// created later with such a token is not shadowed by the cached "no".
func TestNegativeCache(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	tok := newToken(t)
	for range 5 {
		if r := h.mustValidate(tok); r.GetValid() || r.GetReason() != sessiondv1.Reason_REASON_NOT_FOUND {
			t.Fatalf("unknown token: %v", r)
		}
		h.cached(tok)
	}
	c := h.srv.ReadThrough().Counters()
	if q := c.PostgresReads.Load(); q != 1 {
		t.Errorf("5 asks of one unknown token made %d postgres queries, want 1", q)
	}
	if n := c.NegativeHits.Load(); n != 4 {
		t.Errorf("negative hits %d, want 4", n)
	}
	u := h.addUser(user{})
	h.addSession(u, session{token: tok})
	becomes(t, tok, true, sessiondv1.Reason_REASON_UNSPECIFIED, h)
}

func TestNegativeCacheOff(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.NegativeTTL = 0 })
	tok := newToken(t)
	for range 3 {
		h.mustValidate(tok)
	}
	if q := h.srv.ReadThrough().Counters().PostgresReads.Load(); q != 3 {
		t.Errorf("with --negative-ttl=0, 3 asks made %d queries, want 3", q)
	}
}

// After traffic, last_activity_at moved forward for the sessions that were
// used (from the cache) and not for the others.
func TestActivityReachesPostgres(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) {
		c.ActivityInterval = time.Hour // only the flush at shutdown
		c.ActivityGranularity = time.Second
	})
	u := h.addUser(user{})
	hourAgo := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	used := h.addSession(u, session{lastActivity: hourAgo})
	idle := h.addSession(u, session{lastActivity: hourAgo})
	localOn(t, used.token, h) // answered from the cache: Postgres does not see it
	before := time.Now()
	h.shutdown()

	last := func(id string) time.Time {
		var t0 time.Time
		if err := h.db.QueryRow(t.Context(), `SELECT last_activity_at FROM platform.user_sessions WHERE id = $1`, id).Scan(&t0); err != nil {
			t.Fatal(err)
		}
		return t0
	}
	if got := last(used.id); got.Before(before.Add(-time.Minute)) {
		t.Errorf("used session: last_activity_at %v, want moved forward to about %v", got, before)
	}
	if got := last(idle.id); !got.Equal(hourAgo) {
		t.Errorf("idle session: last_activity_at %v, want unchanged %v", got, hourAgo)
	}
}

// freezer is a TCP proxy that can go silent: it keeps every connection open
// but stops moving bytes, as a half-open network path does (no RST, no FIN).
type freezer struct {
	lis    net.Listener
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newFreezer(t *testing.T, upstream string) *freezer {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{lis: lis}
	t.Cleanup(func() {
		lis.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
	})
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, up)
			f.mu.Unlock()
			go f.pipe(c, up)
			go f.pipe(up, c)
		}
	}()
	return f
}

func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if f.frozen.Load() {
			continue // swallowed: nothing arrives, nothing fails
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// An instance whose Redis connection goes silent stops answering from its
// client-side cache within the documented bound (1.5 × --redis-conn-timeout
// = 1.8 s by default), and answers from Postgres instead. The check allows
// a second of scheduling noise on a loaded 2-core machine; the measured time
// is logged.
func TestHalfOpenRedisStopsLocalAnswers(t *testing.T) {
	rs := devtest.OwnRedis(t)
	proxy := newFreezer(t, rs.Addr())
	h := start(t, devtest.Database(t), "redis://"+proxy.lis.Addr().String())
	u := h.addUser(user{})
	s := h.addSession(u, session{})
	localOn(t, s.token, h)

	proxy.frozen.Store(true)
	frozeAt := time.Now()
	var lastLocal time.Duration
	eventually(t, 10*time.Second, func() error {
		r := h.mustValidate(s.token)
		if !r.GetValid() {
			t.Fatalf("valid session refused: %v", r)
		}
		if r.GetSource() == sessiondv1.Source_SOURCE_LOCAL {
			lastLocal = time.Since(frozeAt)
			return errors.New("still answering from the local cache")
		}
		return nil
	})
	t.Logf("last local answer %v after the connection went silent", lastLocal)
	if bound := 3 * h.cfg.RedisConnTimeout / 2; lastLocal > bound+time.Second {
		t.Errorf("local answers went on for %v, past the %v bound", lastLocal, bound)
	}
}

// coherence bounds how long after a revocation committed an instance under
// load may still answer valid: revocations reach every instance in about a
// millisecond (BenchmarkRevocationLatency); this leaves a loaded CI machine
// room without waiting for any TTL.
const coherence = time.Second

// Three instances share Redis (a cluster under `make test-engines`) and
// Postgres and answer a steady load spread over all of them, the way a load
// balancer in front of them would. Sessions are revoked in every way while
// the load runs: no answer given after a revocation's propagation bound may
// say valid, on any instance, and the sessions left alone keep validating.
func TestThreeInstancesStayCoherentUnderLoad(t *testing.T) {
	dbURL, redisURL := devtest.Database(t), devtest.RedisURL(t)
	hs := []*harness{start(t, dbURL, redisURL), start(t, dbURL, redisURL), start(t, dbURL, redisURL)}
	a := hs[0]
	type victim struct {
		s       session
		revoked atomic.Int64 // Unix ns when the revocation committed; 0 while valid
	}
	var victims []*victim
	var users []user
	for range 30 {
		u := a.addUser(user{})
		users = append(users, u)
		victims = append(victims, &victim{s: a.addSession(u, session{})})
	}
	keep := a.addSession(a.addUser(user{}), session{})
	for _, v := range victims {
		localOn(t, v.s.token, hs...)
	}

	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var answers, late atomic.Int64
	var firstLate atomic.Value
	for w := range 6 {
		wg.Go(func() {
			for i := w; ctx.Err() == nil; i++ {
				h := hs[i%len(hs)]
				v := victims[i%len(victims)]
				sent := time.Now()
				r, err := h.validate(v.s.token)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("ValidateSession: %v", err)
					}
					return
				}
				answers.Add(1)
				if rv := v.revoked.Load(); r.GetValid() && rv != 0 && sent.Sub(time.Unix(0, rv)) > coherence {
					late.Add(1)
					firstLate.CompareAndSwap(nil, fmt.Sprintf("instance %d, session %s: valid %s after its revocation",
						i%len(hs), v.s.id, sent.Sub(time.Unix(0, rv))))
				}
				if r2, err := h.validate(keep.token); err == nil && !r2.GetValid() {
					t.Errorf("a session nobody touched answered %v", r2.GetReason())
				}
			}
		})
	}
	for i, v := range victims {
		switch i % 3 {
		case 0:
			a.exec(`DELETE FROM platform.user_sessions WHERE id = $1`, v.s.id)
		case 1:
			a.exec(`UPDATE platform.users SET banned_until = now() + interval '1 day' WHERE id = $1`, users[i].id)
		case 2:
			a.exec(`UPDATE platform.users SET deleted_at = now() WHERE id = $1`, users[i].id)
		}
		v.revoked.Store(time.Now().UnixNano())
	}
	for _, v := range victims {
		for _, h := range hs {
			eventually(t, propagation, func() error {
				if h.mustValidate(v.s.token).GetValid() {
					return errors.New("still valid")
				}
				return nil
			})
		}
	}
	stop()
	wg.Wait()
	if late.Load() != 0 {
		t.Errorf("%d of %d answers valid more than %s after the revocation; first: %v", late.Load(), answers.Load(), coherence, firstLate.Load())
	}
	t.Logf("%d answers checked", answers.Load())
}

// --listen-database-url: the LISTEN and heartbeat connections go where it
// says (past a PgBouncer in transaction mode, Postgres itself), the pool
// where --database-url says; a revocation still reaches the local cache.
// Told apart here by the role each connects as.
func TestListenerHasItsOwnURL(t *testing.T) {
	dbURL := devtest.Database(t)
	h := prepare(t, dbURL, devtest.RedisURL(t))
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	role := "sessiond_listener_" + hex.EncodeToString(b[:])
	h.exec(`CREATE ROLE ` + role + ` LOGIN`)
	t.Cleanup(func() { // after the server has stopped (cleanups run last first)
		_, _ = h.db.Exec(context.Background(), `DROP ROLE IF EXISTS `+role)
	})
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	h.cfg.ListenDatabaseURL = u.String()
	h.run()

	usr := h.addUser(user{})
	s := h.addSession(usr, session{})
	localOn(t, s.token, h) // its miss used the pool
	h.exec(`UPDATE platform.users SET banned_until = now() + interval '1 day' WHERE id = $1`, usr.id)
	becomes(t, s.token, false, sessiondv1.Reason_REASON_USER_BANNED, h)

	rows, err := h.db.Query(t.Context(), `SELECT usename, application_name FROM pg_stat_activity
		WHERE datname = current_database() AND application_name LIKE 'sessiond%'`)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for rows.Next() {
		var usename, app string
		if err := rows.Scan(&usename, &app); err != nil {
			t.Fatal(err)
		}
		seen[app] = true
		listener := app == invalidate.ListenerApplicationName || app == invalidate.HeartbeatApplicationName
		if listener != (usename == role) {
			t.Errorf("%s connected as %s; only the listener's connections may use --listen-database-url (%s)", app, usename, role)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !seen[invalidate.ListenerApplicationName] || !seen["sessiond"] {
		t.Errorf("connections seen: %v, want the listener's and the pool's", seen)
	}
}
