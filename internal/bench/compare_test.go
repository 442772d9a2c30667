package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

func TestMain(m *testing.M) {
	RunSessiondChild() // TestColdStartEndToEnd starts this test binary as sessiond
	devtest.Main(m)
}

// TestCompareEndToEnd runs `sessionbench compare` with tiny settings against
// real Postgres and Redis: six scenarios, two modes each, no wrong answer.
func TestCompareEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and runs 8 one-second loads")
	}
	db, redis := devtest.Database(t), devtest.RedisURL(t)
	var out, errs bytes.Buffer
	err := Main(t.Context(), []string{"compare", "--database-url", db, "--redis-url", redis,
		"--sessions", "2000", "--duration", "1s", "--concurrency", "4", "--json"}, &out, &errs)
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
		if scenarios[s] != 2 {
			t.Errorf("scenario %q: %d results, want 2 (closed C=4 and C=1)", s, scenarios[s])
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
}

func TestHelp(t *testing.T) {
	for _, cmd := range []string{"seed", "load", "compare"} {
		var out, errs bytes.Buffer
		if err := Main(t.Context(), []string{cmd, "--help"}, &out, &errs); err == nil || !strings.Contains(errs.String(), "-duration") && cmd != "seed" {
			t.Errorf("%s --help: err %v, output %q", cmd, err, errs.String())
		}
	}
}
