package warm_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/bench"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/seed"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// BenchmarkWarm warms every warmable session of a seeded database (N from
// $WARM_BENCH_SESSIONS, default 100,000 seeded) into an empty Redis, with
// delay 0 and the batch size of $WARM_BENCH_BATCH (default 1,000), and
// reports sessions/s, Redis bytes per warmed session (used_memory delta),
// the CPU seconds Redis, Postgres and the warmer (this process) spent, and
// the test process's peak RSS. The measurement is bench.MeasureWarm, the
// one `sessionbench warm` makes (which also seeds, and runs on a cluster).
//
//	WARM_BENCH_SESSIONS=1000000 go test -run '^$' -bench Warm -benchtime 1x ./internal/warm
func BenchmarkWarm(b *testing.B) {
	n := envInt(b, "WARM_BENCH_SESSIONS", 100_000)
	batch := envInt(b, "WARM_BENCH_BATCH", 1000)
	ctx := b.Context()
	pool, err := pgxpool.New(ctx, devtest.Database(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if err := schema.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	opts := seed.DefaultDemo()
	opts.Users, opts.Sessions = max(n/3, 1), n
	if _, err := seed.Load(ctx, pool, opts, func(seed.Truth) error { return nil }); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE platform.users, platform.user_sessions`); err != nil {
		b.Fatal(err)
	}
	redisURL := devtest.RedisURL(b)
	var res bench.WarmResult
	for b.Loop() {
		res, err = bench.MeasureWarm(ctx, pool, redisURL, bench.WarmOptions{
			Count: n, BatchSize: batch, Window: 24 * time.Hour, Flush: true,
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(res.Warmed), "sessions")
	b.ReportMetric(res.PerSecond, "sessions/s")
	b.ReportMetric(res.BytesPerSession, "redis-B/session")
	b.ReportMetric(res.RedisCPUSeconds, "redis-cpu-s")
	b.ReportMetric(res.WarmerCPUSeconds, "warmer-cpu-s")
	if res.PostgresCPUSeconds != nil {
		b.ReportMetric(*res.PostgresCPUSeconds, "postgres-cpu-s")
	}
	b.ReportMetric(peakRSSMiB(b), "peak-RSS-MiB")
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	return n
}

// peakRSSMiB is VmHWM of this process: sessiond's warming runs in it.
func peakRSSMiB(b *testing.B) float64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%f kB", &kb); err != nil {
				b.Fatal(err)
			}
			return kb / 1024
		}
	}
	return 0
}
