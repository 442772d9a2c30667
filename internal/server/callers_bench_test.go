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
// µs per call.
//
//	go test -run '^$' -bench Callers -benchtime 20000x ./internal/server
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

	for _, front := range []struct {
		name string
		call func() error
	}{
		{"ValidateSession", func() error {
			r, err := h.client.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: s.token})
			if err == nil && !r.GetValid() {
				b.Fatal("invalid")
			}
			return err
		}},
		{"ExtAuthzCheck", func() error {
			r, err := authz.Check(ctx, checkReq)
			if err == nil && r.GetOkResponse() == nil {
				b.Fatal("denied")
			}
			return err
		}},
		{"ForwardAuthGET", func() error {
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
	} {
		b.Run(front.name, func(b *testing.B) {
			for range 200 { // warm the connection and the handler's goroutines
				if err := front.call(); err != nil {
					b.Fatal(err)
				}
			}
			samples := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if err := front.call(); err != nil {
					b.Fatal(err)
				}
				samples = append(samples, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(samples)
			q := func(p float64) float64 { return float64(samples[int(p*float64(len(samples)-1))].Nanoseconds()) / 1000 }
			b.ReportMetric(q(0.50), "p50-µs")
			b.ReportMetric(q(0.99), "p99-µs")
		})
	}
}
