package server_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/server"
	"github.com/sessiond/sessiond/internal/tiers"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// harness is one sessiond, built and run as in production, on real Postgres
// and Redis, reached through a real gRPC client over TCP.
type harness struct {
	t        testing.TB
	cfg      config.Config
	db       *pgxpool.Pool
	redis    rueidis.Client // a plain client of our own, to look inside Redis
	srv      *server.Server
	conn     *grpc.ClientConn
	client   sessiondv1.SessionServiceClient
	health   healthpb.HealthClient
	stop     context.CancelFunc
	runErr   chan error
	stopOnce sync.Once

	creds credentials.TransportCredentials // how the harness's client connects; nil: plaintext
	opts  []server.Option                  // passed to server.New
}

type option func(*config.Config)

func start(t testing.TB, dbURL, redisURL string, opts ...option) *harness {
	t.Helper()
	h := prepare(t, dbURL, redisURL, opts...)
	h.run()
	return h
}

// prepare connects the fixtures to Postgres and Redis, without a server yet
// (so that a test can load data for a startup warm); run starts it.
func prepare(t testing.TB, dbURL, redisURL string, opts ...option) *harness {
	t.Helper()
	ctx := t.Context()
	cfg := config.Default()
	cfg.DatabaseURL, cfg.RedisURL = dbURL, redisURL
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.WarmOnStart = false
	cfg.WarmBackground = false // tests that want it say so
	cfg.RewarmInterval = 0
	cfg.ShutdownDelay = 0 // no load balancer to wait for
	for _, o := range opts {
		o(&cfg)
	}
	h := &harness{t: t, cfg: cfg, runErr: make(chan error, 1)}
	var err error
	if h.db, err = pgxpool.New(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.db.Close)
	// A test that migrated the database itself (without triggers, say)
	// keeps what it made.
	var exists bool
	if err := h.db.QueryRow(ctx, `SELECT to_regclass('platform.user_sessions') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if !exists {
		var mopts []schema.Option
		if cfg.TokenStorage == string(tiers.TokenStoragePlain) {
			mopts = append(mopts, schema.WithPlainTokens())
		}
		if err := schema.Migrate(ctx, h.db, mopts...); err != nil {
			t.Fatal(err)
		}
	}
	if h.redis, err = rueidis.NewClient(rueidis.MustParseURL(redisURL)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.redis.Close)
	return h
}

func (h *harness) run() {
	t := h.t
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// A fuzz target must not log through its F (testing panics), so a
	// fuzzed server logs nowhere.
	if _, fuzzing := t.(*testing.F); testing.Verbose() && !fuzzing {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	runCtx, stop := context.WithCancel(context.Background())
	h.stop = stop
	srv, err := server.New(runCtx, h.cfg, log, h.opts...)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	h.srv = srv
	lis, err := net.Listen("tcp", h.cfg.GRPCAddr)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	go func() { h.runErr <- srv.Run(runCtx, lis) }()
	creds := h.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	h.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.conn.Close() })
	t.Cleanup(func() { h.shutdown() })
	h.client = sessiondv1.NewSessionServiceClient(h.conn)
	h.health = healthpb.NewHealthClient(h.conn)
	if !h.cfg.WarmOnStart {
		h.waitServing()
	}
}

// waitServing waits for health SERVING: the invalidation listener has
// connected (and resynced), so what the test caches from now on stays.
func (h *harness) waitServing() {
	h.t.Helper()
	select {
	case <-h.srv.Ready():
	case <-time.After(20 * time.Second):
		h.t.Fatal("not SERVING within 20s")
	}
}

// shutdown stops the server as SIGTERM would and checks it exits cleanly.
func (h *harness) shutdown() {
	h.stopOnce.Do(func() {
		h.stop()
		select {
		case err := <-h.runErr:
			if err != nil {
				h.t.Errorf("Run returned %v after shutdown, want nil", err)
			}
		case <-time.After(30 * time.Second):
			h.t.Error("server did not stop within 30s")
		}
	})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// user and session fixtures. Zero times mean NULL; NULL-able strings are
// pointers.
type user struct {
	id          string
	email       string
	first, last *string
	username    *string
	deletedAt   time.Time
	bannedUntil time.Time
}

type session struct {
	id           string
	token        string // raw
	expiresAt    time.Time
	lastActivity time.Time
	ip, ua       *string
}

func str(s string) *string { return &s }

func newID(t testing.TB) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func newToken(t testing.TB) string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (h *harness) addUser(u user) user {
	h.t.Helper()
	if u.id == "" {
		u.id = newID(h.t)
	}
	if u.email == "" {
		u.email = u.id + "@example.test"
	}
	_, err := h.db.Exec(h.t.Context(), `INSERT INTO platform.users (id, email, first_name, last_name, username, deleted_at, banned_until)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, u.id, u.email, u.first, u.last, u.username, nullTime(u.deletedAt), nullTime(u.bannedUntil))
	if err != nil {
		h.t.Fatal(err)
	}
	return u
}

