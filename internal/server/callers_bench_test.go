package server_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// BenchmarkCallers measures, at one caller over TCP on 127.0.0.1, the
// latency of a cache hit (the session in process memory) through each front:
// ValidateSession, Envoy's ext_authz Check (same gRPC connection), and a
// forward-auth GET /v1/auth (net/http, keep-alive). Reported: p50 and p99 in
// µs per call, for each front (the fronts take turns: b.N calls in all).
//
//	go test -run '^$' -bench Callers -benchtime 60000x -count 3 ./internal/server
func BenchmarkCallers(b *testing.B) {
	h := start(b, devtest.Database(b), devtest.RedisURL(b), withHTTP)
	u := h.addUser(user{first: str("Ada")})
	s := h.addSession(u, session{ip: str("203.0.113.7"), ua: str("Mozilla/5.0")})
	for { // until answered from process memory
		if r := h.mustValidate(s.token); r.GetSource() == sessiondv1.Source_SOURCE_LOCAL {
			break
		}
	}
	ctx := context.Background()
	authz := authv3.NewAuthorizationClient(h.conn)
	checkReq := checkRequest(false, "cookie", "session="+s.token, "user-agent", "Mozilla/5.0", "accept", "*/*")
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	authReq, err := http.NewRequest("GET", "http://"+h.srv.HTTPAddr().String()+"/v1/auth", nil)
	if err != nil {
		b.Fatal(err)
	}
	authReq.Header.Set("Cookie", "session="+s.token)

	fronts := []struct {
		name string
		call func() error
	}{
		{"validate", func() error {
			r, err := h.client.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: s.token})
			if err == nil && !r.GetValid() {
				b.Fatal("invalid")
			}
			return err
		}},
		{"extauthz", func() error {
			r, err := authz.Check(ctx, checkReq)
			if err == nil && r.GetOkResponse() == nil {
				b.Fatal("denied")
			}
			return err
		}},
		{"fwdauth", func() error {
			resp, err := httpClient.Do(authReq)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
			return nil
		}},
	}
	for range 200 { // warm the connections and the handlers' goroutines
		for _, f := range fronts {
			if err := f.call(); err != nil {
				b.Fatal(err)
			}
		}
	}
	// The fronts take turns, so that a change in the machine's load (it is
	// shared) hits all three alike.
	samples := make([][]time.Duration, len(fronts))
	b.ResetTimer()
	for i := range b.N {
		f := i % len(fronts)
		t0 := time.Now()
		if err := fronts[f].call(); err != nil {
			b.Fatal(err)
		}
		samples[f] = append(samples[f], time.Since(t0))
	}
	b.StopTimer()
	for f, ss := range samples {
		if len(ss) == 0 {
			continue
		}
		slices.Sort(ss)
		q := func(p float64) float64 { return float64(ss[int(p*float64(len(ss)-1))].Nanoseconds()) / 1000 }
		b.ReportMetric(q(0.50), fronts[f].name+"-p50-µs")
		b.ReportMetric(q(0.99), fronts[f].name+"-p99-µs")
	}
}
