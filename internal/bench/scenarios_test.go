package bench

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/seed"
	"github.com/sessiond/sessiond/internal/tiers"
)

func TestCommandLine(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "sessionbench"},
		{[]string{"warm", "--sessions", "1000000"}, "sessionbench warm --sessions 1000000"},
		{[]string{"compare", "--mix", "hot=1,zipf=0", "--rate=500"}, "sessionbench compare --mix hot=1,zipf=0 --rate=500"},
		{[]string{"flood", "--database-url", "postgres://u@h:5432/db?sslmode=disable&x=1"}, "sessionbench flood --database-url 'postgres://u@h:5432/db?sslmode=disable&x=1'"},
		{[]string{"coldstart", "--sessiond", ""}, "sessionbench coldstart --sessiond ''"},
		{[]string{"a b", "it's"}, `sessionbench 'a b' 'it'\''s'`},
	} {
		if got := commandLine(c.args); got != c.want {
			t.Errorf("commandLine(%q) = %s, want %s", c.args, got, c.want)
		}
	}
}

func TestParseEngines(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
		err  string
	}{
		{"single,cluster", []string{"single", "cluster"}, ""},
		{" cluster ", []string{"cluster"}, ""},
		{"single", []string{"single"}, ""},
		{"sentinel", nil, `"sentinel" is not single or cluster`},
		{"single,single", nil, "single given twice"},
		{"", nil, `"" is not`},
	} {
		got, err := parseEngines(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("parseEngines(%q): err %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("parseEngines(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestParseInfo(t *testing.T) {
	info := "# Memory\r\nused_memory:1234567\r\nused_memory_human:1.18M\r\n\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"
	for _, s := range []string{info, "txt:" + info} {
		f := parseInfo(s)
		if f["used_memory"] != "1234567" || f["role"] != "master" || f["used_memory_human"] != "1.18M" || len(f) != 4 {
			t.Errorf("parseInfo: %v", f)
		}
	}
}

func TestPercentile50(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1}, 1}, {[]float64{80, 95, 90}, 90}, {[]float64{4, 1, 3, 2}, 2}} {
		in := append([]float64(nil), c.in...)
		if got := percentile50(c.in); got != c.want {
			t.Errorf("percentile50(%v) = %v, want %v", c.in, got, c.want)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Errorf("percentile50 reordered its input: %v", c.in)
			}
		}
	}
}

