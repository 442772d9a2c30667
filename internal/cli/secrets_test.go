package cli_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/cli"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/invalidate"
	"github.com/sessiond/sessiond/internal/server"
)

// The password planted in every URL of these tests. Its two halves are
// looked for apart, so that a piece of it counts as a leak too.
const planted = "PLANTED-SECRET-8f3a"

var plantedPieces = []string{"PLANTED", "SECRET-8f3a"}

// seen gathers everything a test's failure paths printed or answered:
// logs, command output, errors, gRPC status messages and responses.
type seen struct {
	mu    sync.Mutex
	texts []labelled
}

type labelled struct{ label, text string }

func (s *seen) add(label, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.texts = append(s.texts, labelled{label, text})
}

func (s *seen) addErr(label string, err error) {
	if err != nil {
		s.add(label, err.Error()+" / status message: "+status.Convert(err).Message())
	}
}

func (s *seen) addProto(label string, m proto.Message) {
	b, _ := protojson.Marshal(m)
	s.add(label, string(b))
}

// check fails t for each text holding the planted password or a piece of
// it, and returns how many bytes were checked (a check of nothing proves
// nothing).
func (s *seen) check(t *testing.T) int {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.texts {
		n += len(l.text)
		for _, p := range plantedPieces {
			if strings.Contains(l.text, p) {
				t.Errorf("%s shows the password:\n%s", l.label, l.text)
				break
			}
		}
	}
	if testing.Verbose() {
		for _, l := range s.texts {
			t.Logf("--- %s\n%s", l.label, l.text)
		}
	}
	return n
}

// cliMain runs `sessiond args...` with an empty environment plus env.
func cliMain(ctx context.Context, env map[string]string, stdout, stderr io.Writer, args ...string) int {
	return cli.Main(ctx, args, cli.Env{Getenv: func(k string) string { return env[k] }, Stdout: stdout, Stderr: stderr})
}

// withPassword returns raw, a URL, with the planted password.
func withPassword(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), planted)
	return u.String()
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	return strconv.Itoa(port)
}

// Settings that cannot work, refused at start (serve, server.New, migrate)
// or failing at once (migrate against a closed port): the error names the
// setting and never shows the password.
func TestNoSecretInStartupErrors(t *testing.T) {
	closed := closedPort(t)
	goodDB := "postgres://app:" + planted + "@127.0.0.1:" + closed + "/sessions?sslmode=disable"
	goodRedis := "redis://:" + planted + "@127.0.0.1:" + closed + "/0"
	tests := []struct {
		name, db, redis string
		names           string // what the error must name
	}{
		{"redis: bad port", goodDB, "redis://u:" + planted + "@r:bad/0", "--redis-url"},
		{"redis: bad escape in the password", goodDB, "redis://:" + planted + "%zz@r/0", "--redis-url"},
		{"redis: unescaped slash in the password", goodDB, "redis://u:12/" + planted + "@r/0", "--redis-url"},
		{"redis: bad database", goodDB, "redis://u:" + planted + "@r:6379/zz", "--redis-url"},
		{"redis: bad scheme", goodDB, "http://u:" + planted + "@r:6379", "--redis-url"},
		{"redis: sentinel with a bad option", goodDB, "redis://u:" + planted + "@s:26379/0?master_set=main&addr=s2:26379&dial_timeout=x", "--redis-url"},
		{"postgres: bad port", "postgres://u:" + planted + "@db:bad/x", goodRedis, "--database-url"},
		{"postgres: bad escape in the password", "postgres://u:" + planted + "%zz@db/x", goodRedis, "--database-url"},
		{"postgres: unescaped slash in the password", "postgres://u:12/" + planted + "@db/x", goodRedis, "--database-url"},
		{"postgres: bad sslmode", "postgres://u:" + planted + "@db/x?sslmode=bogus", goodRedis, "--database-url"},
		{"postgres: password in the query", "postgres://u@db/x?password=" + planted + "&sslmode=bogus", goodRedis, "--database-url"},
		{"postgres: not a postgres url", "mysql://u:" + planted + "@db/x", goodRedis, "--database-url"},
	}
	var out seen
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Bounded: a setting wrongly accepted would serve until then.
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			env := map[string]string{"DATABASE_URL": tt.db, "REDIS_URL": tt.redis}
			r := run(ctx, env, "serve", "--grpc-addr=127.0.0.1:0")
			out.add(tt.name+": serve (environment) stderr", r.stderr)
			out.add(tt.name+": serve (environment) stdout", r.stdout)
			if r.code == 0 || !strings.Contains(r.stderr, tt.names) {
				t.Errorf("serve: exit %d, stderr %q: want a failure naming %s", r.code, r.stderr, tt.names)
			}
			r = run(ctx, nil, "serve", "--grpc-addr=127.0.0.1:0", "--database-url", tt.db, "--redis-url", tt.redis)
			out.add(tt.name+": serve (flags) stderr", r.stderr+r.stdout)
			if r.code == 0 {
				t.Errorf("serve with flags: exit 0")
			}

			cfg := config.Default()
			cfg.DatabaseURL, cfg.RedisURL = tt.db, tt.redis
			var logs syncBuffer
			_, err := server.New(ctx, cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
			if err == nil {
				t.Errorf("server.New accepted %s", tt.names)
			}
			out.addErr(tt.name+": server.New error", err)
			out.add(tt.name+": server.New log", logs.String())

			if tt.names == "--database-url" {
				r := run(ctx, map[string]string{"DATABASE_URL": tt.db}, "migrate")
				out.add(tt.name+": migrate output", r.stderr+r.stdout)
				if r.code == 0 || !strings.Contains(r.stderr, "--database-url") && !strings.Contains(r.stderr, "cannot parse") {
					t.Errorf("migrate: exit %d, stderr %q: want a failure naming --database-url", r.code, r.stderr)
				}
			}
		})
	}
	t.Run("migrate against a closed port", func(t *testing.T) {
		r := run(t.Context(), map[string]string{"DATABASE_URL": goodDB}, "migrate")
		out.add("migrate against a closed port", r.stderr+r.stdout)
		if r.code != 1 || !strings.Contains(r.stderr, "connect to postgres") {
			t.Errorf("exit %d, stderr %q: want 1 and a connection failure", r.code, r.stderr)
		}
	})
	if out.check(t) == 0 {
		t.Error("nothing was checked")
	}
}

