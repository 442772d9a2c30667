//go:build faults

package faults

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/devstack"
	"github.com/sessiond/sessiond/internal/seed"
	"github.com/sessiond/sessiond/internal/tiers"
)

// The suite's shape. The load stays well under what 2 cores serve (about
// 20k validations/s with a warm cache) so that sessiond, Postgres, Redis,
// the proxies and the load share the machine without saturating it.
const (
	loadWorkers  = 16
	loadRate     = 2000.0 // calls per second, over all instances
	callDeadline = time.Second
	seedUsers    = 4000
	seedSessions = 10000
	poolSize     = 8 // sessiond's --pool-size default, for the pool-leak check
	harnessApp   = "faults-harness"
	// bulkUsers is issue 8's bulk ban: 2,000 users in one UPDATE.
	bulkUsers = 2000
	// victimUsers is how many users are kept for the scenarios to revoke.
	victimUsers = 200
)

// suite is the running system: Postgres and Redis (devstack), a proxy in
// front of each that sessiond goes through (the harness itself talks to both
// directly), two sessiond instances, the load, and the truth. With
// replicated engines (see engines), Postgres is a primary and its streaming
// replica and Redis a master, its replica and a sentinel, and sessiond
// reaches them directly, as production would.
type suite struct {
	ctx    context.Context
	logDir string

	// One server each, behind a proxy (engines' zero value).
	pg         *devstack.Postgres
	redis      *devstack.Redis
	pgProxy    *Proxy
	redisProxy *Proxy
	// Replicated engines.
	pair     *devstack.PostgresPair
	sentinel *devstack.RedisSentinel

	dbURL       string // for the harness: the server itself (both hosts of a pair)
	sessiondDB  string // sessiond's --database-url
	sessiondRDB string // sessiond's --redis-url
	db          *pgxpool.Pool
	rdb         rueidis.Client

	table *Table
	model *model
	load  *Load
	pools pools

	a, b     *instance
	c        *instance // the third instance of scenario 7, while it runs
	extra    int       // instances started besides a and b, for their names
	rows     []Row
	current  string // the running scenario's number, which prefixes what its changes say they did
	broken   string // the scenario after which the system was not healthy
	stopLoad context.CancelFunc
	loadDone chan struct{}
}

// pools are the token sets the load draws from.
type pools struct {
	valid, expired, banned, deleted, unknown, tail []int32
	future                                         []futureToken // unknown until 6b inserts them
}

type futureToken struct {
	tok       int32
	sessionID string
}

// engines says which servers a suite runs on. The zero value is one
// Postgres and one Redis, each behind a proxy.
type engines struct {
	// postgresPair: a primary and its streaming replica; sessiond gets a
	// multi-host URL (target_session_attrs=read-write) naming both.
	postgresPair bool
	// redisSentinel: a master, its replica and a sentinel; sessiond gets the
	// sentinel's URL.
	redisSentinel bool
}

