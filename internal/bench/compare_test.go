package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

func TestMain(m *testing.M) {
	RunSessiondChild() // TestColdStartEndToEnd starts this test binary as sessiond
	devtest.Main(m)
}

// TestCompareEndToEnd runs `sessionbench compare` with tiny settings against
// real Postgres and Redis: six scenarios, two modes each, two runs each, no
// wrong answer.
func TestCompareEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and runs 8 one-second loads")
	}
	db, redis := devtest.Database(t), devtest.RedisURL(t)
	var out, errs bytes.Buffer
	err := Main(t.Context(), []string{"compare", "--database-url", db, "--redis-url", redis,
		"--sessions", "2000", "--duration", "1s", "--concurrency", "4", "--runs", "2", "--json"}, &out, &errs)
	if err != nil {
		t.Fatalf("compare: %v\n%s", err, errs.String())
	}
	var rep CompareReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("compare --json: %v\n%s", err, out.String())
	}
	if rep.Seed.Sessions != 2000 {
		t.Errorf("seeded %d sessions, want 2000", rep.Seed.Sessions)
	}
	scenarios := map[string]int{}
	for _, r := range rep.Results {
		scenarios[r.Scenario]++
		if r.Checked && r.Wrong != 0 {
			t.Errorf("%s, %s: %d wrong answers: %q", r.Scenario, r.Mode, r.Wrong, r.WrongExamples)
		}
		if r.Calls == 0 || r.Throughput <= 0 || r.Latency.P50 <= 0 {
			t.Errorf("%s, %s: nothing measured: %+v", r.Scenario, r.Mode, r)
		}
		if r.Codes["OK"] == 0 || r.Codes["InvalidArgument"] == 0 && r.Scenario != ScenarioNoop {
			t.Errorf("%s, %s: codes %v", r.Scenario, r.Mode, r.Codes)
		}
	}
	for _, s := range []string{ScenarioSessiond, ScenarioSessiondTraced, ScenarioSessiondNoLoc, ScenarioDirectPostgres, ScenarioIdeal, ScenarioNoop} {
		if scenarios[s] != 4 {
			t.Errorf("scenario %q: %d results, want 4 (closed C=4 and C=1, two runs each)", s, scenarios[s])
		}
	}
	runs := map[int]int{}
	for _, r := range rep.Results {
		runs[r.Run]++
	}
	if rep.Runs != 2 || runs[1] != 12 || runs[2] != 12 {
		t.Errorf("runs %d, results per run %v, want 2 runs of 12", rep.Runs, runs)
	}
	if len(rep.Medians) != 12 {
		t.Errorf("%d medians, want one per scenario and mode (12)", len(rep.Medians))
	}
	for _, m := range rep.Medians {
		if m.Calls == 0 || m.Throughput <= 0 || m.Run != 0 {
			t.Errorf("median %s, %s: %+v", m.Scenario, m.Mode, m)
		}
	}
	if len(scenarios) != 6 {
		t.Errorf("scenarios %v, want 6", scenarios)
	}
	for _, r := range rep.Results {
		switch r.Scenario {
		case ScenarioSessiond, ScenarioSessiondTraced:
			if r.HitRate < 80 {
				t.Errorf("sessiond %s: hit rate %.1f%%, want most answers cached", r.Mode, r.HitRate)
			}
			if r.PostgresPer1000 == nil {
				t.Errorf("sessiond %s: no postgres count from GetStats", r.Mode)
			}
		case ScenarioIdeal:
			if r.HitRate != 100 || r.PostgresPer1000 == nil || *r.PostgresPer1000 != 0 {
				t.Errorf("ideal cache %s: hit rate %v, postgres/1k %v, want every answer from memory", r.Mode, r.HitRate, r.PostgresPer1000)
			}
		case ScenarioDirectPostgres:
			if r.HitRate != 0 || r.PostgresPer1000 == nil || *r.PostgresPer1000 < 950 {
				t.Errorf("direct postgres %s: hit rate %v, postgres/1k %v", r.Mode, r.HitRate, r.PostgresPer1000)
			}
		}
	}

	var md bytes.Buffer
	WriteCompare(&md, rep)
	for _, s := range Scenarios {
		if !strings.Contains(md.String(), "| "+s+" |") {
			t.Errorf("markdown table has no row for %q:\n%s", s, md.String())
		}
	}
	if !strings.Contains(md.String(), "command: `sessionbench compare --database-url") {
		t.Errorf("markdown has no command line:\n%s", md.String())
	}
	if n := strings.Count(md.String(), "tracing cost, "); n != 2 {
		t.Errorf("%d tracing cost lines, want one per mode:\n%s", n, md.String())
	}
	if !strings.Contains(md.String(), "runs: 2, interleaved") || !strings.Contains(md.String(), "| scenario | mode | run 1 | run 2 |") {
		t.Errorf("markdown does not show the runs:\n%s", md.String())
	}
}