// serving is `sessiond serve` running in the test, its output captured.
type serving struct {
	t              *testing.T
	addr           string
	stdout, stderr *syncBuffer
	client         sessiondv1.SessionServiceClient
	stop           func() int
}

// serve runs `sessiond serve` with env and args (plus a loopback port and
// debug logging) until the test calls stop, and waits for it to listen.
func serve(t *testing.T, env map[string]string, args ...string) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{t: t, stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	code := make(chan int, 1)
	go func() {
		code <- cliMain(ctx, env, s.stdout, s.stderr, append([]string{"serve", "--grpc-addr=127.0.0.1:0", "--log-level=debug"}, args...)...)
	}()
	var once sync.Once
	exit := -1
	s.stop = func() int {
		once.Do(func() {
			cancel()
			select {
			case exit = <-code:
			case <-time.After(30 * time.Second):
				t.Error("serve did not stop within 30s")
			}
		})
		return exit
	}
	t.Cleanup(func() { s.stop() })
	devtest.Eventually(t, 20*time.Second, func() error {
		select {
		case c := <-code:
			code <- c
			t.Fatalf("serve exited %d early:\n%s", c, s.stderr.String())
		default:
		}
		for _, rec := range s.logRecords() {
			if rec["msg"] == "sessiond serving" {
				s.addr, _ = rec["addr"].(string)
				return nil
			}
		}
		return errors.New("not serving yet")
	})
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s.client = sessiondv1.NewSessionServiceClient(conn)
	return s
}

// logRecords parses the JSON log so far.
func (s *serving) logRecords() []map[string]any {
	var recs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s.stderr.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil {
			recs = append(recs, rec)
		}
	}
	return recs
}

// waitLogged waits until n records with message msg were logged.
func (s *serving) waitLogged(msg string, n int, within time.Duration) {
	s.t.Helper()
	devtest.Eventually(s.t, within, func() error {
		got := 0
		for _, rec := range s.logRecords() {
			if rec["msg"] == msg {
				got++
			}
		}
		if got < n {
			return fmt.Errorf("%d records %q, want %d", got, msg, n)
		}
		return nil
	})
}

