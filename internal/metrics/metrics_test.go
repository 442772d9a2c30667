package metrics

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/sessiond/sessiond/internal/activity"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// fakeSource returns fixed readings.
type fakeSource struct {
	c     tiers.Counters
	warm  warm.Totals
	last  warm.Progress
	act   activity.Stats
	ready bool
}

func (f *fakeSource) Answers() *tiers.Counters { return &f.c }
func (f *fakeSource) Invalidations() int64     { return 3 }
func (f *fakeSource) Notifications() int64     { return 4 }
func (f *fakeSource) Resyncs() int64           { return 1 }
func (f *fakeSource) Fence() *tiers.Fence {
	return tiers.NewRedis(nil, tiers.RedisOptions{}, slog.Default()).Fence()
}
func (f *fakeSource) Heartbeats() int64               { return 5 }
func (f *fakeSource) WarmTotals() warm.Totals         { return f.warm }
func (f *fakeSource) LastWarm() (warm.Progress, bool) { return f.last, !f.last.StartedAt.IsZero() }
func (f *fakeSource) Activity() activity.Stats        { return f.act }
func (f *fakeSource) Pool() PoolStat                  { return fakePool{} }
func (f *fakeSource) PoolPending() int32              { return 2 }
func (f *fakeSource) LookupQueries() int64            { return 6 }
func (f *fakeSource) SlowLookupQueries() int64        { return 1 }
func (f *fakeSource) Ready() bool                     { return f.ready }
func (f *fakeSource) RedisUp() bool                   { return true }

type fakePool struct{}

func (fakePool) IdleConns() int32               { return 3 }
func (fakePool) AcquiredConns() int32           { return 1 }
func (fakePool) ConstructingConns() int32       { return 0 }
func (fakePool) MaxConns() int32                { return 8 }
func (fakePool) AcquireCount() int64            { return 100 }
func (fakePool) EmptyAcquireCount() int64       { return 2 }
func (fakePool) CanceledAcquireCount() int64    { return 0 }
func (fakePool) NewConnsCount() int64           { return 4 }
func (fakePool) AcquireDuration() time.Duration { return 1500 * time.Microsecond }

func TestRegister(t *testing.T) {
	src := &fakeSource{ready: true, act: activity.Stats{Written: 7, Pending: 5}}
	src.c.LocalHits.Store(90)
	src.c.NegativeHits.Store(5)
	src.c.Misses.Store(5)
	src.c.Errors.Store(2)
	src.warm.Runs[warm.Completed] = 1
	src.warm.Warmed = 1000
	src.last = warm.Progress{StartedAt: time.Now(), Done: true, Elapsed: 1500 * time.Millisecond}

	reg := prometheus.NewRegistry()
	if err := Register(reg, src); err != nil {
		t.Fatal(err)
	}
	if _, err := NewLatency(reg); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	for name, want := range map[string]float64{
		"sessiond_cache_hit_ratio":                          0.95,
		"sessiond_redis_errors_total":                       2,
		"sessiond_ready":                                    1,
		"sessiond_redis_up":                                 1,
		"sessiond_invalidation_resyncs_total":               1,
		"sessiond_warm_last_run_duration_seconds":           1.5,
		"sessiond_warm_running":                             0,
		"sessiond_activity_written_total":                   7,
		"sessiond_activity_pending":                         5,
		"sessiond_postgres_pool_pending":                    2,
		"sessiond_postgres_lookup_queries_total":            6,
		"sessiond_postgres_lookup_slow_queries_total":       1,
		"sessiond_invalidation_notifications_total":         4,
		"sessiond_postgres_pool_max_connections":            8,
		"sessiond_postgres_pool_acquire_wait_seconds_total": 0.0015,
	} {
		if got := gathered(t, reg, name, nil); got != want {
			t.Errorf("%s = %g, want %g", name, got, want)
		}
	}
	if got := gathered(t, reg, "sessiond_validations_total", map[string]string{"result": "not_found", "source": "negative"}); got != 5 {
		t.Errorf("negative validations = %g, want 5", got)
	}
	if got := gathered(t, reg, "sessiond_warm_runs_total", map[string]string{"outcome": "completed"}); got != 1 {
		t.Errorf("completed runs = %g, want 1", got)
	}
	if got := gathered(t, reg, "sessiond_warm_sessions_total", map[string]string{"result": "warmed"}); got != 1000 {
		t.Errorf("warmed sessions = %g, want 1000", got)
	}
}

// Label names come from a short fixed list: none can carry a token, a hash,
// a session or a user.
func TestLabelNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := Register(reg, &fakeSource{}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewLatency(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"result": true, "source": true, "outcome": true, "state": true, "op": true, "le": true}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), Namespace+"_") {
			t.Errorf("%s lacks the %s_ prefix", mf.GetName(), Namespace)
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !allowed[l.GetName()] {
					t.Errorf("%s has label %q", mf.GetName(), l.GetName())
				}
			}
		}
	}
}

// gathered is the value of the one series of name whose labels include want.
func gathered(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	list, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	mfs := map[string]*dto.MetricFamily{}
	for _, mf := range list {
		mfs[mf.GetName()] = mf
	}
	var kv []string
	for k, v := range want {
		kv = append(kv, k, v)
	}
	v := devtest.MetricValue(mfs, name, kv...)
	if v == -1 {
		t.Fatalf("no series %s%v", name, want)
	}
	return v
}
