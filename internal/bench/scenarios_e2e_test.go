package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// mainJSON runs sessionbench with args and decodes its --json output.
func mainJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	var out, errs bytes.Buffer
	if err := Main(t.Context(), append(args, "--json"), &out, &errs); err != nil {
		t.Fatalf("%s: %v\n%s", args[0], err, errs.String())
	}
	if err := json.Unmarshal(out.Bytes(), v); err != nil {
		t.Fatalf("%s --json: %v\n%s", args[0], err, out.String())
	}
}

// TestWarmEndToEnd: `sessionbench warm` on a tiny seed, on a single Redis
// and on a 3-master cluster that it starts: every warmable session warmed,
// memory measured, keys on every master.
func TestWarmEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a redis-server and a redis cluster")
	}
	var rep WarmReport
	mainJSON(t, &rep, "warm", "--database-url", devtest.Database(t), "--sessions", "2000")
	if !strings.HasPrefix(rep.Command, "sessionbench warm --database-url ") || rep.Seed.Sessions != 2000 {
		t.Errorf("command %q, seeded %d", rep.Command, rep.Seed.Sessions)
	}
	if len(rep.Results) != 2 || rep.Results[0].Engine != EngineSingle || rep.Results[1].Engine != EngineCluster {
		t.Fatalf("results %+v, want single then cluster", rep.Results)
	}
	for _, r := range rep.Results {
		// The default window covers every seeded session: all valid ones are warmable.
		if r.Warmed != rep.Seed.Valid || r.Found != r.Warmed || r.Failed != 0 || r.PerSecond <= 0 || r.BytesPerSession <= 0 {
			t.Errorf("%s: %+v, want all %d valid sessions warmed and measured", r.Engine, r, rep.Seed.Valid)
		}
		var keys int64
		for _, m := range r.Masters {
			keys += m.Keys
			if m.Keys == 0 {
				t.Errorf("%s: master %s holds no key", r.Engine, m.Addr)
			}
		}
		// The test's Postgres runs here: its processes' CPU is read.
		if r.PostgresCPUSeconds == nil || *r.PostgresCPUSeconds < 0 || r.WarmerCPUSeconds < 0 {
			t.Errorf("%s: CPU s Postgres %v, warmer %v; want both read", r.Engine, r.PostgresCPUSeconds, r.WarmerCPUSeconds)
		}
		if want := map[string]int{EngineSingle: 1, EngineCluster: 3}[r.Engine]; len(r.Masters) != want {
			t.Errorf("%s: %d masters, want %d", r.Engine, len(r.Masters), want)
		}
		if keys < int64(r.Warmed) {
			t.Errorf("%s: %d keys for %d warmed sessions", r.Engine, keys, r.Warmed)
		}
	}
}

// TestFloodEndToEnd: a small flood beside the trickle; every answer right,
// the never-seen tokens counted and each sent to Postgres.
func TestFloodEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts sessiond and runs two one-second loads")
	}
	var rep FloodReport
	mainJSON(t, &rep, "flood", "--database-url", devtest.Database(t), "--redis-url", devtest.RedisURL(t),
		"--sessions", "2000", "--rate", "1000", "--duration", "1s", "--trickle-rate", "100", "--senders", "16")
	if rep.Flood.Calls == 0 || rep.TrickleBefore.Calls == 0 || rep.TrickleDuring.Calls == 0 {
		t.Fatalf("nothing measured: %+v", rep)
	}
	for _, r := range []Result{rep.Flood, rep.TrickleBefore, rep.TrickleDuring} {
		if !r.Checked || r.Wrong != 0 || r.Service == nil {
			t.Errorf("%s: checked %v, %d wrong %q, service latency %v", r.Scenario, r.Checked, r.Wrong, r.WrongExamples, r.Service)
		}
	}
	if rep.Flood.Kinds["unknown"] != rep.Flood.Calls || rep.DistinctTokens != rep.Flood.Calls {
		t.Errorf("flood kinds %v, distinct tokens %d of %d calls", rep.Flood.Kinds, rep.DistinctTokens, rep.Flood.Calls)
	}
	if rep.Flood.Calls+rep.Flood.Unsent != 1000 {
		t.Errorf("%d sent + %d unsent, want the 1,000 scheduled", rep.Flood.Calls, rep.Flood.Unsent)
	}
	if rep.PostgresQueries < 1 || rep.QueriesPerToken <= 0 {
		t.Errorf("postgres queries %d (%v per token): a never-seen token must be asked of Postgres", rep.PostgresQueries, rep.QueriesPerToken)
	}
	if n := rep.TrickleDuring.Kinds["hot"]; n != rep.TrickleDuring.Calls {
		t.Errorf("trickle kinds %v", rep.TrickleDuring.Kinds)
	}
}

// TestColdStartEndToEnd: one cold start of sessiond as its own process (this
// test binary, run as sessiond by TestMain), loaded from SERVING on.
func TestColdStartEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts sessiond as a process and runs a one-second load")
	}
	var rep ColdStartReport
	mainJSON(t, &rep, "coldstart", "--database-url", devtest.Database(t), "--sessions", "2000", "--duration", "1s",
		"--concurrency", "4", "--runs", "1")
	if len(rep.Runs) != 1 {
		t.Fatalf("runs %+v", rep.Runs)
	}
	r := rep.Runs[0]
	if r.ToListeningMS <= 0 || r.ToServingMS < r.ToListeningMS || r.LoadAfterServingMS < 0 {
		t.Errorf("listening %v ms, serving %v ms, load %v ms after: want 0 < listening <= serving", r.ToListeningMS, r.ToServingMS, r.LoadAfterServingMS)
	}
	// The defaults warm up to 1,000 of the sessions active within 24 h.
	if w := r.Startup; !w.Complete || w.Warmed == 0 || w.Warmed > 1000 || w.Warmed+w.Kept != w.Found {
		t.Errorf("startup warm: %+v", w)
	}
	if r.Load.Calls == 0 || !r.Load.Checked || r.Load.Wrong != 0 || len(r.Load.Series) == 0 {
		t.Errorf("load: %d calls, %d wrong %q, series %v", r.Load.Calls, r.Load.Wrong, r.Load.WrongExamples, r.Load.Series)
	}
	if rep.Mix != "hot=0,zipf=1.1,unknown=0,invalid=0" {
		t.Errorf("mix %q", rep.Mix)
	}
}

func TestHelpScenarios(t *testing.T) {
	for _, cmd := range []string{"warm", "flood", "coldstart"} {
		var out, errs bytes.Buffer
		if err := Main(t.Context(), []string{cmd, "--help"}, &out, &errs); err == nil || !strings.Contains(errs.String(), "-sessions") {
			t.Errorf("%s --help: err %v, output %q", cmd, err, errs.String())
		}
	}
}