// callEverything makes every call a caller can make, and the CLI's warm and
// stats, recording their answers; wantValidate is the code ValidateSession
// must get for an unknown token.
func (s *serving) callEverything(out *seen, label string, wantValidate codes.Code) {
	t := s.t
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	resp, err := s.client.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: "an-unknown-token-" + strconv.Itoa(int(time.Now().UnixNano()))})
	if status.Code(err) != wantValidate {
		t.Errorf("%s: ValidateSession: %v, want %v", label, err, wantValidate)
	}
	if wantValidate == codes.Unavailable && !strings.HasPrefix(status.Convert(err).Message(), "session store unavailable") {
		t.Errorf("%s: ValidateSession's message %q does not say the session store is unavailable", label, status.Convert(err).Message())
	}
	out.addErr(label+": ValidateSession", err)
	if resp != nil {
		out.addProto(label+": ValidateSession", resp)
	}

	est, err := s.client.WarmCache(ctx, &sessiondv1.WarmCacheRequest{EstimateOnly: true})
	if err == nil {
		for {
			m, err := est.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					out.addErr(label+": WarmCache estimate", err)
				}
				break
			}
			out.addProto(label+": WarmCache estimate", m)
		}
	}
	out.addErr(label+": WarmCache estimate", err)

	var last *sessiondv1.WarmCacheProgress
	stream, err := s.client.WarmCache(ctx, &sessiondv1.WarmCacheRequest{})
	out.addErr(label+": WarmCache", err)
	for err == nil {
		var m *sessiondv1.WarmCacheProgress
		if m, err = stream.Recv(); err == nil {
			out.addProto(label+": WarmCache progress", m)
			last = m
		} else if !errors.Is(err, io.EOF) {
			out.addErr(label+": WarmCache", err)
		}
	}
	if last.GetOutcome() == sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED || last.GetError() == "" {
		t.Errorf("%s: the warming run ended %v, want a failure with an error", label, last)
	}

	st, err := s.client.GetStats(ctx, &sessiondv1.GetStatsRequest{})
	out.addErr(label+": GetStats", err)
	if st != nil {
		out.addProto(label+": GetStats", st)
	}
	if st.GetLastWarming().GetError() == "" {
		t.Errorf("%s: GetStats after a failed run: last_warming %v, want an error", label, st.GetLastWarming())
	}

	inv, err := s.client.InvalidateSessions(ctx, &sessiondv1.InvalidateSessionsRequest{Tokens: []string{"some-token"}})
	out.addErr(label+": InvalidateSessions", err)
	if inv != nil {
		out.addProto(label+": InvalidateSessions", inv)
	}

	for _, args := range [][]string{
		{"warm", "--addr", s.addr},
		{"warm", "--addr", s.addr, "--json"},
		{"warm", "--addr", s.addr, "--estimate"},
		{"stats", "--addr", s.addr},
		{"stats", "--addr", s.addr, "--json"},
	} {
		r := run(ctx, nil, args...)
		out.add(label+": sessiond "+strings.Join(args, " "), fmt.Sprintf("exit %d\n%s%s", r.code, r.stdout, r.stderr))
	}
}

// finish stops the server and records what it printed.
func (s *serving) finish(out *seen, label string) {
	if code := s.stop(); code != 0 {
		s.t.Errorf("%s: serve exited %d", label, code)
	}
	out.add(label+": serve stderr (the log)", s.stderr.String())
	out.add(label+": serve stdout", s.stdout.String())
}

// Postgres unreachable from the start (a closed port), Redis up behind the
// planted password: the listener's reconnect warnings, the startup warm's
// retries, every call and the CLI.
func TestNoSecretWithPostgresUnreachable(t *testing.T) {
	rs := devtest.OwnRedis(t)
	redisURL := requirePassword(t, rs.URL())
	dbURL := "postgres://app:" + planted + "@127.0.0.1:" + closedPort(t) + "/sessions?sslmode=disable"
	env := map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": redisURL}
	var out seen

	// The listener retries (an instance that never heard anything does not
	// take a refusal for "nothing can be revoked": it distrusts, and says
	// so with the error each time); the startup warm waits for it.
	s := serve(t, env, "--postgres-timeout=1s")
	s.waitLogged(invalidate.MsgListenerLost, 2, 30*time.Second)
	s.callEverything(&out, "listener", codes.Unavailable)
	s.finish(&out, "listener")

	// Without the listener the startup warm runs, fails, and is retried.
	s = serve(t, env, "--postgres-timeout=1s", "--invalidation=false")
	s.waitLogged("startup warm: postgres unreachable; staying NOT_SERVING and retrying", 2, 30*time.Second)
	s.callEverything(&out, "startup warm", codes.Unavailable)
	s.finish(&out, "startup warm")

	out.check(t)
}