// TestLogWatch feeds the lines sessiond logs at start (JSON, as serve writes
// them by default).
func TestLogWatch(t *testing.T) {
	var l logWatch
	lines := []string{
		`{"time":"2026-01-01T00:00:00Z","level":"WARN","msg":"no --admin-token: WarmCache, InvalidateSessions and GetStats are open to every caller"}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"sessiond serving","addr":"127.0.0.1:40213"}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"[CacheWarming] Found 1000 active sessions to warm","run_id":"ab","phase":"startup","total":1000}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"[CacheWarming] Completed in 495ms - Warmed: 998/1000 (99.80% estimated hit rate) - Failed: 0","run_id":"ab","phase":"startup","duration_ms":495,"warmed":998,"total":1000,"failed":0,"kept":2}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"[CacheWarming] Completed in 7ms - Warmed: 5/5 (100.00% estimated hit rate) - Failed: 0","phase":"startup","duration_ms":7,"warmed":5,"total":5}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"[CacheWarming] Completed in 4000ms - Warmed: 30000/31000 (100.00% estimated hit rate) - Failed: 0","phase":"background","duration_ms":4000,"warmed":30000,"kept":1000,"total":31000}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"[CacheWarming] Progress: 200/30000 (0%) - Failed: 0","phase":"rewarm","done":200,"total":30000,"failed":0}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"[CacheWarming] Progress: 400/30000 (1%) - Failed: 0","phase":"rewarm","done":400,"total":30000,"failed":0}`,
		`not json at all`,
	}
	serving := time.Now()
	var addrs []string
	for _, line := range lines {
		if a, ok := l.line([]byte(line)); ok {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) != 1 || addrs[0] != "127.0.0.1:40213" {
		t.Errorf("addresses %q, want the one serving line's", addrs)
	}
	st := l.phase(phaseStartup, serving)
	if !st.Complete || st.Warmed != 998 || st.Kept != 2 || st.Found != 1000 || st.MS != 495 || st.DoneAfterServingMS < 0 {
		t.Errorf("startup warm %+v, want the first completed startup run's", st)
	}
	if bg := l.phase(phaseBackground, serving); !bg.Complete || bg.Warmed != 30000 || bg.Kept != 1000 || bg.Found != 31000 || bg.MS != 4000 {
		t.Errorf("background warm %+v", bg)
	}
	if rw := l.phase("rewarm", serving); rw.Complete || rw.Done != 400 || rw.Found != 30000 {
		t.Errorf("rewarm %+v: want not complete, 400 of 30000 done", rw)
	}
	if got := fmtWarmPhase(l.phase("rewarm", serving), true); got != "not completed: 400 of 30000 when the load ended" {
		t.Errorf("fmtWarmPhase = %q", got)
	}
	if got := fmtWarmPhase(l.phase("none", serving), true); got != "not completed, no progress logged" {
		t.Errorf("fmtWarmPhase = %q", got)
	}
	var old logWatch // a sessiond that logs no phase
	old.line([]byte(`{"msg":"[CacheWarming] Completed in 5ms - Warmed: 3/3","duration_ms":5,"warmed":3,"total":3}`))
	if w := old.phase(phaseStartup, serving); !w.Complete || w.Warmed != 3 {
		t.Errorf("a run without a phase: %+v, want it taken as the startup run", w)
	}
	if !strings.HasSuffix(l.tail(), "not json at all") {
		t.Errorf("tail %q", l.tail())
	}
	for range 2 * logTailLines {
		l.line([]byte("x"))
	}
	if n := strings.Count(l.tail(), "\n") + 1; n != logTailLines {
		t.Errorf("tail holds %d lines, want %d", n, logTailLines)
	}
}

// TestIdealServer answers as sessiond would: the rule at call time, the
// session only when valid, INVALID_ARGUMENT for a malformed token, and
// Check agrees with every answer.
func TestIdealServer(t *testing.T) {
	now := time.Now()
	past, future := now.Add(-time.Hour), now.Add(time.Hour)
	recs := map[string]*tiers.Record{
		"valid":   {ID: "s1", UserID: "u1", ExpiresAt: future, Email: "a@b"},
		"expired": {ID: "s2", UserID: "u1", ExpiresAt: past, Email: "a@b"},
		"banned":  {ID: "s3", UserID: "u2", ExpiresAt: future, BannedUntil: &future},
		"lapsed":  {ID: "s4", UserID: "u3", ExpiresAt: future, BannedUntil: &past},
		"deleted": {ID: "s5", UserID: "u4", ExpiresAt: future, DeletedAt: &past},
	}
	truth := map[string]seed.Truth{
		"valid":   {SessionID: "s1", UserID: "u1", Valid: true},
		"expired": {SessionID: "s2", UserID: "u1", Reason: seed.ReasonExpired},
		"banned":  {SessionID: "s3", UserID: "u2", Reason: seed.ReasonUserBanned},
		"lapsed":  {SessionID: "s4", UserID: "u3", Valid: true},
		"deleted": {SessionID: "s5", UserID: "u4", Reason: seed.ReasonUserDeleted},
	}
	s := &idealServer{sessions: map[[sha256.Size]byte]*tiers.Record{}}
	for tok, r := range recs {
		s.sessions[sha256.Sum256([]byte(tok))] = r
	}
	for tok, tr := range truth {
		resp, err := s.ValidateSession(t.Context(), &sessiondv1.ValidateSessionRequest{Token: tok})
		tr.Token = tok
		if v, why := Check(Call{Token: tok, Kind: KindHot, Truth: &tr}, resp, err); v != Right {
			t.Errorf("%s: %s (err %v)", tok, why, err)
		}
		if err == nil && resp.GetSource() != sessiondv1.Source_SOURCE_LOCAL {
			t.Errorf("%s: source %v", tok, resp.GetSource())
		}
	}
	resp, err := s.ValidateSession(t.Context(), &sessiondv1.ValidateSessionRequest{Token: "unknown"})
	if v, why := Check(Call{Token: "unknown", Kind: KindUnknown}, resp, err); v != Right {
		t.Errorf("unknown: %s", why)
	}
	if _, err := s.ValidateSession(t.Context(), &sessiondv1.ValidateSessionRequest{Token: "bad\ntoken"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("malformed: %v", err)
	}
}

// TestReports renders each new report and checks that the command line and
// the figures are there.
func TestReports(t *testing.T) {
	var b bytes.Buffer
	WriteWarm(&b, WarmReport{Command: "sessionbench warm --sessions 10", Results: []WarmResult{
		{Engine: "cluster", Found: 9, Warmed: 9, Seconds: 0.5, PerSecond: 18, BytesPerSession: 387.4, RedisCPUSeconds: 0.25,
			PostgresCPUSeconds: new(0.1), WarmerCPUSeconds: 0.4, Masters: []MasterStat{{Keys: 3}, {Keys: 2}, {Keys: 4}}},
		{Engine: "given", Found: 9, Warmed: 9, Seconds: 0.5, PerSecond: 18, BytesPerSession: 345, RedisCPUSeconds: 0.2,
			WarmerCPUSeconds: 0.3, Masters: []MasterStat{{Keys: 9}}},
	}})
	for _, want := range []string{
		"command: `sessionbench warm --sessions 10`",
		"| cluster | 9 | 9 | 0.50 | 18 | 387 | 0.25 / 0.10 / 0.40 | 3 / 2 / 4 |",
		"| given | 9 | 9 | 0.50 | 18 | 345 | 0.20 / ? / 0.30 | 9 |", // Postgres on another machine
		"≤ 400 B/session",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("warm report lacks %q:\n%s", want, b.String())
		}
	}

	b.Reset()
	run := func(hits ...float64) ColdRun {
		r := ColdRun{ToListeningMS: 50, ToServingMS: 500, Startup: WarmPhase{Complete: true, Warmed: 1000, Found: 1000, MS: 450}}
		for i, h := range hits {
			if h >= 0 {
				r.Load.Series = append(r.Load.Series, Second{T: i, HitRate: h, P99: h / 10})
			}
		}
		r.Load.Checked, r.Load.HitRate = true, 80
		return r
	}
	WriteColdStart(&b, ColdStartReport{Command: "sessionbench coldstart", Runs: []ColdRun{run(70, 80), run(60, -1, 90), run(75, 85)}})
	for _, want := range []string{
		"| 1 | 50 | 500 | 1000 warmed of 1000 in 450 ms | not completed, no progress logged |",
		"| median | 50 | 500 | | | | | 80.0 % | |",
		"| 0 | 70.0 | 60.0 | 75.0 | 70.0 | 7.0 | 6.0 | 7.5 | 7.0 |",
		"| 1 | 80.0 |  | 85.0 | 80.0 | 8.0 |  | 8.5 | 8.0 |", // run 2 had no call in second 1
		"| 2 |  | 90.0 |  | 90.0 |  | 9.0 |  | 9.0 |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("cold start report lacks %q:\n%s", want, b.String())
		}
	}

	b.Reset()
	WriteFlood(&b, FloodReport{Command: "sessionbench flood", OfferedRate: 50000, PostgresQueries: 900, DistinctTokens: 1000, QueriesPerToken: 0.9, RoundTrips: 300,
		Flood:         Result{Mode: "open R=50000/s", Calls: 1000, Unsent: 49000, Checked: true, Service: &Latency{P99: 2}},
		TrickleBefore: Result{Scenario: "trickle, before", Checked: true},
		TrickleDuring: Result{Scenario: "trickle, during", Checked: true, Service: &Latency{P50: 1, P99: 3}}})
	for _, want := range []string{"| postgres lookups per distinct token | 0.900 (900 lookups, 1000 tokens) |", "| postgres queries those lookups took | 300 (3.00 lookups per query) |", "| sent / not sent in time | 1000 / 49000", "| trickle, during |", "1.000 / 3.000"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("flood report lacks %q:\n%s", want, b.String())
		}
	}
}

func TestParseScenarios(t *testing.T) {
	if got, err := parseScenarios(""); got != nil || err != nil {
		t.Errorf(`parseScenarios("") = %q, %v; want all`, got, err)
	}
	got, err := parseScenarios("ideal cache, no-op gRPC,ideal cache")
	if err != nil || strings.Join(got, "|") != "ideal cache|no-op gRPC" {
		t.Errorf("parseScenarios = %q, %v", got, err)
	}
	if _, err := parseScenarios("sessiond,redis"); err == nil || !strings.Contains(err.Error(), `"redis" is not one of`) {
		t.Errorf("unknown scenario: %v", err)
	}
}
