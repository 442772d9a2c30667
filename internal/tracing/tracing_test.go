package tracing

import (
	"context"
	"testing"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestEnabled(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  func(string) string
		want bool
	}{
		{"nothing set", env(), false},
		{"an endpoint", env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), true},
		{"a traces endpoint", env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces"), true},
		{"an exporter", env("OTEL_TRACES_EXPORTER", "otlp"), true},
		{"exporter none beats an endpoint", env("OTEL_TRACES_EXPORTER", "none", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), false},
		{"sdk disabled", env("OTEL_SDK_DISABLED", "true", "OTEL_TRACES_EXPORTER", "otlp"), false},
		{"other OTEL variables alone", env("OTEL_SERVICE_NAME", "x", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Enabled(tt.env); got != tt.want {
				t.Errorf("Enabled = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFromEnv(t *testing.T) {
	ctx := context.Background()
	tp, err := FromEnv(ctx, env())
	if err != nil || tp != nil {
		t.Fatalf("off: %v, %v; want nil, nil", tp, err)
	}
	for _, protocol := range []string{"", "http/protobuf", "grpc"} {
		// Exporters connect lazily: nothing listens on this port.
		tp, err := FromEnv(ctx, env("OTEL_TRACES_EXPORTER", "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL", protocol))
		if err != nil || tp == nil {
			t.Fatalf("protocol %q: %v, %v; want a provider", protocol, tp, err)
		}
		if err := tp.Shutdown(ctx); err != nil {
			t.Logf("shutdown with nothing exported: %v", err)
		}
	}
	for _, bad := range [][]string{{"OTEL_TRACES_EXPORTER", "zipkin"}, {"OTEL_TRACES_EXPORTER", "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"}} {
		if tp, err := FromEnv(ctx, env(bad...)); err == nil {
			_ = tp.Shutdown(ctx)
			t.Errorf("%v: no error", bad)
		}
	}
}