// Postgres up, then killed under a serving instance: the listener loses its
// live connection and reconnects; uncached calls fail; `migrate` fails.
func TestNoSecretWhenPostgresDies(t *testing.T) {
	pg := devtest.OwnPostgres(t)
	dbURL, err := pg.CreateDatabase(t.Context(), "sessions")
	if err != nil {
		t.Fatal(err)
	}
	dbURL = withPassword(t, dbURL) // trust authentication: it is sent, never checked
	env := map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": requirePassword(t, devtest.OwnRedis(t).URL())}
	var out seen

	r := run(t.Context(), env, "migrate")
	out.add("migrate", r.stdout+r.stderr)
	if r.code != 0 {
		t.Fatalf("migrate: exit %d\n%s", r.code, r.stderr)
	}
	s := serve(t, env, "--postgres-timeout=1s")
	s.waitLogged("ready: health SERVING", 1, 30*time.Second)
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	s.waitLogged(invalidate.MsgListenerLost, 1, 30*time.Second)
	s.waitLogged(invalidate.MsgPostgresDown, 1, 30*time.Second)
	s.callEverything(&out, "postgres killed", codes.Unavailable)
	s.finish(&out, "postgres killed")

	r = run(t.Context(), env, "migrate")
	out.add("migrate with postgres down", r.stdout+r.stderr)
	if r.code != 1 {
		t.Errorf("migrate with postgres down: exit %d, want 1", r.code)
	}
	out.check(t)
}

// Redis unreachable (a closed port), or refusing the planted password;
// Postgres up: the connection warnings, the failed resync and warm, every
// call and the CLI.
func TestNoSecretWithRedisUnreachable(t *testing.T) {
	wrongPassword := devtest.OwnRedis(t)
	admin, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{wrongPassword.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	err = admin.Do(t.Context(), admin.B().ConfigSet().ParameterValue().ParameterValue("requirepass", "another-password").Build()).Error()
	admin.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out seen
	for _, tt := range []struct{ name, redisURL string }{
		{"closed port", "redis://:" + planted + "@127.0.0.1:" + closedPort(t) + "/0"},
		{"wrong password", withPassword(t, wrongPassword.URL())},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": withPassword(t, devtest.Database(t)), "REDIS_URL": tt.redisURL}
			if r := run(t.Context(), env, "migrate"); r.code != 0 {
				t.Fatalf("migrate: exit %d\n%s", r.code, r.stderr)
			}
			addSession(t, env["DATABASE_URL"]) // a warm with nothing to write would complete
			s := serve(t, env, "--redis-timeout=200ms")
			s.waitLogged("ready: health SERVING", 1, 30*time.Second)
			s.waitLogged("redis still unreachable", 1, 30*time.Second)
			s.callEverything(&out, tt.name, codes.OK)
			s.finish(&out, tt.name)
		})
	}
	out.check(t)
}

// requirePassword makes the Redis at raw require the planted password, and
// returns its URL with it.
func requirePassword(t *testing.T, raw string) string {
	t.Helper()
	opt := rueidis.MustParseURL(raw)
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Do(t.Context(), c.B().ConfigSet().ParameterValue().ParameterValue("requirepass", planted).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	return withPassword(t, raw)
}

// addSession adds a user with one valid, recently active session.
func addSession(t *testing.T, dbURL string) {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	_, err = pool.Exec(t.Context(), `WITH u AS (INSERT INTO platform.users (id, email) VALUES (gen_random_uuid(), 'secret@example.test') RETURNING id)
		INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
		SELECT gen_random_uuid(), u.id, md5(random()::text), now() + interval '1 hour', now() FROM u`)
	if err != nil {
		t.Fatal(err)
	}
}
