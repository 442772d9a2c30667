package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/server"
	"github.com/sessiond/sessiond/internal/tiers"
)

// withOps gives the harness an ops listener on a free loopback port and
// returns its base URL.
func withOps(t *testing.T, h *harness) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.opts = append(h.opts, server.WithOpsListener(lis))
	return "http://" + lis.Addr().String()
}

// get returns the status and body of url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// scrape parses a /metrics answer.
func scrape(t *testing.T, base string) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	code, body := get(t, base+server.MetricsPath)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs, body
}

// value is devtest.MetricValue, named for these tests' call sites.
func value(mfs map[string]*dto.MetricFamily, name string, kv ...string) float64 {
	return devtest.MetricValue(mfs, name, kv...)
}

// The ops endpoints: /healthz stays 200 while Postgres is down, /readyz is
// 503 until the startup warm has run and 200 after, and /metrics shows the
// calls, passes promtool's check, and holds no token.
func TestOpsEndpoints(t *testing.T) {
	pg := devtest.OwnPostgres(t)
	dbURL, err := pg.CreateDatabase(t.Context(), "ops")
	if err != nil {
		t.Fatal(err)
	}
	const adminToken = "ops-test-admin-token"
	h := prepare(t, dbURL, devtest.RedisURL(t), func(c *config.Config) {
		c.WarmOnStart = true
		c.AdminToken = adminToken
		c.PostgresTimeout = 500 * time.Millisecond
	})
	base := withOps(t, h)
	u := h.addUser(user{})
	sessions := []session{h.addSession(u, session{}), h.addSession(u, session{})}
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	h.run()

	// Postgres is down: the startup warm cannot run, so not ready; alive all
	// the same.
	if code, body := get(t, base+server.ReadyzPath); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before the warm = %d %q, want 503", code, body)
	}
	if code, _ := get(t, base+server.HealthzPath); code != http.StatusOK {
		t.Errorf("/healthz with postgres down = %d, want 200", code)
	}
	mfs, _ := scrape(t, base)
	if v := value(mfs, "sessiond_ready"); v != 0 {
		t.Errorf("sessiond_ready before the warm = %g, want 0", v)
	}

	if err := pg.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		if code, body := get(t, base+server.ReadyzPath); code != http.StatusOK {
			return fmt.Errorf("/readyz = %d %q", code, body)
		}
		return nil
	})
	h.waitServing()

	// Traffic: each session twice (postgres, then the cache), an unknown
	// token, and an admin call refused for want of the admin token.
	for _, s := range sessions {
		h.mustValidate(s.token)
		h.mustValidate(s.token)
	}
	unknown := newToken(t)
	h.mustValidate(unknown)
	if _, err := h.client.GetStats(t.Context(), &sessiondv1.GetStatsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("GetStats without the admin token: %v, want Unauthenticated", err)
	}
	authed := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+adminToken)
	if _, err := h.client.GetStats(authed, &sessiondv1.GetStatsRequest{}); err != nil {
		t.Fatal(err)
	}

	mfs, body := scrape(t, base)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sessiond_ready", nil, 1},
		{"sessiond_redis_up", nil, 1},
		{"sessiond_warm_runs_total", []string{"outcome", "completed"}, 1},
		{"sessiond_warm_sessions_total", []string{"result", "warmed"}, 2},
		{"sessiond_validations_total", []string{"result", "not_found", "source", "postgres"}, 1},
		{"grpc_server_handled_total", []string{"grpc_method", "ValidateSession", "grpc_code", "OK"}, 5},
		{"grpc_server_handled_total", []string{"grpc_method", "GetStats", "grpc_code", "Unauthenticated"}, 1},
		{"grpc_server_handled_total", []string{"grpc_method", "GetStats", "grpc_code", "OK"}, 1},
		{"grpc_server_handling_seconds", []string{"grpc_method", "ValidateSession"}, 5},
		{"sessiond_postgres_pool_max_connections", nil, float64(h.cfg.PoolSize)},
	} {
		if got := value(mfs, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.name, c.labels, got, c.want)
		}
	}
	// The warmed sessions answer from the cache.
	var cached float64
	for _, src := range []string{"local", "redis"} {
		cached += value(mfs, "sessiond_validations_total", "result", "valid", "source", src)
	}
	if cached != 4 {
		t.Errorf("valid answers from the cache = %g, want 4", cached)
	}
	if v := value(mfs, "sessiond_postgres_query_duration_seconds"); v < 1 {
		t.Errorf("postgres queries observed = %g, want some", v)
	}
	if !strings.Contains(body, `grpc_server_handling_seconds_bucket{grpc_method="ValidateSession",grpc_service="sessiond.v1.SessionService",grpc_type="unary",le="2.5e-05"}`) {
		t.Error("the gRPC latency histogram does not start at 25µs")
	}
	for _, s := range sessions {
		for _, secret := range []string{s.token, tiers.TokenHash(s.token), s.id} {
			if strings.Contains(body, secret) {
				t.Errorf("/metrics holds a token, its hash or a session id")
			}
		}
	}
	if strings.Contains(body, unknown) || strings.Contains(body, u.id) {
		t.Error("/metrics holds a token or a user id")
	}
	out := devtest.Promtool(t, []byte(body), "check", "metrics")
	t.Logf("promtool check metrics: %q", out)

	// OpenMetrics when asked for.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, base+server.MetricsPath, nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Errorf("Content-Type %q, want OpenMetrics", ct)
	}

	// Postgres down again: still alive.
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, base+server.HealthzPath); code != http.StatusOK {
		t.Errorf("/healthz with postgres down = %d, want 200", code)
	}
	h.mustValidate(sessions[0].token) // cached sessions still answer
	if _, err := h.validate(newToken(t)); status.Code(err) != codes.Unavailable {
		t.Errorf("uncached token with postgres down: %v, want Unavailable", err)
	}
	mfs, _ = scrape(t, base)
	if v := value(mfs, "sessiond_postgres_errors_total"); v < 1 {
		t.Errorf("sessiond_postgres_errors_total = %g with postgres down, want the failed connection counted", v)
	}
	if v := value(mfs, "grpc_server_handled_total", "grpc_method", "ValidateSession", "grpc_code", "Unavailable"); v != 1 {
		t.Errorf("Unavailable ValidateSession calls = %g, want 1", v)
	}
	if err := pg.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// Shutdown: health turns NOT_SERVING (and /readyz 503) at once, calls are
