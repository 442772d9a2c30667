package metrics

import "github.com/prometheus/client_golang/prometheus"

// Buckets are the bounds, in seconds, of every latency histogram sessiond
// exports: from 25 µs (a cache hit answers in about 44 µs; the client
// library's defaults start at 5 ms) to 5 s, past --postgres-timeout.
var Buckets = []float64{
	25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5,
}

// Latency holds the histograms and counters of calls to Redis and Postgres,
// observed by the code that makes them. Each observer is resolved once, here,
// so observing costs no label lookup.
type Latency struct {
	RedisGet, RedisSet prometheus.Observer // the read-through's Redis round trips
	Postgres           prometheus.Observer // every query through the pool
	PostgresErrors     prometheus.Counter  // queries and connection acquisitions that failed
}

// NewLatency registers the histograms on reg.
func NewLatency(reg prometheus.Registerer) (*Latency, error) {
	redis := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "redis_call_duration_seconds",
		Help:    "Redis round trips of the read-through, by operation (get: a lookup not answered from process memory; set: a batch of fills after Postgres reads).",
		Buckets: Buckets,
	}, []string{"op"})
	pg := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "postgres_query_duration_seconds",
		Help:    "Postgres queries through the pool (lookups, warming, activity writes, invalidation lookups).",
		Buckets: Buckets,
	})
	pgErrors := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "postgres_errors_total",
		Help: "Postgres queries through the pool that failed, and connections the pool could not get (Postgres unreachable).",
	})
	for _, c := range []prometheus.Collector{redis, pg, pgErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return &Latency{
		RedisGet:       redis.WithLabelValues("get"),
		RedisSet:       redis.WithLabelValues("set"),
		Postgres:       pg,
		PostgresErrors: pgErrors,
	}, nil
}
