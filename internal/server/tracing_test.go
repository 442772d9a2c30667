package server_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/server"
	"github.com/sessiond/sessiond/internal/tiers"
)

// With tracing on, a ValidateSession call is a server span carrying the
// answer, with child spans for its Redis and Postgres calls; health checks
// are not traced; and nothing recorded holds a token or its hash.
func TestTracing(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	h := prepare(t, devtest.Database(t), devtest.RedisURL(t))
	h.opts = append(h.opts, server.WithTracerProvider(tp))
	s := h.addSession(h.addUser(user{}), session{})
	h.run()

	if r := h.mustValidate(s.token); !r.GetValid() {
		t.Fatalf("first call: %v", r)
	}
	unknown := newToken(t)
	h.mustValidate(unknown)
	if _, err := h.health.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	h.filled() // a miss's fill (its "redis set" span) lands after the answer

	// A server span ends just after its answer is sent.
	eventually(t, 10*time.Second, func() error {
		if n := len(named(rec.Ended(), "sessiond.v1.SessionService/ValidateSession")); n < 2 {
			return fmt.Errorf("%d ValidateSession spans ended", n)
		}
		return nil
	})
	var validates []sdktrace.ReadOnlySpan
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, sp := range rec.Ended() {
		byID[sp.SpanContext().SpanID()] = sp
		if sp.Name() == "sessiond.v1.SessionService/ValidateSession" {
			validates = append(validates, sp)
		}
		if strings.Contains(sp.Name(), "Health") {
			t.Errorf("health check traced: %s", sp.Name())
		}
	}
	if len(validates) != 2 {
		t.Fatalf("%d ValidateSession spans, want 2; spans: %v", len(validates), names(rec.Ended()))
	}
	first := validates[0]
	if got := attrs(first); got["sessiond.valid"] != "true" || got["sessiond.source"] != "SOURCE_POSTGRES" || got["sessiond.reason"] != "REASON_UNSPECIFIED" {
		t.Errorf("first call's answer attributes: %v", got)
	}
	if got := attrs(validates[1]); got["sessiond.valid"] != "false" || got["sessiond.reason"] != "REASON_NOT_FOUND" {
		t.Errorf("unknown token's answer attributes: %v", got)
	}

	// The first call's children: a Redis read, a Postgres query, and the
	// Redis fill made after the answer.
	kinds := map[string]int{}
	for _, sp := range rec.Ended() {
		if root(byID, sp) != first.SpanContext().SpanID() || sp == first {
			continue
		}
		a := attrs(sp)
		switch {
		case sp.Name() == "redis get" && a["db.system.name"] == "redis":
			kinds["redis get"]++
		case sp.Name() == "redis set" && a["db.system.name"] == "redis":
			kinds["redis set"]++
		case a["db.system.name"] == "postgresql":
			kinds["postgres"]++
			if stmt := a["db.query.text"]; stmt != "" && !strings.Contains(stmt, "$1") {
				t.Errorf("postgres span statement without its placeholder: %q", stmt)
			}
		}
	}
	t.Logf("spans under the first call: %v", kinds)
	for _, k := range []string{"redis get", "redis set", "postgres"} {
		if kinds[k] == 0 {
			t.Errorf("no %s span under the first call; under it: %v", k, kinds)
		}
	}

	// Nothing holds a token, its hash, or the cache key.
	var secrets []string
	for _, tok := range []string{s.token, unknown} {
		secrets = append(secrets, tok, tiers.TokenHash(tok), tiers.TokenKey(tok))
	}
	for _, sp := range rec.Ended() {
		texts := []string{sp.Name(), sp.Status().Description}
		for _, kv := range sp.Attributes() {
			texts = append(texts, kv.Value.String())
		}
		for _, ev := range sp.Events() {
			texts = append(texts, ev.Name)
			for _, kv := range ev.Attributes {
				texts = append(texts, kv.Value.String())
			}
		}
		for _, text := range texts {
			for _, secret := range secrets {
				if strings.Contains(text, secret) {
					t.Errorf("span %q holds a token, its hash or its key", sp.Name())
				}
			}
		}
	}
}

func attrs(sp sdktrace.ReadOnlySpan) map[string]string {
	m := map[string]string{}
	for _, kv := range sp.Attributes() {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

func named(spans []sdktrace.ReadOnlySpan, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, sp := range spans {
		if sp.Name() == name {
			out = append(out, sp)
		}
	}
	return out
}

// root is the id of the outermost recorded ancestor of sp.
func root(byID map[trace.SpanID]sdktrace.ReadOnlySpan, sp sdktrace.ReadOnlySpan) trace.SpanID {
	for {
		p, ok := byID[sp.Parent().SpanID()]
		if !ok || !sp.Parent().IsValid() {
			return sp.SpanContext().SpanID()
		}
		sp = p
	}
}

func names(spans []sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	for _, sp := range spans {
		fmt.Fprintf(&b, "%s(%v) ", sp.Name(), attrs(sp))
	}
	return b.String()
}