// still served for the shutdown delay, then long-lived streams are ended so
// the drain does not wait for them.
func TestShutdownDelayEndsStreams(t *testing.T) {
	const delay = 2 * time.Second
	h := prepare(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) {
		c.ShutdownDelay = delay
		c.ShutdownTimeout = time.Minute // a held drain would show as a hang, not pass
	})
	base := withOps(t, h)
	s := h.addSession(h.addUser(user{}), session{})
	h.run()

	watch, err := h.health.Watch(t.Context(), &healthpb.HealthCheckRequest{Service: server.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := watch.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch message: %v %v, want SERVING", m, err)
	}

	h.stop() // as SIGTERM
	stopped := time.Now()
	if m, err := watch.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch after SIGTERM: %v %v, want NOT_SERVING", m, err)
	}
	if code, _ := get(t, base+server.ReadyzPath); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while shutting down = %d, want 503", code)
	}
	// Still serving: the load balancer may not have noticed yet.
	if resp := h.mustValidate(s.token); !resp.GetValid() {
		t.Errorf("ValidateSession during the delay: %v", resp)
	}
	_, err = watch.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("Watch ended with %v, want Unavailable: sessiond is shutting down", err)
	}
	select {
	case err := <-h.runErr:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		h.runErr <- nil // for the harness's own shutdown check
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of the drain")
	}
	if held := time.Since(stopped); held < delay {
		t.Errorf("stopped %v after SIGTERM, before the %v delay", held, delay)
	}
}
