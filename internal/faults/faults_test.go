//go:build faults

package faults

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/tiers"
)

// TestFaults runs issue 8's scenarios in order against one set of servers,
// each leaving the system healthy for the next, and prints the report.
func TestFaults(t *testing.T) {
	s := newSuite(t, engines{})

	s.run(t, "1 listener killed 5x, then revocations", s.listenerKilled)
	s.run(t, "2 listener half-open, revocations", s.listenerHalfOpen)
	s.run(t, "3a redis killed, restarted empty", s.redisRestartEmpty)
	s.run(t, "3b redis restored from an RDB taken before a ban", s.redisRestoreRDB)
	s.run(t, "3c redis FLUSHALL", s.redisFlushAll)
	s.run(t, "4a redis slow (300 ms each way)", s.redisSlow)
	s.run(t, "4b redis half-open", s.redisHalfOpen)
	s.run(t, "5 postgres killed and restarted", s.postgresKilled)
	s.run(t, "6a TRUNCATE user_sessions, then restored", s.truncate)
	s.run(t, "6b 5,000-session insert, then a ban", s.insertBurst)
	s.run(t, "6c 2,000 users banned in one UPDATE", s.bulkBan)
	s.run(t, "6d infinity timestamps", s.infinity)
	s.run(t, "7a third instance started under load", s.thirdInstance)
	s.run(t, "7b SIGTERM under load", s.sigterm)
	s.run(t, "8 bad traffic on one instance", s.badTraffic)
}

// 1. The LISTEN connections are killed five times in a row, each time as
// soon as every instance has reconnected; right after the fifth kill,
// sessions are revoked. Every instance must refuse them within DefaultLag.
func (s *suite) listenerKilled(sc *scenario) {
	t := sc.t
	victims := sc.prepare(4)

	n := len(s.live())
	gone := map[int]bool{}
	var gaps []string
	sc.faultBegins()
	var killedAt time.Time
	for round := range 5 {
		pids := s.waitListeners(t, n, gone, 30*time.Second)
		if round > 0 {
			gaps = append(gaps, fmt.Sprintf("%.2fs", time.Since(killedAt).Seconds()))
		}
		for _, pid := range pids {
			if _, err := s.db.Exec(s.ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
				t.Fatal(err)
			}
			gone[pid] = true
		}
		killedAt = time.Now()
	}
	s.revoke(t, DefaultLag, victims...)
	s.waitListeners(t, n, gone, 30*time.Second)
	gaps = append(gaps, fmt.Sprintf("%.2fs", time.Since(killedAt).Seconds()))
	sc.faultEnds()
	sc.note("kill to every listener back: %s", strings.Join(gaps, ", "))
}

// 2. sessiond's connections to Postgres go half-open (the proxy stops
// moving bytes, closes nothing) while the harness, connected directly,
// revokes sessions: every instance must refuse them within
// HalfOpenListenerLag. Answers that need Postgres meanwhile may fail.
func (s *suite) listenerHalfOpen(sc *scenario) {
	t := sc.t
	victims := sc.prepare(4)

	sc.faultBegins()
	s.pgProxy.Stall()
	sc.observe(300 * time.Millisecond)
	s.revoke(t, HalfOpenListenerLag, victims...)
	sc.observe(time.Until(sc.faultStart.Add(4 * time.Second)))
	s.pgProxy.Cut() // the path never heals: its connections are reset
	s.pgProxy.Pass()
	sc.faultEnds()
}

