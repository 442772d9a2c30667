package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// WarmOptions says how MeasureWarm warms.
type WarmOptions struct {
	Count     int           // sessions to warm at most, most recently active first
	BatchSize int           // sessions per Redis batch
	Delay     time.Duration // pause between batches
	Window    time.Duration // warm sessions active within it
	// Flush empties the URL's database on every master first (FLUSHDB):
	// only for a Redis this process started. Without it, every master must
	// already be empty, so that the memory measured is the warm's alone.
	Flush bool
	Log   *slog.Logger // the warmer's log; nil: discarded
}

// MasterStat is one Redis master after a warm.
type MasterStat struct {
	Addr            string `json:"addr"`
	Keys            int64  `json:"keys"`              // DBSIZE
	UsedMemoryDelta int64  `json:"used_memory_delta"` // bytes
}

// WarmResult is what one warm measured.
type WarmResult struct {
	Engine    string  `json:"engine"` // "single", "cluster" or a URL given by the caller
	Found     int     `json:"found"`  // warmable sessions the warm found
	Warmed    int     `json:"warmed"`
	Failed    int     `json:"failed"`
	Skipped   int     `json:"skipped"`
	Seconds   float64 `json:"seconds"`    // from the start of the run to its end, Postgres reading included
	PerSecond float64 `json:"per_second"` // warmed sessions per second
	// RedisBytes is the growth of used_memory summed over every master;
	// BytesPerSession divides it by Warmed: entries and everything kept
	// beside them (tombstones, generation), as a production Redis holds them.
	RedisBytes      int64        `json:"redis_bytes"`
	BytesPerSession float64      `json:"bytes_per_session"`
	Masters         []MasterStat `json:"masters"` // by address
	// RedisCPUSeconds is the CPU time (user+sys) every master spent during
	// the run, summed: beside Seconds it says whether Redis was the limit.
	RedisCPUSeconds float64 `json:"redis_cpu_seconds"`
	// PostgresCPUSeconds is what the Postgres server's processes spent
	// (see postgresCPU); nil when Postgres does not run on this machine.
	PostgresCPUSeconds *float64 `json:"postgres_cpu_seconds,omitempty"`
	// WarmerCPUSeconds is what this process spent: sessiond's warm code
	// reading the rows, encoding the entries and writing them. With the
	// other two it says where the run's time went: on a machine with
	// fewer cores than the three processes keep busy, their sum over
	// Seconds is how many cores the run had.
	WarmerCPUSeconds float64 `json:"warmer_cpu_seconds"`
}

