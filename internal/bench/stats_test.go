package bench

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

func TestQuantile(t *testing.T) {
	if Quantile(nil, 0.5) != 0 {
		t.Error("Quantile of nothing is not 0")
	}
	// 1..1000 ms: the nearest-rank q-quantile is ceil(q·1000) ms.
	var sorted []time.Duration
	for i := 1; i <= 1000; i++ {
		sorted = append(sorted, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0, 1}, {0.5, 500}, {0.9, 900}, {0.99, 990}, {0.999, 999}, {1, 1000}, {0.0001, 1}, {0.9991, 1000}} {
		if got := Quantile(sorted, c.q); got != c.want*time.Millisecond {
			t.Errorf("Quantile(1..1000 ms, %v) = %v, want %v", c.q, got, c.want*time.Millisecond)
		}
	}
	// Against a brute-force count on random data: at least q of the samples
	// are <= the answer, and fewer than q are below it.
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]time.Duration, 12345)
	for i := range data {
		data[i] = time.Duration(r.ExpFloat64() * float64(time.Millisecond))
	}
	slices.Sort(data)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		v := Quantile(data, q)
		le, lt := 0, 0
		for _, d := range data {
			if d <= v {
				le++
			}
			if d < v {
				lt++
			}
		}
		n := float64(len(data))
		if float64(le) < q*n || float64(lt) >= q*n {
			t.Errorf("q=%v: %v has %d <= and %d < of %d", q, v, le, lt, len(data))
		}
	}
}

func TestSummarize(t *testing.T) {
	var samples []Sample
	for i := range 300 {
		s := Sample{At: time.Duration(i) * 10 * time.Millisecond, Lat: time.Duration(i%100+1) * time.Millisecond, Code: codes.OK}
		switch {
		case i < 100:
			s.Source = sessiondv1.Source_SOURCE_POSTGRES // second 0: no hits
		case i < 200:
			s.Source = sessiondv1.Source_SOURCE_LOCAL // second 1: all hits
		case i%2 == 0:
			s.Source = sessiondv1.Source_SOURCE_REDIS // second 2: half
		default:
			s.Code, s.Source = codes.InvalidArgument, sessiondv1.Source_SOURCE_UNSPECIFIED
		}
		samples = append(samples, s)
	}
	r := summarize(samples, 3*time.Second)
	if r.Calls != 300 || r.Throughput != 100 {
		t.Errorf("calls %d, throughput %v; want 300, 100", r.Calls, r.Throughput)
	}
	if r.Latency.P50 != 50 || r.Latency.P99 != 99 || r.Latency.Max != 100 {
		t.Errorf("latency %+v, want p50 50, p99 99, max 100", r.Latency)
	}
	if r.Codes["OK"] != 250 || r.Codes["InvalidArgument"] != 50 {
		t.Errorf("codes %v", r.Codes)
	}
	if r.Sources["local"] != 100 || r.Sources["redis"] != 50 || r.Sources["postgres"] != 100 {
		t.Errorf("sources %v", r.Sources)
	}
	if r.HitRate != 60 { // 150 hits of 250 OK answers
		t.Errorf("hit rate %v, want 60", r.HitRate)
	}
	want := []float64{0, 100, 100}
	if len(r.Series) != 3 {
		t.Fatalf("series %+v, want 3 seconds", r.Series)
	}
	for i, s := range r.Series {
		if s.T != i || s.Calls != 100 || s.HitRate != want[i] || s.P99 != 99 {
			t.Errorf("second %d: %+v, want hit rate %v, p99 99", i, s, want[i])
		}
	}
}
