package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/cli"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/server"
	"github.com/sessiond/sessiond/internal/tiers"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// harness is one sessiond, built and run as in production on real Postgres
// and Redis, listening on 127.0.0.1:0.
type harness struct {
	t      *testing.T
	addr   string
	db     *pgxpool.Pool
	redis  rueidis.Client // our own client, to look inside Redis
	client sessiondv1.SessionServiceClient
	srv    *server.Server
}

func start(t *testing.T, dbURL, redisURL string, opts ...func(*config.Config)) *harness {
	t.Helper()
	ctx := t.Context()
	cfg := config.Default()
	cfg.DatabaseURL, cfg.RedisURL = dbURL, redisURL
	cfg.WarmOnStart, cfg.RewarmInterval = false, 0
	cfg.ShutdownDelay = 0 // no load balancer to wait for
	for _, o := range opts {
		o(&cfg)
	}
	h := &harness{t: t}
	var err error
	if h.db, err = pgxpool.New(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.db.Close)
	if err := schema.Migrate(ctx, h.db); err != nil {
		t.Fatal(err)
	}
	if h.redis, err = rueidis.NewClient(rueidis.MustParseURL(redisURL)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.redis.Close)

	runCtx, stop := context.WithCancel(context.Background())
	srv, err := server.New(runCtx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		stop()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stop()
		t.Fatal(err)
	}
	h.addr, h.srv = lis.Addr().String(), srv
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(runCtx, lis) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("server did not stop within 30s")
		}
	})
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h.client = sessiondv1.NewSessionServiceClient(conn)
	// SERVING means the invalidation listener has connected and resynced:
	// what the test caches from now on stays.
	select {
	case <-srv.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("server not SERVING within 20s")
	}
	return h
}

// addActive adds a user with n valid sessions, the i-th last active i
// minutes ago, and returns their raw tokens.
func (h *harness) addActive(n int) []string {
	h.t.Helper()
	ctx := h.t.Context()
	var userID string
	if err := h.db.QueryRow(ctx, `INSERT INTO platform.users (id, email) VALUES (gen_random_uuid(), 'cli@example.test') RETURNING id::text`).Scan(&userID); err != nil {
		h.t.Fatal(err)
	}
	var tokens []string
	for i := range n {
		var b [32]byte
		rand.Read(b[:])
		tok := hex.EncodeToString(b[:])
		_, err := h.db.Exec(ctx, `INSERT INTO platform.user_sessions (id, user_id, token, expires_at, last_activity_at)
			VALUES (gen_random_uuid(), $1, $2, now() + interval '1 hour', now() - make_interval(mins => $3))`,
			userID, tiers.TokenHash(tok), i+1)
		if err != nil {
			h.t.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	return tokens
}

func (h *harness) cachedKeys() int {
	h.t.Helper()
	keys, err := h.redis.Do(h.t.Context(), h.redis.B().Keys().Pattern(tiers.KeyPrefix+"*").Build()).AsStrSlice()
	if err != nil {
		h.t.Fatal(err)
	}
	return len(keys)
}

// validate validates token and waits until this instance's cache answers
// for it, so that the next call of the same token hits. A miss's fill lands
// after the answer, and reaches the instance's local copy when Redis's
// invalidation does (see tiers.Redis.Get): until then the instance would
// miss once more, by design, and the counts below would be off by one.
func (h *harness) validate(token string) {
	h.t.Helper()
	if _, err := h.client.ValidateSession(h.t.Context(), &sessiondv1.ValidateSessionRequest{Token: token}); err != nil {
		h.t.Fatal(err)
	}
	h.srv.ReadThrough().Wait()
	waitFor(h.t, 5*time.Second, func() error {
		_, ok, err := h.srv.ReadThrough().Peek(h.t.Context(), token)
		if err != nil || !ok {
			return fmt.Errorf("not cached yet (%v)", err)
		}
		return nil
	})
}

// syncBuffer is a bytes.Buffer that a running command may write while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs `sessiond args...` with an empty environment plus env.
func run(ctx context.Context, env map[string]string, args ...string) result {
	var stdout, stderr syncBuffer
	code := cliMain(ctx, env, &stdout, &stderr, args...)
	return result{code, stdout.String(), stderr.String()}
}

func runT(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	r := run(ctx, nil, args...)
	if testing.Verbose() {
		t.Logf("sessiond %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func mustContain(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, got)
		}
	}
}

func TestWarm(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(7)
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"defaults", nil, []string{
			"🔄 Warming cache with up to the server's default count of sessions...",
			"[CacheWarming] Found 7 active sessions to warm\n",
			"[CacheWarming] Completed in ",
			"✅ Cache warming completed successfully!\n",
			"   Sessions warmed: 7/7\n   Failed: 0\n   Estimated hit rate: 100%\n",
			"🎯 Target hit rate achieved (>=90%)!\n",
			"📊 Updated Cache Metrics:\n   Hit Rate: 0%   (will increase with actual traffic)\n   Total Operations: 0\n",
		}},
		{"batches of 3, no pause", []string{"--batch-size", "3", "--batch-delay", "0"}, []string{
			"[CacheWarming] Found 7 active sessions to warm\n" +
				"[CacheWarming] Progress: 3/7 (43%) - Failed: 0\n" +
				"[CacheWarming] Progress: 6/7 (86%) - Failed: 0\n" +
				"[CacheWarming] Progress: 7/7 (100%) - Failed: 0\n" +
				"[CacheWarming] Completed in ",
			"- Warmed: 7/7 (100.00% estimated hit rate) - Failed: 0\n",
			"   Sessions warmed: 7/7\n",
		}},
		{"count 4", []string{"--count", "4"}, []string{
			"🔄 Warming cache with up to 4 sessions...",
			"[CacheWarming] Found 4 active sessions to warm\n",
			"   Sessions warmed: 4/4\n",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := runT(t, append([]string{"warm", "--addr", h.addr}, tt.args...)...)
			if r.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
			}
			mustContain(t, "stdout", r.stdout, tt.want...)
			if r.stderr != "" {
				t.Errorf("stderr: %s", r.stderr)
			}
		})
	}
	if n := h.cachedKeys(); n != 7 {
		t.Errorf("%d sessions cached, want 7", n)
	}
}