// newSuite starts everything on the engines e and leaves the load running;
// t.Cleanup stops it all and adds the suite's rows to the report.
func newSuite(t *testing.T, e engines) *suite {
	ctx := t.Context()
	s := &suite{ctx: ctx, table: &Table{}}
	var err error
	s.logDir, err = os.MkdirTemp("", "sessiond-faults-logs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("FAULTS_KEEP_LOGS") != "" {
			t.Logf("sessiond logs kept in %s", s.logDir)
			return
		}
		os.RemoveAll(s.logDir)
	})

	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	startPG, startRedis := s.startPostgres, s.startRedis
	if e.postgresPair {
		startPG = s.startPostgresPair
	}
	if e.redisSentinel {
		startRedis = s.startRedisSentinel
	}
	if err := startPG(t, startCtx); err != nil {
		t.Fatal(err)
	}
	redisURL, err := startRedis(t, startCtx)
	if err != nil {
		t.Fatal(err)
	}

	pcfg, err := pgxpool.ParseConfig(withParam(s.dbURL, "application_name", harnessApp))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 4
	if s.db, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.db.Close)
	ropt, err := rueidis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	ropt.DisableCache = true
	if s.rdb, err = rueidis.NewClient(ropt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.rdb.Close)

	// The binary migrates, as an operator would.
	if out, err := execCmd(startCtx, sessiondBin, "migrate", "--database-url", s.dbURL); err != nil {
		t.Fatalf("sessiond migrate: %v\n%s", err, out)
	}
	s.seed(t)
	s.load = NewLoad(s.table, callDeadline)
	s.defaultMix(nil)

	if s.a, err = s.startInstance("a"); err != nil {
		t.Fatal(err)
	}
	if s.b, err = s.startInstance("b"); err != nil {
		t.Fatal(err)
	}
	for _, in := range []*instance{s.a, s.b} {
		if err := in.waitServing(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	s.load.SetTargets(s.a.target, s.b.target)
	loadCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopLoad, s.loadDone = stop, make(chan struct{})
	go func() {
		defer close(s.loadDone)
		s.load.Run(loadCtx, loadWorkers, loadRate, 8)
	}()
	t.Cleanup(func() {
		s.stopLoad()
		<-s.loadDone
		for _, in := range s.live() {
			in.stop()
		}
		report.add(s.rows)
	})
	return s
}

// startPostgres starts one Postgres, creates the database, and puts a proxy
// in front of it for sessiond.
func (s *suite) startPostgres(t *testing.T, ctx context.Context) error {
	var err error
	if s.pg, err = devstack.StartPostgres(ctx, devstack.PostgresOptions{}); err != nil {
		return err
	}
	t.Cleanup(func() {
		if err := s.pg.Stop(); err != nil {
			t.Error(err)
		}
	})
	if s.dbURL, err = s.pg.CreateDatabase(ctx, "faults"); err != nil {
		return err
	}
	if s.pgProxy, err = NewProxy(fmt.Sprintf("127.0.0.1:%d", s.pg.Port())); err != nil {
		return err
	}
	t.Cleanup(func() { s.pgProxy.Close() })
	u, err := url.Parse(s.dbURL)
	if err != nil {
		return err
	}
	u.Host = s.pgProxy.Addr()
	s.sessiondDB = u.String()
	return nil
}

// startPostgresPair starts a primary and its replica and creates the
// database on them; sessiond and the harness both use the pair's URL.
func (s *suite) startPostgresPair(t *testing.T, ctx context.Context) error {
	var err error
	if s.pair, err = devstack.StartPostgresPair(ctx, devstack.PostgresOptions{}); err != nil {
		return err
	}
	t.Cleanup(func() {
		if err := s.pair.Stop(); err != nil {
			t.Error(err)
		}
	})
	if s.dbURL, err = s.pair.CreateDatabase(ctx, "faults"); err != nil {
		return err
	}
	s.sessiondDB = s.dbURL
	return nil
}

// startRedis starts one Redis and a proxy in front of it for sessiond, and
// returns the URL the harness uses.
func (s *suite) startRedis(t *testing.T, ctx context.Context) (string, error) {
	var err error
	if s.redis, err = devstack.StartRedis(ctx, devstack.RedisOptions{}); err != nil {
		return "", err
	}
	t.Cleanup(func() {
		if err := s.redis.Stop(); err != nil {
			t.Error(err)
		}
	})
	if s.redisProxy, err = NewProxy(s.redis.Addr()); err != nil {
		return "", err
	}
	t.Cleanup(func() { s.redisProxy.Close() })
	s.sessiondRDB = "redis://" + s.redisProxy.Addr()
	return "redis://" + s.redis.Addr(), nil
}

// startRedisSentinel starts a master, its replica and a sentinel; sessiond
// and the harness both follow the sentinel.
func (s *suite) startRedisSentinel(t *testing.T, ctx context.Context) (string, error) {
	var err error
	if s.sentinel, err = devstack.StartRedisSentinel(ctx, devstack.RedisSentinelOptions{}); err != nil {
		return "", err
	}
	t.Cleanup(func() {
		if err := s.sentinel.Stop(); err != nil {
			t.Error(err)
		}
	})
	s.sessiondRDB = s.sentinel.URL()
	return s.sentinel.URL(), nil
}

// instanceArgs are the flags every instance gets: sessiond reaches Postgres
// and Redis through the proxies (or the replicated engines directly), warms
// every seeded session at start, and otherwise runs with its defaults.
func (s *suite) instanceArgs() []string {
	return []string{
		"--database-url", s.sessiondDB,
		"--redis-url", s.sessiondRDB,
		"--warm-count", "50000",
		"--warm-window", "744h", // the seed's activity spans 30 days
		"--warm-batch-size", "500",
		"--warm-batch-delay", "0",
	}
}

func (s *suite) startInstance(name string, extra ...string) (*instance, error) {
	return startInstance(s.ctx, s.logDir, name, append(s.instanceArgs(), extra...))
}

func withParam(raw, k, v string) string {
	u, err := url.Parse(raw)
	if err != nil {
		panic(err)
	}
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

// live is every running instance the load may call.
func (s *suite) live() []*instance {
	var out []*instance
	for _, in := range []*instance{s.a, s.b, s.c} {
		if in != nil && in.alive() {
			out = append(out, in)
		}
	}
	return out
}

func targets(ins ...*instance) []*Target {
	out := make([]*Target, len(ins))
	for i, in := range ins {
		out[i] = in.target
	}
	return out
}

// seed loads users and sessions with known raw tokens, reads back each
// row's flags to build the model, and fills the load's pools.
func (s *suite) seed(t *testing.T) {
	conn, err := s.db.Acquire(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	opts := seed.DefaultDemo()
	opts.Seed, opts.Users, opts.Sessions = 8, seedUsers, seedSessions
	var truths []seed.Truth
	if _, err := seed.Load(s.ctx, conn, opts, func(tr seed.Truth) error {
		truths = append(truths, tr)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(s.ctx, `ANALYZE platform.users, platform.user_sessions`); err != nil {
		t.Fatal(err)
	}
	m, err := loadModel(s.ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	s.model = m
	for _, tr := range truths {
		sr := m.sessions[tr.SessionID]
		if sr == nil {
			t.Fatalf("seeded session %s is not in the table", tr.SessionID)
		}
		st := m.state(sr)
		if want := (State{Valid: tr.Valid, Reason: tr.Reason}); st != want {
			t.Fatalf("session %s: the rows say %v, the seed says %v", tr.SessionID, st, want)
		}
		kind := st.String()
		switch st {
		case UserBanned:
			kind = "banned"
		case UserDeleted:
			kind = "deleted"
		}
		sr.tok = s.table.Add(tr.Token, &Token{Kind: kind, SessionID: tr.SessionID, UserID: tr.UserID, Timeline: Timeline{Initial: st}})
		sr.lastActivity = tr.LastActivityAt
	}
	s.fillPools()
}

// fillPools chooses, deterministically, the victims (users kept for the
// scenarios to revoke), the bulk-ban users, the session the SIGTERM scenario
// follows to Postgres, and the load's pools.
func (s *suite) fillPools() {
	m := s.model
	ids := make([]string, 0, len(m.users))
	for id := range m.users {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var fine []*userRow // neither deleted nor banned
	for _, id := range ids {
		if u := m.users[id]; !u.deleted && !u.banned {
			fine = append(fine, u)
		}
	}
	// Victims: users with 1 to 4 sessions, all valid, so a revocation turns
	// valid answers into refusals.
	for _, u := range fine {
		if len(m.victims) == victimUsers {
			break
		}
		if n := len(u.sessions); n >= 1 && n <= 4 && s.allValid(u) {
			u.reserved = true
			m.victims = append(m.victims, u)
		}
	}
	// The session whose activity the SIGTERM scenario follows: valid, idle
	// for over an hour, of a user nobody revokes, and never in the load.
	for _, u := range fine {
		if u.reserved || len(u.sessions) != 1 || !s.allValid(u) {
			continue
		}
		if sr := m.sessions[u.sessions[0]]; time.Since(sr.lastActivity) > 2*time.Hour {
			u.reserved = true
			m.idle = sr
			break
		}
	}
	for _, u := range fine {
		if len(m.bulk) == bulkUsers {
			break
		}
		if !u.reserved {
			m.bulk = append(m.bulk, u)
		}
	}

	sessionIDs := make([]string, 0, len(m.sessions))
	for id := range m.sessions {
		sessionIDs = append(sessionIDs, id)
	}
	slices.Sort(sessionIDs)
	p := &s.pools
	for _, id := range sessionIDs {
		sr := m.sessions[id]
		if sr == m.idle {
			continue
		}
		p.tail = append(p.tail, sr.tok)
		victim := m.users[sr.userID].reserved
		switch st := m.state(sr); {
		case st == Valid && !victim && len(p.valid) < 600:
			p.valid = append(p.valid, sr.tok)
		case st == Expired && len(p.expired) < 200:
			p.expired = append(p.expired, sr.tok)
		case st == UserBanned:
			p.banned = append(p.banned, sr.tok)
		case st == UserDeleted:
			p.deleted = append(p.deleted, sr.tok)
		}
	}
	for range 300 {
		p.unknown = append(p.unknown, s.table.Add(randomToken(), &Token{Kind: "unknown", Timeline: Timeline{Initial: NotFound}}))
	}
	for range 200 {
		f := futureToken{sessionID: newUUID()}
		f.tok = s.table.Add(randomToken(), &Token{Kind: "future", SessionID: f.sessionID, Timeline: Timeline{Initial: NotFound}})
		p.future = append(p.future, f)
		p.unknown = append(p.unknown, f.tok)
	}
}

func (s *suite) allValid(u *userRow) bool {
	for _, id := range u.sessions {
		if s.model.state(s.model.sessions[id]) != Valid {
			return false
		}
	}
	return true
}

// defaultMix sets the load's mix (see mixDraws), plus extra draws.
func (s *suite) defaultMix(focus []int32, extra ...Draw) {
	s.load.SetMix(Mix{Draws: append(s.mixDraws(focus), extra...)})
}

// mixDraws is the load's usual mix: mostly a working set of known sessions
// (valid, expired, of banned and of deleted users, a fixed set of unknown
// tokens), a uniform tail over every seeded session, and focus, the tokens
// the running scenario changes, if any.
func (s *suite) mixDraws(focus []int32) []Draw {
	p := s.pools
	return []Draw{
		{Weight: 0.50, Tokens: p.valid},
		{Weight: 0.07, Tokens: p.expired},
		{Weight: 0.07, Tokens: p.banned},
		{Weight: 0.05, Tokens: p.deleted},
		{Weight: 0.06, Tokens: p.unknown},
		{Weight: 0.05, Tokens: p.tail},
		{Weight: 0.20, Tokens: focus},
	}
}

func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func execCmd(ctx context.Context, bin string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// model is the harness's copy of what Postgres holds, as far as verdicts go.
// Every change the harness commits updates it, and each session whose
// verdict moved gets a Change on its token's timeline.
type model struct {
	sessions map[string]*sessionRow
	users    map[string]*userRow

	victims []*userRow // handed out by suite.victims, in order
	next    int
	bulk    []*userRow
	idle    *sessionRow
}

type sessionRow struct {
	id, userID   string
	tok          int32 // its token's index in the table; Fresh until it has one
	exists       bool
	expired      bool
	lastActivity time.Time
}

type userRow struct {
	id       string
	deleted  bool
	banned   bool
	sessions []string // ids, in the order they were added
	reserved bool     // a victim or the idle session's user: not bulk-banned
}

// state is the validity rule on the model's rows.
func (m *model) state(sr *sessionRow) State {
	u := m.users[sr.userID]
	switch {
	case !sr.exists:
		return NotFound
	case u.deleted:
		return UserDeleted
	case u.banned:
		return UserBanned
	case sr.expired:
		return Expired
	}
	return Valid
}

func loadModel(ctx context.Context, db *pgxpool.Conn) (*model, error) {
	m := &model{sessions: map[string]*sessionRow{}, users: map[string]*userRow{}}
	rows, err := db.Query(ctx, `SELECT id::text, deleted_at IS NOT NULL, coalesce(banned_until > now(), false) FROM platform.users`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		u := &userRow{}
		if err := rows.Scan(&u.id, &u.deleted, &u.banned); err != nil {
			return nil, err
		}
		m.users[u.id] = u
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = db.Query(ctx, `SELECT id::text, user_id::text, expires_at <= now() FROM platform.user_sessions ORDER BY id`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		sr := &sessionRow{exists: true, tok: Fresh}
		if err := rows.Scan(&sr.id, &sr.userID, &sr.expired); err != nil {
			return nil, err
		}
		m.sessions[sr.id] = sr
		m.users[sr.userID].sessions = append(m.users[sr.userID].sessions, sr.id)
	}
	return m, rows.Err()
}

// commit runs fn in one transaction and records its timing: just before
// COMMIT is sent and just after it returned. apply then changes the model as
// the transaction changed the rows and returns the sessions it touched; each
// whose verdict moved gets a Change with the given lag. It returns the two
// instants.
func (s *suite) commit(t *testing.T, what string, lag time.Duration, fn func(ctx context.Context, tx pgx.Tx) error, apply func() []*sessionRow) (before, after time.Time) {
	t.Helper()
	before, after, err := s.tryCommit(t, what, lag, fn, apply)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return before, after
}

// tryCommit is commit for a transaction that may be refused (no primary
// yet): a failure before COMMIT was sent is returned, and nothing is
// recorded; a failed COMMIT fails the test, since the transaction may have
// committed all the same.
func (s *suite) tryCommit(t *testing.T, what string, lag time.Duration, fn func(ctx context.Context, tx pgx.Tx) error, apply func() []*sessionRow) (before, after time.Time, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return before, after, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := fn(ctx, tx); err != nil {
		return before, after, err
	}
	before = time.Now()
	err = tx.Commit(ctx)
	after = time.Now()
	if err != nil {
		t.Fatalf("%s: commit: %v", what, err)
	}
	for _, sr := range apply() {
		tok := s.table.Token(sr.tok)
		if st := s.model.state(sr); tok.Current() != st {
			tok.Changes = append(tok.Changes, Change{Before: before, After: after, Lag: lag, To: st, What: s.current + ": " + what})
		}
	}
	return before, after, nil
}

// statements is a commit body that runs the sql statements in order, each with args.
func statements(args []any, sql ...string) func(ctx context.Context, tx pgx.Tx) error {
	return func(ctx context.Context, tx pgx.Tx) error {
		for _, q := range sql {
			if _, err := tx.Exec(ctx, q, args...); err != nil {
				return err
			}
		}
		return nil
	}
}

// setRows is a commit's model update: set changes each row, and the rows are
// what the commit touched.
func setRows(rows []*sessionRow, set func(*sessionRow)) func() []*sessionRow {
	return func() []*sessionRow {
		for _, sr := range rows {
			set(sr)
		}
		return rows
	}
}

func gone(sr *sessionRow)    { sr.exists = false }
func present(sr *sessionRow) { sr.exists = true }

// sessionsOf is every session row of the users.
func (s *suite) sessionsOf(users []*userRow) []*sessionRow {
	var out []*sessionRow
	for _, u := range users {
		for _, id := range u.sessions {
			out = append(out, s.model.sessions[id])
		}
	}
	return out
}

func tokensOf(rows []*sessionRow) []int32 {
	out := make([]int32, 0, len(rows))
	for _, sr := range rows {
		out = append(out, sr.tok)
	}
	return out
}

func userIDs(users []*userRow) []string {
	out := make([]string, len(users))
	for i, u := range users {
		out[i] = u.id
	}
	return out
}

// setUsers sets a column of the users in one UPDATE.
func (s *suite) setUsers(t *testing.T, what string, lag time.Duration, users []*userRow, set string, mark func(*userRow)) (time.Time, time.Time) {
	return s.commit(t, what, lag, setUsersSQL(users, set), s.markUsers(users, mark))
}

func setUsersSQL(users []*userRow, set string) func(ctx context.Context, tx pgx.Tx) error {
	return statements([]any{userIDs(users)}, `UPDATE platform.users SET `+set+` WHERE id = ANY($1::uuid[])`)
}

// markUsers is setUsers' model update.
func (s *suite) markUsers(users []*userRow, mark func(*userRow)) func() []*sessionRow {
	return func() []*sessionRow {
		for _, u := range users {
			mark(u)
		}
		return s.sessionsOf(users)
	}
}

func (s *suite) ban(t *testing.T, lag time.Duration, users ...*userRow) (time.Time, time.Time) {
	return s.setUsers(t, banWhat(users), lag, users, banSet, banned)
}

const banSet = `banned_until = now() + interval '1 day'`

func banned(u *userRow) { u.banned = true }

func banWhat(users []*userRow) string { return fmt.Sprintf("ban %d user(s)", len(users)) }

func (s *suite) unban(t *testing.T, lag time.Duration, users ...*userRow) (time.Time, time.Time) {
	return s.setUsers(t, fmt.Sprintf("unban %d user(s)", len(users)), lag, users, `banned_until = NULL`,
		func(u *userRow) { u.banned = false })
}

// revoke revokes each user's sessions in its own transaction, rotating
// through the four ways: ban the user, delete the user (deleted_at), delete
// the sessions (sign-out), expire the sessions.
func (s *suite) revoke(t *testing.T, lag time.Duration, users ...*userRow) {
	for i, u := range users {
		switch i % 4 {
		case 0:
			s.ban(t, lag, u)
		case 1:
			s.setUsers(t, "delete user", lag, []*userRow{u}, `deleted_at = now()`, func(u *userRow) { u.deleted = true })
		case 2:
			s.commit(t, "delete session(s)", lag,
				statements([]any{u.id}, `DELETE FROM platform.user_sessions WHERE user_id = $1`),
				setRows(s.sessionsOf([]*userRow{u}), gone))
		case 3:
			s.commit(t, "expire session(s)", lag,
				statements([]any{u.id}, `UPDATE platform.user_sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1`),
				setRows(s.sessionsOf([]*userRow{u}), func(sr *sessionRow) { sr.expired = true }))
		}
	}
}

// victims hands out n users not revoked yet, with all their sessions valid.
func (s *suite) victims(t *testing.T, n int) []*userRow {
	m := s.model
	if m.next+n > len(m.victims) {
		t.Fatalf("out of victims: %d used of %d", m.next, len(m.victims))
	}
	out := m.victims[m.next : m.next+n]
	m.next += n
	return out
}

// newSession is a session the harness inserts: its raw token and row.
type newSession struct {
	raw string
	row *sessionRow
}

// insertSessions inserts sessions (new users first, if any) in one
// transaction with COPY, adding their tokens to the table as kind; each
// token's timeline goes from not found to its verdict at the commit. The
// sessions expire in 7 days and were active now.
func (s *suite) insertSessions(t *testing.T, what, kind string, lag time.Duration, newUsers []*userRow, sessions []newSession) {
	for _, ns := range sessions {
		if ns.row.tok == Fresh {
			ns.row.tok = s.table.Add(ns.raw, &Token{Kind: kind, SessionID: ns.row.id, UserID: ns.row.userID, Timeline: Timeline{Initial: NotFound}})
		} else {
			// A token the load has been sending as unknown: its user is known from now on.
			s.table.Token(ns.row.tok).UserID = ns.row.userID
		}
	}
	s.commit(t, what, lag, func(ctx context.Context, tx pgx.Tx) error {
		if len(newUsers) > 0 {
			rows := make([][]any, len(newUsers))
			for i, u := range newUsers {
				rows[i] = []any{u.id, "faults-" + u.id + "@example.com"}
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"platform", "users"}, []string{"id", "email"}, pgx.CopyFromRows(rows)); err != nil {
				return fmt.Errorf("copy users: %w", err)
			}
		}
		rows := make([][]any, len(sessions))
		now := time.Now()
		for i, ns := range sessions {
			rows[i] = []any{ns.row.id, ns.row.userID, tiers.TokenHash(ns.raw), now.Add(7 * 24 * time.Hour), now, now}
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"platform", "user_sessions"},
			[]string{"id", "user_id", "token", "expires_at", "last_activity_at", "created_at"}, pgx.CopyFromRows(rows))
		return err
	}, func() []*sessionRow {
		for _, u := range newUsers {
			s.model.users[u.id] = u
		}
		var out []*sessionRow
		for _, ns := range sessions {
			ns.row.exists = true
			s.model.sessions[ns.row.id] = ns.row
			u := s.model.users[ns.row.userID]
			u.sessions = append(u.sessions, ns.row.id)
			out = append(out, ns.row)
		}
		return out
	})
}

// newSessionFor makes a session row for user u with a fresh token.
func newSessionFor(u *userRow) newSession {
	return newSession{raw: randomToken(), row: &sessionRow{id: newUUID(), userID: u.id, tok: Fresh}}
}

// joinKinds renders a count by kind: "valid 12, banned 3".
func joinKinds(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
