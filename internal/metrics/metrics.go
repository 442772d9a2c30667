// Package metrics defines sessiond's own Prometheus metrics, the sessiond_
// ones. Counters and gauges are read at scrape time from the counters the
// code keeps anyway (NewCounterFunc, NewGaugeFunc over a Source), so an
// answer costs nothing more for being measured; only the Redis and Postgres
// call latencies are observed as the calls end (Latency).
//
// No label carries a token, a token hash, a session id or a user id: every
// label value comes from a short fixed list written here.
package metrics

import (
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessiond/sessiond/internal/activity"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// Namespace prefixes every metric defined here.
const Namespace = "sessiond"

// Source is what the metrics are read from at each scrape. Every method
// must be cheap and safe for concurrent use.
type Source interface {
	Answers() *tiers.Counters        // the read-through's running totals
	Invalidations() int64            // cache entries dropped by invalidations
	Notifications() int64            // trigger notifications handled
	Resyncs() int64                  // times everything cached was dropped (generation bumps)
	WarmTotals() warm.Totals         // every warming run since start
	LastWarm() (warm.Progress, bool) // the latest run, false when none
	Activity() activity.Stats        // the last_activity_at write-behind
	Pool() PoolStat                  // the Postgres pool now
	PoolPending() int32              // callers acquiring a Postgres connection now
	LookupQueries() int64            // queries the session lookups took (they may share one)
	SlowLookupQueries() int64        // of those, the ones that gave up their place (see tiers.PostgresOptions)
	Ready() bool                     // health is SERVING
	RedisUp() bool                   // Redis answers a PING now (bounded by --redis-timeout)
	Fence() *tiers.Fence             // the revocation fence: what the cache may be believed for
	Heartbeats() int64               // listener heartbeats heard
}

// PoolStat is what the metrics read of a Postgres pool (*pgxpool.Stat).
type PoolStat interface {
	IdleConns() int32
	AcquiredConns() int32
	ConstructingConns() int32
	MaxConns() int32
	AcquireCount() int64
	EmptyAcquireCount() int64
	CanceledAcquireCount() int64
	NewConnsCount() int64
	AcquireDuration() time.Duration
}

var _ PoolStat = (*pgxpool.Stat)(nil)

// Register registers sessiond's metrics, read from src, on reg. Adding one is
// one line here.
func Register(reg prometheus.Registerer, src Source) error {
	m := &set{reg: reg}
	c := src.Answers()

	const validations = "Validations answered, by result (valid or the reason it is not) and source (local: process memory, redis, postgres, negative: a cached \"no such session\")."
	for _, r := range tiers.Reasons {
		for _, s := range tiers.Sources {
			m.counter("validations_total", validations, func() int64 { return c.Answered(r, s) }, "result", r.String(), "source", s.String())
		}
	}
	m.counter("validations_total", validations, c.NegativeHits.Load, "result", tiers.ReasonNotFound.String(), "source", "negative")
	m.gauge("cache_hit_ratio", "Share of validations answered from the cache (local, redis or negative) since start, 0 to 1.", func() float64 { return hitRatio(c) })
	m.counter("redis_errors_total", "Redis calls of the read-through that failed or timed out; each read was answered from Postgres.", c.Errors.Load)
	m.counter("postgres_reads_total", "Session lookups sent to Postgres (concurrent misses for one token share one).", c.PostgresReads.Load)
	m.counter("postgres_lookup_queries_total", "Queries the session lookups took: lookups that arrive while --lookup-queries are under way share the next one.", src.LookupQueries)
	m.counter("postgres_lookup_slow_queries_total", "Lookup queries still under way after 25 ms, whose place went to the lookups waiting (a stalled connection, a pool emptied by others).", src.SlowLookupQueries)
	m.gauge("redis_up", "1 when Redis answers a PING within --redis-timeout at scrape time, else 0.", boolGauge(src.RedisUp))
	m.gauge("ready", "1 when health is SERVING (startup warm ended, not shutting down), else 0.", boolGauge(src.Ready))

	m.counter("invalidations_total", "Cache entries dropped because a session or user changed.", src.Invalidations)
	m.counter("invalidation_notifications_total", "Change notifications from the database triggers handled.", src.Notifications)
	m.counter("invalidation_resyncs_total", "Generation bumps: every cached entry disbelieved at once (Redis lost data, a drop could not reach Redis, a TRUNCATE, or nobody listened for a while).", src.Resyncs)
	f := src.Fence()
	m.gauge("cache_trusted", "1 while the fence lets the cache be believed, else 0 (every answer comes from Postgres).", boolGauge(f.Trusted))
	for _, st := range []tiers.ListenerState{tiers.ListenerOff, tiers.ListenerLost, tiers.ListenerCovering, tiers.ListenerPostgresDown} {
		m.gauge("invalidation_listener_state", "1 for the invalidation listener's current state.", boolGauge(func() bool { return f.Listener() == st }), "state", st.String())
	}
	m.gauge("redis_evictable", "1 when Redis may evict sessiond's keys (maxmemory with a policy other than noeviction): the cache is not believed.", boolGauge(f.Evictable))
	m.counter("fence_verifications_total", "Checks that Redis still holds the dataset sessiond verified (after every new connection, and every 5 s).", f.Verifications)
	m.counter("invalidation_heartbeats_total", "Listener heartbeats heard (every instance sends one every 500 ms).", src.Heartbeats)
	m.counter("distrusted_reads_total", "Validations that went to Postgres because the fence could not vouch for the cache.", c.Distrusted.Load)
	m.counter("reread_total", "Callers who did not share a Postgres read under way because an invalidation was handled after it began.", c.Rereads.Load)
	m.counter("fills_dropped_total", "Cache fills not made because too many were queued or under way (Redis slow).", c.FillsDropped.Load)
	m.counter("postgres_early_reads_total", "Misses read from Postgres without asking Redis first, while Redis rarely holds what this instance does not.", c.EarlyReads.Load)
	m.counter("postgres_early_reads_unused_total", "Early Postgres reads of a key Redis turned out to hold (its fill left Redis's entry as it was).", c.EarlyReadsUnused.Load)

	for _, o := range []warm.Outcome{warm.Completed, warm.TimedOut, warm.Canceled, warm.Failed} {
		m.counter("warm_runs_total", "Warming runs ended, by outcome.", func() int64 { return src.WarmTotals().Runs[o] }, "outcome", o.String())
	}
	const warmSessions = "Sessions handled by warming runs: warmed (written), failed (write failed), skipped (invalidated since read, or expired)."
	m.counter("warm_sessions_total", warmSessions, func() int64 { return src.WarmTotals().Warmed }, "result", "warmed")
	m.counter("warm_sessions_total", warmSessions, func() int64 { return src.WarmTotals().Failed }, "result", "failed")
	m.counter("warm_sessions_total", warmSessions, func() int64 { return src.WarmTotals().Skipped }, "result", "skipped")
	m.gauge("warm_last_run_duration_seconds", "How long the latest warming run took (so far, while it runs); 0 before the first.", func() float64 {
		p, _ := src.LastWarm()
		return p.Elapsed.Seconds()
	})
	m.gauge("warm_running", "1 while a warming run goes on, else 0.", boolGauge(func() bool {
		p, ok := src.LastWarm()
		return ok && !p.Done
	}))

	m.counter("activity_recorded_total", "Session activity seen on valid answers and held for writing.", func() int64 { return src.Activity().Recorded })
	m.counter("activity_skipped_total", "Session activity not held: last_activity_at was recent enough.", func() int64 { return src.Activity().Skipped })
	m.counter("activity_dropped_total", "Sessions' activity given up unwritten (past --activity-max-pending, or a failed write).", func() int64 { return src.Activity().Dropped })
	m.counter("activity_written_total", "last_activity_at rows updated in Postgres.", func() int64 { return src.Activity().Written })
	m.counter("activity_write_failures_total", "Sessions whose activity write failed (once per failed flush).", func() int64 { return src.Activity().Failed })
	m.gauge("activity_pending", "Sessions' activity held now, waiting for the next write.", func() float64 { return float64(src.Activity().Pending) })

	const conns = "Postgres pool connections now, by state."
	m.gauge("postgres_pool_connections", conns, func() float64 { return float64(src.Pool().IdleConns()) }, "state", "idle")
	m.gauge("postgres_pool_connections", conns, func() float64 { return float64(src.Pool().AcquiredConns()) }, "state", "acquired")
	m.gauge("postgres_pool_connections", conns, func() float64 { return float64(src.Pool().ConstructingConns()) }, "state", "constructing")
	m.gauge("postgres_pool_max_connections", "Postgres pool size (--pool-size).", func() float64 { return float64(src.Pool().MaxConns()) })
	m.gauge("postgres_pool_pending", "Callers acquiring a Postgres connection now (the guide's pool.pending).", func() float64 { return float64(src.PoolPending()) })
	m.counter("postgres_pool_acquires_total", "Postgres connections acquired from the pool.", func() int64 { return src.Pool().AcquireCount() })
	m.counter("postgres_pool_empty_acquires_total", "Acquires that had to wait for a connection.", func() int64 { return src.Pool().EmptyAcquireCount() })
	m.counter("postgres_pool_canceled_acquires_total", "Acquires given up before a connection came.", func() int64 { return src.Pool().CanceledAcquireCount() })
	m.counter("postgres_pool_new_connections_total", "Postgres connections opened.", func() int64 { return src.Pool().NewConnsCount() })
	m.gaugeAsCounter("postgres_pool_acquire_wait_seconds_total", "Time spent acquiring Postgres connections.", func() float64 { return src.Pool().AcquireDuration().Seconds() })
	return m.err
}

// hitRatio is the share of answers that came from the cache.
func hitRatio(c *tiers.Counters) float64 {
	hits := c.LocalHits.Load() + c.RedisHits.Load() + c.NegativeHits.Load()
	all := hits + c.Misses.Load()
	if all == 0 {
		return 0
	}
	return float64(hits) / float64(all)
}

func boolGauge(f func() bool) func() float64 {
	return func() float64 {
		if f() {
			return 1
		}
		return 0
	}
}

// set registers func-backed metrics and keeps the first error.
type set struct {
	reg prometheus.Registerer
	err error
}

// labels turns "k1", "v1", "k2", "v2" into const labels.
func labels(kv []string) prometheus.Labels {
	if len(kv) == 0 {
		return nil
	}
	l := prometheus.Labels{}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return l
}

func (m *set) register(c prometheus.Collector) {
	if err := m.reg.Register(c); err != nil && m.err == nil {
		m.err = err
	}
}

func (m *set) counter(name, help string, read func() int64, kv ...string) {
	m.register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: Namespace, Name: name, Help: help, ConstLabels: labels(kv),
	}, func() float64 { return float64(read()) }))
}

// gaugeAsCounter is a counter whose value is not an integer count.
func (m *set) gaugeAsCounter(name, help string, read func() float64, kv ...string) {
	m.register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: Namespace, Name: name, Help: help, ConstLabels: labels(kv),
	}, read))
}

func (m *set) gauge(name, help string, read func() float64, kv ...string) {
	m.register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Name: name, Help: help, ConstLabels: labels(kv),
	}, read))
}