func TestWarmJSON(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(5)
	r := runT(t, "warm", "--addr", h.addr, "--json", "--batch-size", "2", "--batch-delay", "0s")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	var msgs []*sessiondv1.WarmCacheProgress
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		m := new(sessiondv1.WarmCacheProgress)
		if err := protojson.Unmarshal(sc.Bytes(), m); err != nil {
			t.Fatalf("line %d %q: %v", len(msgs)+1, sc.Text(), err)
		}
		var generic map[string]any // plain JSON too, for jq and friends
		if err := json.Unmarshal(sc.Bytes(), &generic); err != nil {
			t.Fatalf("line %d is not JSON: %v", len(msgs)+1, err)
		}
		msgs = append(msgs, m)
	}
	// The total, one per batch (2, 2, 1), the end.
	if len(msgs) != 5 {
		t.Fatalf("%d lines, want 5:\n%s", len(msgs), r.stdout)
	}
	last := msgs[len(msgs)-1]
	if !last.GetDone() || last.GetWarmed() != 5 || last.GetTotal() != 5 || last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED {
		t.Errorf("last line %v, want done with 5 warmed", last)
	}
	for _, m := range msgs[:len(msgs)-1] {
		if m.GetDone() {
			t.Errorf("done before the last line: %v", m)
		}
	}
}

func TestWarmEstimate(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(6)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "📊 Warmable sessions: 6 (an estimate"},
		{[]string{"--count", "2"}, "📊 Warmable sessions: 2 (an estimate"},
		{[]string{"--json"}, `"total":6`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := runT(t, append([]string{"warm", "--addr", h.addr, "--estimate"}, tt.args...)...)
			if r.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
			}
			if got := strings.ReplaceAll(r.stdout, " ", ""); !strings.Contains(got, strings.ReplaceAll(tt.want, " ", "")) {
				t.Errorf("stdout lacks %q:\n%s", tt.want, r.stdout)
			}
			if strings.Contains(r.stdout, "Updated Cache Metrics") || strings.Contains(r.stdout, "Sessions warmed") {
				t.Errorf("an estimate printed a run summary:\n%s", r.stdout)
			}
		})
	}
	if n := h.cachedKeys(); n != 0 {
		t.Errorf("an estimate wrote %d keys", n)
	}
	if st, err := h.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{}); err != nil || st.GetLastWarming() != nil {
		t.Errorf("an estimate was recorded as a run: %v %v", st.GetLastWarming(), err)
	}
}