// Medians: each figure is the median of its runs on its own, counts are
// summed, a wrong answer in any run shows, and pairs keep their order.
func TestMedians(t *testing.T) {
	pg := func(v float64) *float64 { return &v }
	r := func(sc, mode string, run int, tput, p50, p99 float64, wrong int, pg1k *float64) Result {
		return Result{Scenario: sc, Mode: mode, Run: run, Calls: 10, Seconds: 1, Throughput: tput,
			Latency: Latency{P50: p50, P99: p99}, Checked: true, Wrong: wrong, PostgresPer1000: pg1k,
			Codes: map[string]int{"OK": 10}}
	}
	tests := []struct {
		name string
		in   []Result
		want []Result
	}{
		{"odd runs", []Result{
			r("a", "C=1", 1, 100, 0.5, 9, 0, pg(3)),
			r("a", "C=1", 2, 300, 0.1, 1, 0, pg(1)),
			r("a", "C=1", 3, 200, 0.3, 5, 2, pg(2)),
		}, []Result{{Scenario: "a", Mode: "C=1", Calls: 30, Seconds: 3, Throughput: 200,
			Latency: Latency{P50: 0.3, P99: 5}, Checked: true, Wrong: 2, PostgresPer1000: pg(2)}}},
		{"even runs: mean of the middle two; a run without a postgres count leaves it unknown", []Result{
			r("a", "C=1", 1, 100, 0.2, 4, 0, pg(1)),
			r("a", "C=1", 2, 200, 0.4, 8, 0, nil),
		}, []Result{{Scenario: "a", Mode: "C=1", Calls: 20, Seconds: 2, Throughput: 150,
			Latency: Latency{P50: 0.3 /* (0.2+0.4)/2 */, P99: 6}, Checked: true}}},
		{"pairs in first-seen order", []Result{
			r("b", "C=32", 1, 10, 1, 1, 0, nil),
			r("a", "C=32", 1, 20, 1, 1, 0, nil),
			r("b", "C=32", 2, 30, 1, 1, 0, nil),
		}, []Result{
			{Scenario: "b", Mode: "C=32", Calls: 20, Seconds: 2, Throughput: 20, Latency: Latency{P50: 1, P99: 1}, Checked: true},
			{Scenario: "a", Mode: "C=32", Calls: 10, Seconds: 1, Throughput: 20, Latency: Latency{P50: 1, P99: 1}, Checked: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Medians(tt.in)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d results, want %d: %+v", len(got), len(tt.want), got)
			}
			for i, w := range tt.want {
				g := got[i]
				if g.Scenario != w.Scenario || g.Mode != w.Mode || g.Calls != w.Calls || g.Seconds != w.Seconds ||
					g.Throughput != w.Throughput || math.Abs(g.Latency.P50-w.Latency.P50) > 1e-9 || g.Latency.P99 != w.Latency.P99 ||
					g.Wrong != w.Wrong || g.Checked != w.Checked || g.Codes["OK"] != g.Calls {
					t.Errorf("result %d: got %+v, want %+v", i, g, w)
				}
				if (g.PostgresPer1000 == nil) != (w.PostgresPer1000 == nil) || g.PostgresPer1000 != nil && *g.PostgresPer1000 != *w.PostgresPer1000 {
					t.Errorf("result %d: postgres/1k %v, want %v", i, g.PostgresPer1000, w.PostgresPer1000)
				}
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, cmd := range []string{"seed", "load", "compare"} {
		var out, errs bytes.Buffer
		if err := Main(t.Context(), []string{cmd, "--help"}, &out, &errs); err == nil || !strings.Contains(errs.String(), "-duration") && cmd != "seed" {
			t.Errorf("%s --help: err %v, output %q", cmd, err, errs.String())
		}
	}
}

// profiled writes one CPU profile per measurement, named for it, and
// nothing when no directory is given.
func TestProfiled(t *testing.T) {
	dir := t.TempDir()
	res, err := profiled(dir, "sessiond, no local cache-closed C=32-run1", func() (Result, error) { return Result{Calls: 7}, nil })
	if err != nil || res.Calls != 7 {
		t.Fatalf("%+v, %v", res, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "sessiond__no_local_cache-closed_C_32-run1.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) { // a profile is gzipped protobuf
		t.Errorf("not a profile: %d bytes starting %x", len(b), b[:min(len(b), 4)])
	}
	if _, err := profiled("", "x", func() (Result, error) { return Result{}, nil }); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files, want 1", len(entries))
	}
}