// 3a. Redis is killed; sessions are revoked while it is down and again
// after it is back, empty.
func (s *suite) redisRestartEmpty(sc *scenario) {
	t := sc.t
	victims := sc.prepare(4)

	if err := os.Remove(s.redis.SnapshotPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	sc.faultBegins()
	if err := s.redis.Kill(); err != nil {
		t.Fatal(err)
	}
	sc.observe(500 * time.Millisecond)
	s.revoke(t, DefaultLag, victims[:2]...)
	sc.observe(time.Second)
	if err := s.redis.Restart(s.ctx); err != nil {
		t.Fatal(err)
	}
	s.revoke(t, DefaultLag, victims[2:]...)
	sc.faultEnds()
}

// 3b. Sessions cached everywhere; SAVE; their users banned, and every
// instance answers banned; then Redis is killed and restarted from the
// snapshot, which still holds the entries. No banned session may come back.
func (s *suite) redisRestoreRDB(sc *scenario) {
	t := sc.t
	victims := sc.prepare(3)
	toks := tokensOf(s.sessionsOf(victims))

	if err := s.rdb.Do(s.ctx, s.rdb.B().Save().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s.ban(t, DefaultLag, victims...)
	s.sweepUntil(t, toks, s.live(), 5*time.Second, "answered banned", func(a Answer) bool {
		return a.Code == codes.OK && a.Reason == sessiondv1.Reason_REASON_USER_BANNED
	})
	sc.faultBegins()
	if err := s.redis.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.redis.Restart(s.ctx); err != nil {
		t.Fatal(err)
	}
	sc.faultEnds()
	if err := os.Remove(s.redis.SnapshotPath()); err != nil {
		t.Fatal(err)
	}
	n, err := s.rdb.Do(s.ctx, s.rdb.B().Dbsize().Build()).AsInt64()
	sc.note("restored %d keys (%v)", n, err)
	// A resurrected entry lives for the cache TTL: once the recovery is
	// measured, drop the victims' entries as an operator would, so that
	// they do not spill into the next rows.
	sc.heal = append(sc.heal, func() {
		for _, u := range victims {
			ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
			_, err := s.a.admin.InvalidateSessions(ctx, &sessiondv1.InvalidateSessionsRequest{UserId: u.id})
			cancel()
			if err != nil {
				t.Errorf("InvalidateSessions for user %s: %v", u.id, err)
			}
		}
	})
}

// 3c. FLUSHALL under load, then revocations.
func (s *suite) redisFlushAll(sc *scenario) {
	t := sc.t
	victims := sc.prepare(4)

	sc.faultBegins()
	if err := s.rdb.Do(s.ctx, s.rdb.B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	sc.observe(200 * time.Millisecond)
	s.revoke(t, DefaultLag, victims...)
	sc.faultEnds()
}

// redisFault runs a Redis fault for 4 s with revocations inside it, judged
// with the lag lag returns just before they commit, and checks that every
// call sent meanwhile got an answer (from Postgres) within its deadline, and
// that no instance piled up resources.
func (s *suite) redisFault(sc *scenario, begin, end func(), lag func() time.Duration) {
	t := sc.t
	victims := sc.prepare(4)
	before := s.procStats(t)

	sc.faultBegins()
	begin()
	sc.observe(500 * time.Millisecond)
	s.revoke(t, lag(), victims...)
	sc.observe(time.Until(sc.faultStart.Add(4 * time.Second)))
	during := s.procStats(t)
	end()
	sc.faultEnds()

	// Compare with a system back at rest: 3 s after the fault (by then
	// every call sent during the fault has its answer too).
	for time.Since(sc.faultEnd) < 3*time.Second {
		sc.observe(250 * time.Millisecond)
	}
	after := s.procStats(t)

	var failed []Answer
	errs := map[codes.Code]int{}
	for _, a := range sc.answers {
		if !a.Sent.Before(sc.faultStart) && !a.Sent.After(sc.faultEnd) && a.Code != codes.OK {
			errs[a.Code]++
			failed = append(failed, a)
		}
	}
	sc.check(len(errs) == 0, "calls sent during the fault failed: %s (want every one answered from Postgres within the %v deadline): %s",
		Row{Errors: errs}.ErrorsString(), callDeadline, sc.describeCalls(failed, sc.faultStart))
	for i, in := range s.live() {
		sc.note("%s: %s before, %s at the fault's end, %s 3 s after", in.name, before[i], during[i], after[i])
		// A leaked socket per call or per Redis timeout would add hundreds.
		sc.check(after[i].FDs <= before[i].FDs+32, "%s: %d open fds after the fault, %d before", in.name, after[i].FDs, before[i].FDs)
	}
}

// 4a. Redis answers, but 600 ms late (past --redis-timeout, 250 ms).
func (s *suite) redisSlow(sc *scenario) {
	s.redisFault(sc, func() { s.redisProxy.Slow(300 * time.Millisecond) }, s.redisProxy.Pass,
		func() time.Duration { return DefaultLag })
}

// 4b. Redis's connections go half-open; then the path is reset.
// Revocations are judged against the README's half-open Redis bound: a
// stale local answer is acceptable until HalfOpenRedisBound after the
// connections went silent (or DefaultLag after the commit, if later).
func (s *suite) redisHalfOpen(sc *scenario) {
	s.redisFault(sc, s.redisProxy.Stall, func() {
		s.redisProxy.Cut()
		s.redisProxy.Pass()
	}, func() time.Duration {
		return max(DefaultLag, time.Until(sc.faultStart.Add(HalfOpenRedisBound)))
	})
	sc.note("revocations judged against the half-open Redis bound: stale until %v after the stall", HalfOpenRedisBound)
}

func (s *suite) procStats(t *testing.T) []procStats {
	var out []procStats
	for _, in := range s.live() {
		p, err := readProcStats(in.pid())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// 5. Postgres is killed under load for 3 s and restarted. Cached sessions
// keep validating; sessions never cached (cold) get no answer, and never
// valid=true for the revoked ones; sessiond recovers by itself; its pool
// does not grow past its size.
func (s *suite) postgresKilled(sc *scenario) {
	t := sc.t
	cold, coldToks := s.coldSessions(t)
	later := s.victims(t, 2)
	sc.focus(tokensOf(s.sessionsOf(later)))
	sc.observe(BaselineWindow)
	backendsBefore, err := s.sessiondBackends(s.ctx)
	if err != nil {
		t.Fatal(err)
	}

	sc.faultBegins()
	if err := s.pg.Kill(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	s.defaultMix(tokensOf(s.sessionsOf(later)), Draw{Weight: 0.10, Tokens: tokensOf(rowsOf(cold))})
	sc.observe(3 * time.Second)
	up := time.Now()
	if err := s.pg.Restart(s.ctx); err != nil {
		t.Fatal(err)
	}
	s.db.Reset() // the harness's connections died with the server
	s.revoke(t, DefaultLag, later...)
	sc.faultEnds()
	s.defaultMix(nil)
	sc.pull()

	// While Postgres was down: cold sessions unanswerable; sessions that an
	// instance answered from its cache in the 2 s before the kill, answered
	// by it.
	type pair struct {
		tok  int32
		inst string
	}
	cached := map[pair]bool{}
	for _, a := range sc.answers {
		if a.Code == codes.OK && a.FromCache() && a.Token != Fresh && !a.Done.Before(down.Add(-2*time.Second)) && a.Done.Before(down) {
			cached[pair{a.Token, a.Instance}] = true
		}
	}
	coldOK, cachedCalls, cachedOK := 0, 0, 0
	var unanswered []Answer
	for _, a := range sc.answers {
		if a.Sent.Before(down) || a.Done.After(up) {
			continue
		}
		if coldToks[a.Token] {
			if a.Code == codes.OK {
				coldOK++
			}
			continue
		}
		if !cached[pair{a.Token, a.Instance}] {
			continue
		}
		cachedCalls++
		if a.Code == codes.OK {
			cachedOK++
		} else {
			unanswered = append(unanswered, a)
		}
	}
	sc.check(coldOK == 0, "%d answers for never-cached sessions while Postgres was down (want none: they cannot be known)", coldOK)
	share := float64(cachedOK) / float64(max(cachedCalls, 1))
	sc.note("cached sessions answered during the outage: %d of %d (%.1f%%)", cachedOK, cachedCalls, 100*share)
	sc.check(cachedCalls > 0 && share >= 0.99, "cached sessions answered during the outage: %.1f%% of %d calls, want ≥ 99%%: %s",
		100*share, cachedCalls, sc.describeCalls(unanswered, sc.faultStart))

	// The pool after recovery: at most pool-size connections per instance
	// plus its listener and its heartbeat connection.
	sc.pull()
	for {
		if _, ok := Recovery(sc.answers, sc.bad(), sc.faultStart, sc.faultEnd); ok || time.Since(sc.faultEnd) > maxObserve {
			break
		}
		sc.observe(200 * time.Millisecond)
	}
	backendsAfter, err := s.sessiondBackends(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	limit := len(s.live()) * (poolSize + 2)
	sc.note("sessiond backends %d before, %d after (limit %d)", backendsBefore, backendsAfter, limit)
	sc.check(backendsAfter <= limit, "%d sessiond connections to Postgres after recovery, more than %d", backendsAfter, limit)
}

// coldSessions inserts 12 sessions of 6 victims, never validated, and
// bans half of the users: sessions no cache can know when Postgres is
// gone. It returns them and the set of their tokens.
func (s *suite) coldSessions(t *testing.T) ([]newSession, map[int32]bool) {
	owners := s.victims(t, 6)
	var cold []newSession
	for _, u := range owners {
		cold = append(cold, newSessionFor(u), newSessionFor(u))
	}
	s.insertSessions(t, "insert cold sessions", "cold", DefaultLag, nil, cold)
	s.ban(t, DefaultLag, owners[:3]...)
	toks := map[int32]bool{}
	for _, ns := range cold {
		toks[ns.row.tok] = true
	}
	return cold, toks
}

func rowsOf(ns []newSession) []*sessionRow {
	out := make([]*sessionRow, len(ns))
	for i, n := range ns {
		out[i] = n.row
	}
	return out
}

// 6a. TRUNCATE platform.user_sessions (no row trigger fires), 3 s under
// load, then every row put back.
func (s *suite) truncate(sc *scenario) {
	t := sc.t
	sc.observe(BaselineWindow)
	if _, err := s.db.Exec(s.ctx, `CREATE TABLE faults_backup AS SELECT * FROM platform.user_sessions`); err != nil {
		t.Fatal(err)
	}
	var existing []*sessionRow
	for _, sr := range s.model.sessions {
		if sr.exists {
			existing = append(existing, sr)
		}
	}
	sc.faultBegins()
	s.commit(t, "truncate", DefaultLag, statements(nil, `TRUNCATE platform.user_sessions`), setRows(existing, gone))
	sc.observe(3 * time.Second)
	s.commit(t, "restore the truncated rows", DefaultLag,
		statements(nil, `INSERT INTO platform.user_sessions SELECT * FROM faults_backup`), setRows(existing, present))
	sc.faultEnds()
	if _, err := s.db.Exec(s.ctx, `DROP TABLE faults_backup`); err != nil {
		t.Fatal(err)
	}
	sc.note("%d sessions truncated and restored", len(existing))
}

// 6b. 5,000 sessions inserted in one transaction (200 of them with tokens
// the load has been sending as unknown), then a ban: the new sessions must
// be found and the ban refused within DefaultLag.
func (s *suite) insertBurst(sc *scenario) {
	t := sc.t
	victims := s.victims(t, 3)
	futureToks := make([]int32, len(s.pools.future))
	for i, f := range s.pools.future {
		futureToks[i] = f.tok
	}
	sc.focus(tokensOf(s.sessionsOf(victims)))
	s.defaultMix(append(tokensOf(s.sessionsOf(victims)), futureToks...))
	sc.observe(BaselineWindow)

	users := make([]*userRow, 1000)
	for i := range users {
		users[i] = &userRow{id: newUUID()}
	}
	sessions := make([]newSession, 5000)
	for i := range sessions {
		u := users[i%len(users)]
		if i < len(s.pools.future) {
			f := s.pools.future[i]
			sessions[i] = newSession{raw: s.table.Raw(f.tok), row: &sessionRow{id: f.sessionID, userID: u.id, tok: f.tok}}
			continue
		}
		sessions[i] = newSessionFor(u)
	}
	sc.faultBegins()
	s.insertSessions(t, "insert 5,000 sessions", "inserted", DefaultLag, users, sessions)
	_, banned := s.ban(t, DefaultLag, victims...)
	sc.faultEnds()
	sc.note("ban committed %.0f ms after the insert began", banned.Sub(sc.faultStart).Seconds()*1000)
}

// 6c. 2,000 users banned in one UPDATE: once BulkLag has passed, every one
// of their sessions is validated on every instance and must be refused.
// Then the ban is lifted the same way, and checked the same way.
func (s *suite) bulkBan(sc *scenario) {
	t := sc.t
	users := s.model.bulk
	toks := tokensOf(s.sessionsOf(users))
	sc.observe(BaselineWindow)
	s.load.Sweep(targets(s.live()...), toks, 16) // into every instance's local cache

	sc.faultBegins()
	_, after := s.ban(t, BulkLag, users...)
	time.Sleep(time.Until(after.Add(BulkLag)))
	sweepStart := time.Now()
	answers := s.load.Sweep(targets(s.live()...), toks, 16)
	sweepTook := time.Since(sweepStart)
	refused := 0
	for _, a := range answers {
		if a.Code == codes.OK && !a.Valid {
			refused++
		}
	}
	sc.note("%d users, %d sessions; %d of %d answers %.1f s after the ban refused (sweep took %.1f s)",
		len(users), len(toks), refused, len(answers), BulkLag.Seconds(), sweepTook.Seconds())
	_, after = s.unban(t, BulkLag, users...)
	time.Sleep(time.Until(after.Add(BulkLag)))
	s.load.Sweep(targets(s.live()...), toks, 16)
	sc.faultEnds()
}

// 6d. 'infinity' and far-future timestamps: a ban until infinity and until
// year 294270 are bans, a session that expires at infinity is valid, a ban
// until -infinity is over. Every call must be answered (not UNAVAILABLE),
// and a fresh instance must reach SERVING with such rows in its warm window.
func (s *suite) infinity(sc *scenario) {
	t := sc.t
	type row struct {
		kind        string
		bannedUntil string // SQL literal or NULL
		expiresAt   string
		user        *userRow
		ns          newSession
	}
	rows := []row{
		{kind: "banned until infinity", bannedUntil: `'infinity'`, expiresAt: `now() + interval '7 days'`},
		{kind: "banned until 294270", bannedUntil: `'294270-01-01 00:00:00+00'`, expiresAt: `now() + interval '7 days'`},
		{kind: "banned until -infinity", bannedUntil: `'-infinity'`, expiresAt: `now() + interval '7 days'`},
		{kind: "expires at infinity", bannedUntil: `NULL`, expiresAt: `'infinity'`},
	}
	var all []*sessionRow
	for i := range rows {
		r := &rows[i]
		r.user = &userRow{id: newUUID(), banned: r.bannedUntil == `'infinity'` || strings.HasPrefix(r.bannedUntil, `'294270`)}
		r.ns = newSessionFor(r.user)
		r.ns.row.tok = s.table.Add(r.ns.raw, &Token{Kind: r.kind, SessionID: r.ns.row.id, UserID: r.user.id, Timeline: Timeline{Initial: NotFound}})
		all = append(all, r.ns.row)
	}
	toks := tokensOf(all)
	s.defaultMix(toks)
	sc.observe(BaselineWindow)

	sc.faultBegins()
	_, inserted := s.commit(t, "insert infinity rows", DefaultLag, func(ctx context.Context, tx pgx.Tx) error {
		for _, r := range rows {
			if _, err := tx.Exec(ctx, `INSERT INTO platform.users (id, email, banned_until) VALUES ($1, $2, `+r.bannedUntil+`)`,
				r.user.id, "faults-"+r.user.id+"@example.com"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
				VALUES ($1, $2, $3, `+r.expiresAt+`, now())`, r.ns.row.id, r.user.id, tiers.TokenHash(r.ns.raw)); err != nil {
				return err
			}
		}
		return nil
	}, func() []*sessionRow {
		for _, r := range rows {
			s.model.users[r.user.id] = r.user
			r.user.sessions = []string{r.ns.row.id}
			r.ns.row.exists = true
			s.model.sessions[r.ns.row.id] = r.ns.row
		}
		return all
	})
	sc.observe(3 * time.Second)

	// A fresh instance with these rows in its warm window.
	s.extra++
	c, err := s.startInstance(fmt.Sprintf("c%d-infinity", s.extra))
	if err != nil {
		t.Fatal(err)
	}
	serveErr := c.waitServing(s.ctx, 20*time.Second)
	c.stop()
	sc.check(serveErr == nil, "a fresh instance with infinity rows in its warm window: %v", serveErr)

	s.defaultMix(nil)
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.user.id
	}
	s.commit(t, "delete infinity rows", DefaultLag, statements([]any{ids},
		`DELETE FROM platform.user_sessions WHERE user_id = ANY($1::uuid[])`,
		`DELETE FROM platform.users WHERE id = ANY($1::uuid[])`), setRows(all, gone))
	sc.faultEnds()

	// Every call for these rows, sent once the insert was visible everywhere
	// and before they were deleted, must have been answered.
	sc.pull()
	unanswered := map[string]map[codes.Code]int{}
	isInf := map[int32]string{}
	for _, r := range rows {
		isInf[r.ns.row.tok] = r.kind
	}
	for _, a := range sc.answers {
		kind, ok := isInf[a.Token]
		if !ok || a.Sent.Before(inserted.Add(DefaultLag)) || a.Code == codes.OK {
			continue
		}
		if unanswered[kind] == nil {
			unanswered[kind] = map[codes.Code]int{}
		}
		unanswered[kind][a.Code]++
	}
	for _, r := range rows {
		if e := unanswered[r.kind]; len(e) > 0 {
			sc.check(false, "session %s (%s): %s instead of an answer", r.ns.row.id, r.kind, Row{Errors: e}.ErrorsString())
		}
	}
}

// 7a. A third instance starts under load. The first two keep their cache:
// their hit share in the 2 s after it is SERVING stays at 99 % (or, if
// lower, at their share of the 2 s before it started).
func (s *suite) thirdInstance(sc *scenario) {
	t := sc.t
	sc.observe(BaselineWindow)
	first := func(a Answer) bool { return a.Instance == s.a.name || a.Instance == s.b.name }
	sc.faultBegins()
	s.extra++
	c, err := s.startInstance(fmt.Sprintf("c%d", s.extra), "--activity-interval", "1h", "--activity-granularity", "1s")
	if err != nil {
		t.Fatal(err)
	}
	s.c = c
	if err := c.waitServing(s.ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	serving := time.Now()
	sc.faultEnds()
	s.load.SetTargets(s.a.target, s.b.target, c.target)
	sc.observe(time.Until(serving.Add(2*time.Second)) + 200*time.Millisecond)

	// Over the tokens the load was calling before (see Recovery): the long
	// tail's first calls miss whatever the instances do.
	known := BaselineTokens(sc.answers, sc.faultStart.Add(-BaselineWindow), sc.faultStart)
	firstKnown := func(a Answer) bool { return first(a) && known[a.Token] }
	before, nb := HitShare(sc.answers, sc.faultStart.Add(-BaselineWindow), sc.faultStart, first)
	after, na := HitShare(sc.answers, serving, serving.Add(2*time.Second), firstKnown)
	want := min(0.99, before-0.01)
	sc.note("a and b hit share: %.1f%% before (%d answers), %.1f%% in the 2 s after c SERVING (%d answers for the same tokens)", 100*before, nb, 100*after, na)
	sc.check(na > 0 && after >= want, "a and b hit share %.1f%% in the 2 s after a third instance was SERVING, want ≥ %.1f%%", 100*after, 100*want)
}

// 7b. SIGTERM to the third instance under load, with Postgres 200 ms away
// so that calls that miss are in flight for a while: none that was in flight
// fails, it exits 0, the session it validated just before has its activity
// in Postgres, and the other two keep their cache when it leaves.
func (s *suite) sigterm(sc *scenario) {
	t := sc.t
	c := s.c
	if c == nil || !c.alive() {
		t.Fatal("no third instance running (7a failed)")
	}
	s.load.SetTargets(s.a.target, s.b.target, c.target)
	s.pgProxy.Slow(100 * time.Millisecond)
	defer s.pgProxy.Pass()
	s.load.SetMix(Mix{Draws: s.mixDraws(nil), Fresh: 0.02}) // 40 misses/s: Postgres-bound calls in flight
	sc.observe(BaselineWindow)

	idle := s.model.idle
	var seenBefore time.Time
	if err := s.db.QueryRow(s.ctx, `SELECT last_activity_at FROM platform.user_sessions WHERE id = $1`, idle.id).Scan(&seenBefore); err != nil {
		t.Fatal(err)
	}
	a := s.load.Call(c.target, idle.tok)
	sc.check(a.Code == codes.OK && a.Valid, "the idle session on %s: %v valid=%v, want valid", c.name, a.Code, a.Valid)
	validatedAt := a.Sent

	sc.faultBegins()
	// A burst of calls that miss (fresh tokens: Postgres is 200 ms away),
	// sent 100 ms before SIGTERM, so that some are surely in flight when it
	// comes; 12 at a time stay within c's pool of 8 and the 1 s deadline.
	var burst sync.WaitGroup
	for i := range 12 {
		burst.Go(func() { s.load.call(c.target, c.target.Callers[i%len(c.target.Callers)], Fresh, randomToken()) })
	}
	time.Sleep(100 * time.Millisecond)
	s.load.SetTargets(s.a.target, s.b.target) // the load balancer stops sending, as SIGTERM comes
	c.terminate()
	sigAt := time.Now()
	exited := c.wait(30 * time.Second)
	burst.Wait()
	sc.faultEnds()
	for _, cc := range c.conns {
		cc.Close()
	}
	sc.check(exited, "%s did not exit within 30 s of SIGTERM", c.name)
	if exited {
		sc.check(c.exitErr == nil, "%s exited with %v after SIGTERM, want status 0", c.name, c.exitErr)
	}
	s.pgProxy.Pass()
	s.defaultMix(nil)
	sc.observe(2*time.Second + 200*time.Millisecond)

	// In flight: sent at least 20 ms before SIGTERM (time to reach the
	// server on loopback, so the server had it), not answered by then.
	const margin = 20 * time.Millisecond
	inFlight, failed := 0, map[codes.Code]int{}
	var failedCalls []Answer
	for _, a := range sc.answers {
		if a.Instance != c.name || a.Sent.After(sigAt.Add(-margin)) {
			continue
		}
		if a.Done.After(sigAt) {
			inFlight++
		}
		if a.Code != codes.OK {
			failed[a.Code]++
			failedCalls = append(failedCalls, a)
		}
	}
	sc.note("%d calls in flight at SIGTERM", inFlight)
	sc.check(len(failed) == 0, "calls sent to %s before SIGTERM failed: %s (times relative to SIGTERM: %s)",
		c.name, Row{Errors: failed}.ErrorsString(), sc.describeCalls(failedCalls, sigAt))

	var seenAfter time.Time
	if err := s.db.QueryRow(s.ctx, `SELECT last_activity_at FROM platform.user_sessions WHERE id = $1`, idle.id).Scan(&seenAfter); err != nil {
		t.Fatal(err)
	}
	sc.note("idle session's last_activity_at moved by %v", seenAfter.Sub(seenBefore).Round(time.Second))
	sc.check(!seenAfter.Before(validatedAt.Add(-2*time.Second)),
		"session %s validated on %s at %v: last_activity_at %v after its shutdown, want moved to about then (was %v)",
		idle.id, c.name, validatedAt.Format(time.StampMilli), seenAfter.Format(time.StampMilli), seenBefore.Format(time.StampMilli))

	first := func(a Answer) bool { return a.Instance == s.a.name || a.Instance == s.b.name }
	after, n := HitShare(sc.answers, sigAt, sigAt.Add(2*time.Second), first)
	sc.note("a and b hit share in the 2 s after c's SIGTERM: %.1f%% (%d answers)", 100*after, n)
	s.c = nil
}

// 8. Bad traffic on a's gRPC port while the load goes on: random bytes,
// HTTP/1.1, a 2 MiB message, 10,000 streams on one connection. a stays up
// and SERVING, and keeps answering the well-behaved load.
func (s *suite) badTraffic(sc *scenario) {
	sc.observe(BaselineWindow)
	in := s.a
	sc.faultBegins()
	var wg sync.WaitGroup
	var mu sync.Mutex
	results := map[string]string{}
	report := func(k, v string) {
		mu.Lock()
		results[k] = v
		mu.Unlock()
	}
	wg.Go(func() {
		fails := 0
		for range 30 {
			if err := sendGarbage(in.addr, 64<<10); err != nil {
				fails++
			}
		}
		report("random bytes", fmt.Sprintf("30 connections × 64 KiB (%d write errors)", fails))
	})
	wg.Go(func() {
		var first []string
		for i := range 10 {
			line, err := sendHTTP1(in.addr, i%2 == 0)
			switch {
			case errors.Is(err, syscall.ECONNRESET):
				line = "connection reset"
			case err != nil:
				line = err.Error()
			case line == "":
				line = "connection closed"
			}
			if i < 2 {
				first = append(first, line)
			}
		}
		report("HTTP/1.1", "10 requests (GET, gRPC-shaped POST): "+strings.Join(first, ", "))
	})
	wg.Go(func() {
		code, err := sendOversized(s.ctx, in.addr, 2<<20)
		report("2 MiB message", fmt.Sprintf("%v %v", code, errString(err)))
	})
	wg.Go(func() {
		st, err := floodStreams(in.addr, 10000)
		report("10,000 streams", fmt.Sprintf("%s %s", st, errString(err)))
	})
	wg.Wait()
	sc.faultEnds()
	sc.observe(callDeadline) // every call sent during the attack has its answer
	for _, k := range []string{"random bytes", "HTTP/1.1", "2 MiB message", "10,000 streams"} {
		sc.note("%s: %s", k, results[k])
	}
	sc.check(in.alive(), "%s exited under bad traffic (%v); see %s", in.name, in.exitErr, in.logPath)
	sc.check(in.serving(s.ctx) == nil, "%s not SERVING after bad traffic", in.name)
	ok, n := 0, 0
	for _, a := range sc.answers {
		if a.Instance == in.name && !a.Sent.Before(sc.faultStart) && !a.Sent.After(sc.faultEnd) {
			n++
			if a.Code == codes.OK {
				ok++
			}
		}
	}
	share := float64(ok) / float64(max(n, 1))
	sc.note("well-behaved calls to %s during the attack: %d of %d answered", in.name, ok, n)
	sc.check(n > 0 && share >= 0.99, "well-behaved calls to %s during the attack: %.1f%% of %d answered, want ≥ 99%%", in.name, 100*share, n)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return "(" + err.Error() + ")"
}