// MeasureWarm warms the sessions of the database behind pool into the
// Redis (single, Sentinel or Cluster) at redisURL through sessiond's own
// warm package and tiers.ConnectRedis, as `sessiond serve` does at start,
// and measures the run: sessions/s, and Redis memory per warmed session
// (used_memory before and after, summed over every master). It fails when
// the run does not complete or a session fails to be written.
func MeasureWarm(ctx context.Context, pool *pgxpool.Pool, redisURL string, o WarmOptions) (WarmResult, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opt, err := rueidis.ParseURL(redisURL)
	if err != nil {
		return WarmResult{}, fmt.Errorf("invalid redis url: %w", err)
	}
	opt.DisableCache = true
	raw, err := rueidis.NewClient(opt)
	if err != nil {
		return WarmResult{}, fmt.Errorf("connect to redis: %w", err)
	}
	defer raw.Close()
	if o.Flush {
		for addr, n := range raw.Nodes() {
			if err := n.Do(ctx, n.B().Flushdb().Build()).Error(); err != nil {
				return WarmResult{}, fmt.Errorf("flushdb on %s: %w", addr, err)
			}
		}
	}
	before, err := masterStats(ctx, raw)
	if err != nil {
		return WarmResult{}, err
	}
	for _, m := range before {
		if m.keys != 0 {
			return WarmResult{}, fmt.Errorf("redis master %s holds %d keys: measure on an empty Redis", m.addr, m.keys)
		}
	}

	cfg := config.Default()
	r, err := tiers.ConnectRedis(ctx, redisURL, tiers.RedisOptions{
		TTL:   cfg.CacheTTL,
		Fence: tiers.FenceOptions{TombstoneMargin: time.Second, Timeout: 5 * time.Second},
	}, log)
	if err != nil {
		return WarmResult{}, err
	}
	defer r.Close()
	w := warm.New(ctx, pool, r, warm.Config{
		Count: o.Count, BatchSize: o.BatchSize, BatchDelay: o.Delay, Window: o.Window,
		Timeout: 30 * time.Minute, Storage: tiers.TokenStorageHash,
	}, log)
	pgBefore, pgLocal, err := postgresCPU(ctx, pool)
	if err != nil {
		return WarmResult{}, err
	}
	ownBefore, err := processCPU()
	if err != nil {
		return WarmResult{}, err
	}
	start := time.Now()
	run, _ := w.Start(warm.Request{}, true)
	select {
	case <-run.Done():
	case <-ctx.Done():
		return WarmResult{}, ctx.Err()
	}
	took := time.Since(start)
	ownAfter, err := processCPU()
	if err != nil {
		return WarmResult{}, err
	}
	p := run.Snapshot()
	res := WarmResult{Found: p.Total, Warmed: p.Warmed, Failed: p.Failed, Skipped: p.Skipped, Seconds: took.Seconds(),
		WarmerCPUSeconds: ownAfter - ownBefore}
	if pgLocal {
		pgAfter, ok, err := postgresCPU(ctx, pool)
		if err != nil {
			return res, err
		}
		if ok {
			spent := cpuSpent(pgBefore, pgAfter)
			res.PostgresCPUSeconds = &spent
		}
	}
	if p.Outcome != warm.Completed || p.Failed > 0 {
		return res, fmt.Errorf("warm %s: %d warmed, %d failed of %d: %w", p.Outcome, p.Warmed, p.Failed, p.Total, p.Err)
	}
	after, err := masterStats(ctx, raw)
	if err != nil {
		return res, err
	}
	res.PerSecond = float64(p.Warmed) / took.Seconds()
	for _, addr := range slices.Sorted(maps.Keys(after)) {
		a := after[addr]
		d := a.usedMemory - before[addr].usedMemory
		res.RedisBytes += d
		res.Masters = append(res.Masters, MasterStat{Addr: addr, Keys: a.keys, UsedMemoryDelta: d})
		res.RedisCPUSeconds += a.cpu - before[addr].cpu
	}
	if p.Warmed > 0 {
		res.BytesPerSession = float64(res.RedisBytes) / float64(p.Warmed)
	}
	return res, nil
}

type nodeStat struct {
	addr       string
	usedMemory int64
	keys       int64
	cpu        float64 // used_cpu_sys + used_cpu_user, seconds
}

// masterStats reads used_memory and DBSIZE of every master the client
// knows (a replica's copy is not counted).
func masterStats(ctx context.Context, c rueidis.Client) (map[string]nodeStat, error) {
	out := map[string]nodeStat{}
	for addr, n := range c.Nodes() {
		info, err := n.Do(ctx, n.B().Info().Section("memory", "replication", "cpu").Build()).ToString()
		if err != nil {
			return nil, fmt.Errorf("INFO on %s: %w", addr, err)
		}
		fields := parseInfo(info)
		if fields["role"] != "master" {
			continue
		}
		mem, err := strconv.ParseInt(fields["used_memory"], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("INFO on %s: used_memory %q: %w", addr, fields["used_memory"], err)
		}
		keys, err := n.Do(ctx, n.B().Dbsize().Build()).AsInt64()
		if err != nil {
			return nil, fmt.Errorf("DBSIZE on %s: %w", addr, err)
		}
		var cpu float64
		for _, f := range []string{"used_cpu_sys", "used_cpu_user"} {
			v, err := strconv.ParseFloat(fields[f], 64)
			if err != nil {
				return nil, fmt.Errorf("INFO on %s: %s %q: %w", addr, f, fields[f], err)
			}
			cpu += v
		}
		out[addr] = nodeStat{addr: addr, usedMemory: mem, keys: keys, cpu: cpu}
	}
	if len(out) == 0 {
		return nil, errors.New("no redis master found")
	}
	return out, nil
}

// parseInfo reads INFO's "field:value" lines (sections and comments
// skipped). Over RESP3 the reply may be a verbatim string prefixed "txt:".
func parseInfo(s string) map[string]string {
	out := map[string]string{}
	for line := range strings.Lines(strings.TrimPrefix(s, "txt:")) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out
}
