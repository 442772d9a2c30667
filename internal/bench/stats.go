package bench

import (
	"math"
	"slices"
	"time"

	"google.golang.org/grpc/codes"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// Sample is one call. Every call is kept (no histogram), so quantiles are
// exact: about 32 bytes a call, 32 MB per million calls.
type Sample struct {
	At     time.Duration     // when the call was due (open loop: its scheduled time; closed loop: its start), since the run began
	Wait   time.Duration     // open loop: from At to the send (the generator's lag); closed loop: 0
	Lat    time.Duration     // from At to the answer
	Source sessiondv1.Source // of an OK answer; SOURCE_UNSPECIFIED otherwise
	Code   codes.Code
	Kind   Kind
}

// Quantile is the nearest-rank q-quantile of sorted (ascending): the
// smallest value with at least q of the samples at or below it. It returns 0
// for no samples.
func Quantile(sorted []time.Duration, q float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	k := int(math.Ceil(q*float64(n))) - 1
	return sorted[min(max(k, 0), n-1)]
}

// Latency is a latency distribution in milliseconds.
type Latency struct {
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// latencyOf sorts lats in place and reads the quantiles.
func latencyOf(lats []time.Duration) Latency {
	slices.Sort(lats)
	return Latency{
		P50: ms(Quantile(lats, 0.50)), P90: ms(Quantile(lats, 0.90)), P99: ms(Quantile(lats, 0.99)),
		P999: ms(Quantile(lats, 0.999)), Max: ms(Quantile(lats, 1)),
	}
}

// Second is one second of a run, by the calls due in it.
type Second struct {
	T       int     `json:"t"` // seconds since the start
	Calls   int     `json:"calls"`
	HitRate float64 `json:"hit_rate"` // percent; see Result.HitRate
	P99     float64 `json:"p99_ms"`
}

// Result is what one run measured.
type Result struct {
	Scenario   string         `json:"scenario,omitempty"`
	Run        int            `json:"run,omitempty"` // 1-based, when compare measured several runs
	Mode       string         `json:"mode"`          // "closed C=32", "open R=5000/s"
	Seconds    float64        `json:"seconds"`
	Calls      int            `json:"calls"`
	Throughput float64        `json:"throughput"` // answers (any status) per second
	Latency    Latency        `json:"latency"`    // of every call, whatever its status
	Sources    map[string]int `json:"sources"`    // OK answers by source
	Codes      map[string]int `json:"codes"`      // calls by gRPC status code
	Kinds      map[string]int `json:"kinds"`      // calls by how the token was chosen
	// HitRate is the percentage of OK answers whose source is local or
	// redis (a cached "no such session" counts as a hit).
	HitRate float64 `json:"hit_rate"`
	// Checked is false when answers were not compared with the truth (the
	// no-op server); Wrong is then 0 and meaningless.
	Checked       bool     `json:"checked"`
	Wrong         int      `json:"wrong"`
	WrongExamples []string `json:"wrong_examples,omitempty"`
	// PostgresPer1000 is Postgres answers per 1,000 calls: the delta of
	// GetStats's cache.misses (answers that needed Postgres, after
	// coalescing, so not exactly queries), or the baseline's own query
	// count; nil when unknown.
	PostgresPer1000 *float64 `json:"postgres_per_1000,omitempty"`
	Series          []Second `json:"series"`
	// Open loop only. Service is the latency from each call's send to its
	// answer (Latency counts from when it was due, so it includes the
	// generator's lag, MaxSendLagMS at most); Unsent counts the calls that
	// DropLate kept from being sent after the run's end.
	Service      *Latency `json:"service_latency,omitempty"`
	MaxSendLagMS float64  `json:"max_send_lag_ms,omitempty"`
	Unsent       int      `json:"unsent,omitempty"`
}

// serviceLatency is the latency from send to answer of samples, and the
// longest wait between a call's due time and its send.
func serviceLatency(samples []Sample) (*Latency, float64) {
	lats := make([]time.Duration, len(samples))
	var lag time.Duration
	for i, s := range samples {
		lats[i] = s.Lat - s.Wait
		lag = max(lag, s.Wait)
	}
	l := latencyOf(lats)
	return &l, ms(lag)
}

func sourceName(s sessiondv1.Source) string {
	switch s {
	case sessiondv1.Source_SOURCE_LOCAL:
		return "local"
	case sessiondv1.Source_SOURCE_REDIS:
		return "redis"
	case sessiondv1.Source_SOURCE_POSTGRES:
		return "postgres"
	}
	return "unspecified"
}

func isHit(s sessiondv1.Source) bool {
	return s == sessiondv1.Source_SOURCE_LOCAL || s == sessiondv1.Source_SOURCE_REDIS
}

// summarize turns the samples of a run that took elapsed into a Result. It
// reorders samples.
func summarize(samples []Sample, elapsed time.Duration) Result {
	r := Result{
		Seconds: elapsed.Seconds(), Calls: len(samples),
		Sources: map[string]int{}, Codes: map[string]int{}, Kinds: map[string]int{},
	}
	if elapsed > 0 {
		r.Throughput = float64(len(samples)) / elapsed.Seconds()
	}
	lats := make([]time.Duration, len(samples))
	var hits, answered int
	for i, s := range samples {
		lats[i] = s.Lat
		r.Codes[s.Code.String()]++
		r.Kinds[s.Kind.String()]++
		if s.Code == codes.OK {
			r.Sources[sourceName(s.Source)]++
			answered++
			if isHit(s.Source) {
				hits++
			}
		}
	}
	r.Latency = latencyOf(lats)
	if answered > 0 {
		r.HitRate = 100 * float64(hits) / float64(answered)
	}
	r.Series = series(samples)
	return r
}

// series buckets samples by the second they were due in.
func series(samples []Sample) []Second {
	slices.SortFunc(samples, func(a, b Sample) int { return int(a.At/time.Second) - int(b.At/time.Second) })
	var out []Second
	for i := 0; i < len(samples); {
		sec := int(samples[i].At / time.Second)
		j := i
		var hits, answered int
		var lats []time.Duration
		for ; j < len(samples) && int(samples[j].At/time.Second) == sec; j++ {
			lats = append(lats, samples[j].Lat)
			if samples[j].Code == codes.OK {
				answered++
				if isHit(samples[j].Source) {
					hits++
				}
			}
		}
		s := Second{T: sec, Calls: j - i}
		if answered > 0 {
			s.HitRate = 100 * float64(hits) / float64(answered)
		}
		slices.Sort(lats)
		s.P99 = ms(Quantile(lats, 0.99))
		out = append(out, s)
		i = j
	}
	return out
}
