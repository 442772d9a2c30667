package warm_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/schema"
	"github.com/sessiond/sessiond/internal/seed"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// BenchmarkWarm warms every warmable session of a seeded database (N from
// $WARM_BENCH_SESSIONS, default 100,000 seeded) into an empty Redis, with
// delay 0 and the batch size of $WARM_BENCH_BATCH (default 1,000), and
// reports sessions/s, Redis bytes per warmed session (used_memory delta) and
// the test process's peak RSS.
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
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := tiers.ConnectRedis(ctx, redisURL, tiers.RedisOptions{TTL: 5 * time.Minute, Fence: tiers.FenceOptions{TombstoneMargin: time.Second, Timeout: 5 * time.Second}}, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.Close)
	raw, err := rueidis.NewClient(rueidis.MustParseURL(redisURL))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(raw.Close)
	w := warm.New(ctx, pool, r, warm.Config{
		Count: n, BatchSize: batch, Window: 24 * time.Hour, Timeout: 5 * time.Minute, Storage: tiers.TokenStorageHash,
	}, log)

	var warmed int
	var took time.Duration
	var bytesPer float64
	for b.Loop() {
		for _, n := range raw.Nodes() {
			if err := n.Do(ctx, n.B().Flushall().Build()).Error(); err != nil {
				b.Fatal(err)
			}
		}
		before := usedMemory(ctx, b, raw)
		start := time.Now()
		run, _ := w.Start(warm.Request{}, true)
		<-run.Done()
		took = time.Since(start)
		p := run.Snapshot()
		if p.Outcome != warm.Completed || p.Failed > 0 {
			b.Fatalf("run: %+v", p)
		}
		warmed = p.Warmed
		bytesPer = float64(usedMemory(ctx, b, raw)-before) / float64(p.Warmed)
	}
	b.ReportMetric(float64(warmed), "sessions")
	b.ReportMetric(float64(warmed)/took.Seconds(), "sessions/s")
	b.ReportMetric(bytesPer, "redis-B/session")
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

// usedMemory is the sum of used_memory over every node (a cluster's
// masters).
func usedMemory(ctx context.Context, b *testing.B, c rueidis.Client) int64 {
	var total int64
	for addr, n := range c.Nodes() {
		info, err := n.Do(ctx, n.B().Info().Section("memory").Build()).ToString()
		if err != nil {
			b.Fatal(err)
		}
		found := false
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				m, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				total, found = total+m, true
			}
		}
		if !found {
			b.Fatalf("no used_memory in INFO of %s", addr)
		}
	}
	return total
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
