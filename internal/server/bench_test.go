package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/server"
)

// BenchmarkValidateSessionBufconn is the whole handler stack (interceptors,
// handler, read-through, client-side cache hit) through an in-memory gRPC
// connection, so no TCP: what sessiond itself costs per validation.
func BenchmarkValidateSessionBufconn(b *testing.B) { benchmarkBufconn(b) }

// BenchmarkValidateSessionBufconnTracing is the same with tracing on, spans
// batched to an exporter that drops them: what tracing adds to a cache hit
// when every call is sampled, and when none is (what most calls cost under a
// ratio sampler).
func BenchmarkValidateSessionBufconnTracing(b *testing.B) {
	for _, sc := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{{"sampled", sdktrace.AlwaysSample()}, {"unsampled", sdktrace.NeverSample()}} {
		b.Run(sc.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sc.sampler), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			benchmarkBufconn(b, server.WithTracerProvider(tp))
		})
	}
}

func benchmarkBufconn(b *testing.B, opts ...server.Option) {
	h := prepare(b, devtest.Database(b), devtest.RedisURL(b))
	u := h.addUser(user{first: str("Ada")})
	s := h.addSession(u, session{ip: str("203.0.113.7"), ua: str("Mozilla/5.0")})

	ctx, stop := context.WithCancel(context.Background())
	srv, err := server.New(ctx, h.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), opts...)
	if err != nil {
		b.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, lis) }()
	b.Cleanup(func() { stop(); <-done })
	<-srv.Ready()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	client := sessiondv1.NewSessionServiceClient(conn)
	req := &sessiondv1.ValidateSessionRequest{Token: s.token}
	for { // until answered from process memory
		r, err := client.ValidateSession(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if r.GetSource() == sessiondv1.Source_SOURCE_LOCAL {
			break
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r, err := client.ValidateSession(ctx, req)
		if err != nil || !r.GetValid() {
			b.Fatalf("%v %v", r, err)
		}
	}
}