// addSession stores the session as the application does: the token column
// holds the SHA-256 of the raw token (or the raw token with plain storage).
func (h *harness) addSession(u user, s session) session {
	h.t.Helper()
	if s.id == "" {
		s.id = newID(h.t)
	}
	if s.token == "" {
		s.token = newToken(h.t)
	}
	if s.expiresAt.IsZero() {
		s.expiresAt = time.Now().Add(time.Hour)
	}
	if s.lastActivity.IsZero() {
		s.lastActivity = time.Now().Add(-time.Minute)
	}
	stored := tiers.TokenHash(s.token)
	if h.cfg.TokenStorage == string(tiers.TokenStoragePlain) {
		stored = s.token
	}
	_, err := h.db.Exec(h.t.Context(), `INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at, ip_address, user_agent)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, s.id, u.id, stored, s.expiresAt, s.lastActivity, s.ip, s.ua)
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) validate(token string) (*sessiondv1.ValidateSessionResponse, error) {
	ctx, cancel := context.WithTimeout(h.t.Context(), 10*time.Second)
	defer cancel()
	return h.client.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: token})
}

// filled waits until the cache fills of the answers given so far have
// landed: a miss is answered before its fill, which runs off the caller's
// path.
func (h *harness) filled() { h.srv.ReadThrough().Wait() }

// cached waits until this instance's cache answers for token. A fill that
// has landed in Redis reaches the instance's local copy when Redis's
// invalidation does, which may be just after the fill returns (see
// tiers.Redis.Get): until then the instance misses once more, by design.
func (h *harness) cached(token string) {
	h.t.Helper()
	h.filled()
	devtest.Eventually(h.t, 5*time.Second, func() error {
		_, ok, err := h.srv.ReadThrough().Peek(h.t.Context(), token)
		if err != nil || !ok {
			return fmt.Errorf("not cached yet (%v)", err)
		}
		return nil
	})
}

func (h *harness) mustValidate(token string) *sessiondv1.ValidateSessionResponse {
	h.t.Helper()
	resp, err := h.validate(token)
	if err != nil {
		h.t.Fatalf("ValidateSession: %v", err)
	}
	return resp
}

// eventually is devtest.Eventually, named for these tests' call sites.
func eventually(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	devtest.Eventually(t, within, f)
}

func isCacheSource(s sessiondv1.Source) bool {
	return s == sessiondv1.Source_SOURCE_LOCAL || s == sessiondv1.Source_SOURCE_REDIS
}

func TestValidateSessionReasons(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	now := time.Now()
	full := h.addUser(user{first: str("Ada"), last: str("Lovelace"), username: str("ada")})
	bare := h.addUser(user{}) // every nullable column NULL
	deleted := h.addUser(user{deletedAt: now.Add(-time.Hour)})
	banned := h.addUser(user{bannedUntil: now.Add(time.Hour)})
	lapsed := h.addUser(user{bannedUntil: now.Add(-time.Hour)})
	deletedBanned := h.addUser(user{deletedAt: now.Add(-time.Hour), bannedUntil: now.Add(time.Hour)})

	tests := []struct {
		name   string
		user   user
		sess   session
		reason sessiondv1.Reason
	}{
		{"valid, every column set", full, session{ip: str("203.0.113.7"), ua: str("Mozilla/5.0")}, sessiondv1.Reason_REASON_UNSPECIFIED},
		{"valid, IPv6", full, session{ip: str("2001:db8::1"), ua: str("curl/8")}, sessiondv1.Reason_REASON_UNSPECIFIED},
		{"valid, every nullable column NULL", bare, session{}, sessiondv1.Reason_REASON_UNSPECIFIED},
		{"expired", full, session{expiresAt: now.Add(-time.Second)}, sessiondv1.Reason_REASON_EXPIRED},
		{"user deleted", deleted, session{}, sessiondv1.Reason_REASON_USER_DELETED},
		{"user banned", banned, session{}, sessiondv1.Reason_REASON_USER_BANNED},
		{"ban lapsed", lapsed, session{}, sessiondv1.Reason_REASON_UNSPECIFIED},
		{"deleted and banned: deleted", deletedBanned, session{}, sessiondv1.Reason_REASON_USER_DELETED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := h.addSession(tt.user, tt.sess)
			first := h.mustValidate(s.token)
			if first.GetSource() != sessiondv1.Source_SOURCE_POSTGRES {
				t.Errorf("first answer from %v, want POSTGRES", first.GetSource())
			}
			valid := tt.reason == sessiondv1.Reason_REASON_UNSPECIFIED
			// Every tier gives the same answer: ask again until it comes from
			// the cache (the fill lands after the answer, the local copy may lag).
			var cached *sessiondv1.ValidateSessionResponse
			eventually(t, 5*time.Second, func() error {
				cached = h.mustValidate(s.token)
				// Expired sessions too: cached for the negative TTL.
				if !isCacheSource(cached.GetSource()) {
					return errors.New("still not answered from the cache")
				}
				return nil
			})
			for _, resp := range []*sessiondv1.ValidateSessionResponse{first, cached} {
				if resp.GetValid() != valid || resp.GetReason() != tt.reason {
					t.Fatalf("from %v: valid=%v reason=%v, want valid=%v reason=%v", resp.GetSource(), resp.GetValid(), resp.GetReason(), valid, tt.reason)
				}
				if !valid {
					if resp.GetSession() != nil {
						t.Errorf("invalid session answered with its details")
					}
					continue
				}
				checkSession(t, resp.GetSession(), tt.user, s)
			}
		})
	}

	t.Run("unknown token", func(t *testing.T) {
		resp := h.mustValidate(newToken(t))
		if resp.GetValid() || resp.GetReason() != sessiondv1.Reason_REASON_NOT_FOUND || resp.GetSession() != nil {
			t.Errorf("got %v", resp)
		}
	})
}

func checkSession(t *testing.T, got *sessiondv1.Session, u user, s session) {
	t.Helper()
	if got.GetId() != s.id || got.GetUserId() != u.id || got.GetEmail() != u.email {
		t.Errorf("ids: got %s/%s/%s, want %s/%s/%s", got.GetId(), got.GetUserId(), got.GetEmail(), s.id, u.id, u.email)
	}
	if !got.GetExpiresAt().AsTime().Equal(s.expiresAt.Truncate(time.Microsecond)) {
		t.Errorf("expires_at %v, want %v", got.GetExpiresAt().AsTime(), s.expiresAt)
	}
	if !got.GetLastActivityAt().AsTime().Equal(s.lastActivity.Truncate(time.Microsecond)) {
		t.Errorf("last_activity_at %v, want %v", got.GetLastActivityAt().AsTime(), s.lastActivity)
	}
	if got.GetCreatedAt() == nil || got.GetCreatedAt().AsTime().IsZero() {
		t.Error("created_at missing")
	}
	for _, f := range []struct {
		name      string
		got, want *string
	}{
		{"ip_address", got.IpAddress, s.ip}, {"user_agent", got.UserAgent, s.ua},
		{"first_name", got.FirstName, u.first}, {"last_name", got.LastName, u.last}, {"username", got.Username, u.username},
	} {
		switch {
		case (f.got == nil) != (f.want == nil):
			t.Errorf("%s: got %v, want %v (NULL must stay unset)", f.name, f.got, f.want)
		case f.got != nil && *f.got != *f.want:
			t.Errorf("%s: got %q, want %q", f.name, *f.got, *f.want)
		}
	}
}

func TestBadInputIsRefusedAndWritesNothing(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	for _, tt := range []struct {
		name  string
		token string
	}{
		{"empty", ""},
		{"513 bytes", strings.Repeat("a", 513)},
		{"newline", "abc\ndef"},
		{"NUL", "abc\x00"},
		{"non-ASCII", "tökén"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.validate(tt.token)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if tt.token != "" && strings.Contains(status.Convert(err).Message(), tt.token) {
				t.Error("the error repeats the token")
			}
		})
	}
	for _, k := range h.keys("*") {
		switch k {
		case tiers.GenKey, tiers.NodesKey, tiers.CoveredKey: // the fence's own, written whatever the traffic
		default:
			t.Errorf("redis holds %q after malformed tokens, want nothing but the fence's keys", k)
		}
	}
	if st := h.srv.ReadThrough().Counters().PostgresReads.Load(); st != 0 {
		t.Errorf("malformed tokens caused %d postgres queries", st)
	}
}

// A cached entry is checked against the clock on every hit: a ban that ends
// is seen from the cache at once, and a session that expires is refused.
func TestCachedAnswersFollowTheClock(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	banEnds := time.Now().Add(1500 * time.Millisecond)
	u := h.addUser(user{bannedUntil: banEnds})
	s := h.addSession(u, session{expiresAt: banEnds.Add(1500 * time.Millisecond)})

	if r := h.mustValidate(s.token); r.GetReason() != sessiondv1.Reason_REASON_USER_BANNED {
		t.Fatalf("during the ban: %v", r)
	}
	eventually(t, 5*time.Second, func() error {
		if r := h.mustValidate(s.token); r.GetSource() != sessiondv1.Source_SOURCE_LOCAL {
			return errors.New("not yet in the local cache")
		}
		return nil
	})
	readsBefore := h.srv.ReadThrough().Counters().PostgresReads.Load()
	time.Sleep(time.Until(banEnds)) // waiting for the clock, not for a race
	r := h.mustValidate(s.token)
	if !r.GetValid() || !isCacheSource(r.GetSource()) {
		t.Fatalf("after the ban ended: valid=%v from %v, want valid from the cache", r.GetValid(), r.GetSource())
	}
	if n := h.srv.ReadThrough().Counters().PostgresReads.Load(); n != readsBefore {
		t.Errorf("the lapsed ban was learnt from postgres (%d reads), want from the cached entry", n-readsBefore)
	}
	time.Sleep(time.Until(s.expiresAt))
	if r := h.mustValidate(s.token); r.GetValid() || r.GetReason() != sessiondv1.Reason_REASON_EXPIRED {
		t.Fatalf("after expiry: %v", r)
	}
}

func TestRedisEntryTTLNeverOutlivesTheSession(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.CacheTTL = time.Minute })
	u := h.addUser(user{})
	long := h.addSession(u, session{expiresAt: time.Now().Add(time.Hour)})
	short := h.addSession(u, session{expiresAt: time.Now().Add(20 * time.Second)})
	for _, tt := range []struct {
		name   string
		s      session
		lo, hi time.Duration
	}{
		{"capped by the cache TTL", long, 55 * time.Second, time.Minute},
		{"capped by the session's expiry", short, 15 * time.Second, 20 * time.Second},
	} {
		h.mustValidate(tt.s.token)
		h.filled()
		pttl, err := h.redis.Do(t.Context(), h.redis.B().Pttl().Key(tiers.Key(tiers.TokenHash(tt.s.token))).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Duration(pttl) * time.Millisecond; d < tt.lo || d > tt.hi {
			t.Errorf("%s: PTTL %v, want within [%v, %v]", tt.name, d, tt.lo, tt.hi)
		}
	}
}

func TestRawTokenNeverReachesRedis(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	u := h.addUser(user{first: str("Grace")})
	var tokens []string
	for range 5 {
		tokens = append(tokens, h.addSession(u, session{ip: str("192.0.2.1")}).token)
	}
	tokens = append(tokens, newToken(t)) // unknown
	for _, tok := range tokens {
		h.mustValidate(tok)
	}
	h.filled()
	entries := 0
	for _, k := range h.keys("*") {
		blob := k + dumpKey(t, h, k)
		for _, tok := range tokens {
			if strings.Contains(blob, tok) {
				t.Fatalf("a raw token is stored in redis under %s", k)
			}
		}
		if strings.HasPrefix(k, tiers.KeyPrefix) {
			entries++
			if strings.Contains(blob, "token") {
				t.Errorf("%s has a token field", k)
			}
		}
	}
	if entries != 6 {
		t.Errorf("redis holds %d session entries, want 5 sessions and 1 negative", entries)
	}
}

// dumpKey renders whatever a key holds, whatever its type.
func dumpKey(t *testing.T, h *harness, k string) string {
	t.Helper()
	typ, err := h.redis.Do(t.Context(), h.redis.B().Type().Key(k).Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	var vals []string
	switch typ {
	case "hash":
		m, err := h.redis.Do(t.Context(), h.redis.B().Hgetall().Key(k).Build()).AsStrMap()
		if err != nil {
			t.Fatal(err)
		}
		for f, v := range m {
			vals = append(vals, f, v)
		}
	case "set":
		vals, err = h.redis.Do(t.Context(), h.redis.B().Smembers().Key(k).Build()).AsStrSlice()
	case "string":
		var v string
		v, err = h.redis.Do(t.Context(), h.redis.B().Get().Key(k).Build()).ToString()
		vals = []string{v}
	default:
		t.Fatalf("unexpected %s key %s", typ, k)
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(vals, " ")
}

// An entry written from a database row (as warming does) is found by the next
// lookup of the raw token: both sides compute the same key.
func TestEntryFromRowIsHitByRawToken(t *testing.T) {
	for _, storage := range []tiers.TokenStorage{tiers.TokenStorageHash, tiers.TokenStoragePlain} {
		t.Run(string(storage), func(t *testing.T) {
			h := start(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) { c.TokenStorage = string(storage) })
			u := h.addUser(user{})
			s := h.addSession(u, session{})

			// Read the row as warming does: by the stored column, not the token.
			var stored string
			var rs tiers.RowScan
			row := h.db.QueryRow(t.Context(), `SELECT s.token, `+tiers.Columns+` FROM platform.user_sessions s
				JOIN platform.users u ON u.id = s.user_id WHERE s.id = $1`, s.id)
			if err := row.Scan(append([]any{&stored}, rs.Dest()...)...); err != nil {
				t.Fatal(err)
			}
			rec := rs.Record()
			l1 := tiers.NewRedis(h.redis, tiers.RedisOptions{TTL: time.Minute}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			gen, err := l1.Gen(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l1.Set(t.Context(), tiers.RowKey(stored, storage), rec, tiers.Stamp{ReadStart: time.Now(), Gen: gen}); err != nil {
				t.Fatal(err)
			}

			resp := h.mustValidate(s.token)
			if !resp.GetValid() || !isCacheSource(resp.GetSource()) {
				t.Errorf("valid=%v from %v, want a valid cache hit", resp.GetValid(), resp.GetSource())
			}
			if n := h.srv.ReadThrough().Counters().PostgresReads.Load(); n != 0 {
				t.Errorf("%d postgres reads, want 0", n)
			}
		})
	}
}

func TestRedisStoppedMidTest(t *testing.T) {
	rs := devtest.OwnRedis(t)
	h := start(t, devtest.Database(t), rs.URL(), func(c *config.Config) { c.RedisTimeout = 200 * time.Millisecond })
	u := h.addUser(user{})
	cached := h.addSession(u, session{})
	uncached := h.addSession(u, session{})
	h.mustValidate(cached.token)

	if err := rs.Kill(); err != nil {
		t.Fatal(err)
	}
	// Every answer stays right; once rueidis has seen the connection go (and
	// dropped its local copies) they come from Postgres.
	eventually(t, 10*time.Second, func() error {
		r := h.mustValidate(cached.token)
		if !r.GetValid() {
			t.Fatalf("cached session invalid with redis down: %v", r)
		}
		if r.GetSource() != sessiondv1.Source_SOURCE_POSTGRES {
			return errors.New("still answered from " + r.GetSource().String())
		}
		return nil
	})
	if r := h.mustValidate(uncached.token); !r.GetValid() || r.GetSource() != sessiondv1.Source_SOURCE_POSTGRES {
		t.Errorf("uncached with redis down: %v", r)
	}
	if r := h.mustValidate(newToken(t)); r.GetValid() || r.GetReason() != sessiondv1.Reason_REASON_NOT_FOUND {
		t.Errorf("unknown token with redis down: %v", r)
	}
	if h.srv.ReadThrough().Counters().Errors.Load() == 0 {
		t.Error("redis errors were not counted")
	}

	// And when Redis is back, the cache is used again.
	if err := rs.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() error {
		if r := h.mustValidate(uncached.token); !isCacheSource(r.GetSource()) {
			return errors.New("not yet answered from the cache")
		}
		return nil
	})
}

func TestPostgresStopped(t *testing.T) {
	pg := devtest.OwnPostgres(t)
	dbURL, err := pg.CreateDatabase(t.Context(), "sessiond_outage")
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, dbURL, devtest.RedisURL(t), func(c *config.Config) { c.PostgresTimeout = time.Second })
	u := h.addUser(user{})
	cached := h.addSession(u, session{})
	uncached := h.addSession(u, session{})
	heard(t, h, 2)              // the inserts' notifications, before the outage
	localOn(t, cached.token, h) // cached before the outage
	h.db.Close()                // our own fixture pool, before the server goes away under it

	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	if r := h.mustValidate(cached.token); !r.GetValid() || !isCacheSource(r.GetSource()) {
		t.Errorf("cached session with postgres down: valid=%v from %v", r.GetValid(), r.GetSource())
	}
	start := time.Now()
	_, err = h.validate(uncached.token)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("uncached session with postgres down: %v, want Unavailable", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Unavailable took %v, want within the postgres timeout", took)
	}
	if !strings.Contains(status.Convert(err).Message(), "cannot be reached") {
		t.Errorf("unclear message: %q", status.Convert(err).Message())
	}
	if _, err := h.validate(newToken(t)); status.Code(err) != codes.Unavailable {
		t.Errorf("unknown token with postgres down: %v, want Unavailable (not a false NOT_FOUND)", err)
	}
}

func TestHealthServingAndCleanShutdown(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	for _, svc := range []string{"", server.ServiceName} {
		eventually(t, 5*time.Second, func() error {
			r, err := h.health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				return err
			}
			if r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return errors.New(r.GetStatus().String())
			}
			return nil
		})
	}
	h.shutdown()
}