func TestWarmWithRedisDown(t *testing.T) {
	rs := devtest.OwnRedis(t)
	h := start(t, devtest.Database(t), rs.URL())
	h.addActive(3)
	if err := rs.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, json := range []bool{false, true} {
		t.Run(fmt.Sprintf("json=%v", json), func(t *testing.T) {
			args := []string{"warm", "--addr", h.addr}
			if json {
				args = append(args, "--json")
			}
			r := runT(t, args...)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1; stdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			mustContain(t, "stderr", r.stderr, "sessiond warm: warming run ", " on "+h.addr+" ended FAILED: ")
			if json {
				last := lastLine(r.stdout)
				if !strings.Contains(last, `"WARM_OUTCOME_FAILED"`) {
					t.Errorf("last JSON line %s, want outcome FAILED", last)
				}
			} else {
				mustContain(t, "stdout", r.stdout, "❌ Cache warming failed (outcome FAILED): ", "   Sessions warmed: 0/3\n", "⚠️  Estimated hit rate 0% is below the 90% target")
				if strings.Contains(r.stdout, "✅") || strings.Contains(r.stdout, "🎯") {
					t.Errorf("a failed run reported as a success:\n%s", r.stdout)
				}
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// Ctrl-C: the command's context ends, the call is cancelled, the exit status
// is non-zero, and the run (watched by nobody else) stops.
func TestWarmInterrupted(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(10)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- cli.Main(ctx, []string{"warm", "--addr", h.addr, "--batch-size", "1", "--batch-delay", "200ms"},
			cli.Env{Getenv: func(string) string { return "" }, Stdout: &stdout, Stderr: &stderr})
	}()
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(stdout.String(), "Progress: 1/10") {
			return errors.New("no progress yet: " + stdout.String())
		}
		return nil
	})
	cancel()
	select {
	case c := <-code:
		if c != 1 {
			t.Errorf("exit %d, want 1", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("warm did not return after its context was cancelled")
	}
	mustContain(t, "stderr", stderr.String(), "interrupted", h.addr, "Canceled")
	waitFor(t, 10*time.Second, func() error {
		st, err := h.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{})
		if err != nil {
			return err
		}
		if o := st.GetLastWarming().GetOutcome(); o != sessiondv1.WarmOutcome_WARM_OUTCOME_CANCELED {
			return fmt.Errorf("run outcome %v, want CANCELED", o)
		}
		return nil
	})
}

func waitFor(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	devtest.Eventually(t, within, f)
}

func TestStats(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	tokens := h.addActive(2)
	if r := runT(t, "warm", "--addr", h.addr, "--count", "1"); r.code != 0 {
		t.Fatalf("warm: exit %d: %s", r.code, r.stderr)
	}
	// Known traffic: the warmed session hits, the other misses, then hits.
	h.validate(tokens[0]) // hit (warmed)
	h.validate(tokens[1]) // miss
	h.validate(tokens[1]) // hit
	h.validate(tokens[1]) // hit

	t.Run("text", func(t *testing.T) {
		r := runT(t, "stats", "--addr", h.addr)
		if r.code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
		mustContain(t, "stdout", r.stdout,
			"📊 sessiond at "+h.addr+"\n",
			"   Enabled:           yes\n",
			"   Hit rate:          75%   ⚠️  warning: below 80%\n",
			"   Misses:            1\n",
			"   Errors:            0 (0% of answers)\n",
			"   Postgres lookups:  1 (in 1 query)\n", // the miss
			"   TTL:               5m0s\n",
			"   Default count:     1000\n",
			"   Batch size:        100\n",
			"   Batch delay:       50ms\n",
			"   Window:            24h\n",
			"   Max warming time:  5m0s\n",
			"   Total:             1\n   Warmed:            1\n   Failed:            0\n   Outcome:           COMPLETED\n   Error:             -\n",
		)
		if !regexp.MustCompile(`   Hits:              3 \(local \d / redis \d / negative 0\)\n`).MatchString(r.stdout) {
			t.Errorf("no hits line with 3 hits:\n%s", r.stdout)
		}
	})
	t.Run("json", func(t *testing.T) {
		r := runT(t, "stats", "--addr", h.addr, "--json")
		if r.code != 0 {
			t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
		if strings.Count(strings.TrimSpace(r.stdout), "\n") != 0 {
			t.Errorf("more than one line:\n%s", r.stdout)
		}
		var st sessiondv1.GetStatsResponse
		if err := protojson.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatal(err)
		}
		if c := st.GetCache(); c.GetHits() != 3 || c.GetMisses() != 1 || c.GetHitRate() != 75 || st.GetLastWarming().GetWarmed() != 1 {
			t.Errorf("stats %v", &st)
		}
	})
}

func TestStatsThresholds(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	tokens := h.addActive(3)
	for _, tok := range tokens {
		h.validate(tok) // three misses: 0%
	}
	r := runT(t, "stats", "--addr", h.addr)
	mustContain(t, "stdout", r.stdout, "   Hit rate:          0%   🚨 critical: below 50%\n", "   none since the server started\n")
}

// Errors that are the caller's or the network's, before any run.
func TestClientErrors(t *testing.T) {
	// A port that was listening and no longer is.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()

	for _, tt := range []struct {
		name     string
		env      map[string]string
		args     []string
		code     int
		stderr   []string
		noStdout bool
	}{
		{name: "warm: nobody listening", args: []string{"warm", "--addr", dead}, code: 1,
			stderr: []string{"sessiond warm: WarmCache on " + dead + " failed: Unavailable: "}},
		{name: "warm --json: nobody listening", args: []string{"warm", "--json", "--addr", dead}, code: 1, noStdout: true,
			stderr: []string{"WarmCache on " + dead + " failed: Unavailable: "}},
		{name: "stats: nobody listening", args: []string{"stats", "--addr", dead}, code: 1, noStdout: true,
			stderr: []string{"sessiond stats: GetStats on " + dead + " failed: Unavailable: "}},
		{name: "stats: address from SESSIOND_ADDR", env: map[string]string{"SESSIOND_ADDR": dead}, args: []string{"stats"}, code: 1,
			stderr: []string{"GetStats on " + dead + " failed: Unavailable"}},
		{name: "warm --help", args: []string{"warm", "--help"}, code: 0,
			stderr: []string{"Usage: sessiond warm [flags]", "-batch-delay", "-estimate", "[$SESSIOND_ADDR]", "(default \"localhost:50051\")"}},
		{name: "stats --help", args: []string{"stats", "-h"}, code: 0, stderr: []string{"Usage: sessiond stats [flags]", "-json"}},
		{name: "warm: unknown flag", args: []string{"warm", "--nope"}, code: 2, stderr: []string{"flag provided but not defined: -nope"}},
		{name: "stats: unknown flag", args: []string{"stats", "--count", "3"}, code: 2, stderr: []string{"flag provided but not defined: -count"}},
		{name: "warm: negative count", args: []string{"warm", "--count", "-1"}, code: 2, stderr: []string{"invalid --count ($SESSIOND_COUNT) -1"}},
		{name: "warm: negative batch delay", args: []string{"warm", "--batch-delay", "-1s"}, code: 2, stderr: []string{"-batch-delay", "must not be negative"}},
		{name: "warm: bad duration", args: []string{"warm", "--timeout", "soon"}, code: 2, stderr: []string{"-timeout"}},
		{name: "warm: bad env", env: map[string]string{"SESSIOND_COUNT": "many"}, args: []string{"warm"}, code: 2, stderr: []string{`invalid $SESSIOND_COUNT "many" (--count)`}},
		{name: "warm: stray argument", args: []string{"warm", "now"}, code: 2, stderr: []string{`unexpected argument "now"`}},
		{name: "stats: empty address", args: []string{"stats", "--addr", ""}, code: 2, stderr: []string{"invalid --addr ($SESSIOND_ADDR): required"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			r := run(ctx, tt.env, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tt.code, r.stdout, r.stderr)
			}
			mustContain(t, "stderr", r.stderr, tt.stderr...)
			if tt.noStdout && r.stdout != "" {
				t.Errorf("stdout: %q, want nothing", r.stdout)
			}
		})
	}
}
