package server_test

import (
	"slices"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// BenchmarkRevocationLatency measures, on one machine, the time from the
// committing UPDATE in Postgres to valid=false on a second sessiond instance
// that had the session in its client-side cache (trigger → NOTIFY → the
// instances' listeners → Redis DEL → client-tracking invalidation), polling
// that instance as fast as it answers. Reported: p50 and p99 in ms.
//
//	go test -run '^$' -bench RevocationLatency -benchtime 300x ./internal/server
func BenchmarkRevocationLatency(b *testing.B) {
	dbURL, redisURL := devtest.Database(b), devtest.RedisURL(b)
	a := start(b, dbURL, redisURL)
	other := start(b, dbURL, redisURL)
	u := a.addUser(user{})
	samples := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		s := a.addSession(u, session{})
		for {
			r, err := other.validate(s.token)
			if err != nil {
				b.Fatal(err)
			}
			if r.GetSource() == 1 { // SOURCE_LOCAL
				break
			}
		}
		b.StartTimer()
		start := time.Now()
		if _, err := a.db.Exec(b.Context(), `UPDATE platform.user_sessions SET expires_at = now() WHERE id = $1`, s.id); err != nil {
			b.Fatal(err)
		}
		for {
			r, err := other.validate(s.token)
			if err != nil {
				b.Fatal(err)
			}
			if !r.GetValid() {
				break
			}
			if time.Since(start) > 10*time.Second {
				b.Fatal("not revoked within 10 s")
			}
		}
		samples = append(samples, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(samples)
	q := func(p float64) float64 {
		return float64(samples[int(p*float64(len(samples)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(samples[len(samples)-1].Microseconds())/1000, "max-ms")
}
