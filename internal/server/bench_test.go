package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

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
	client := bufconnClient(b, lis)
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

// BenchmarkNoopBufconn is the floor under BenchmarkValidateSessionBufconn: a
// bare grpc.Server (no interceptors) answering one constant response of the
// usual size through the same in-memory connection and client. What it
// allocates per call is gRPC's and protobuf's, client and server together;
// the difference to BenchmarkValidateSessionBufconn is sessiond's.
func BenchmarkNoopBufconn(b *testing.B) {
	now := time.Now()
	resp := &sessiondv1.ValidateSessionResponse{
		Valid: true, Source: sessiondv1.Source_SOURCE_LOCAL,
		Session: &sessiondv1.Session{
			Id: "0d4f4a5e-8d0c-4b0e-9a57-3e1f7b2c9d10", UserId: "6b1e2f3a-4c5d-4e6f-8a9b-0c1d2e3f4a5b",
			ExpiresAt: timestamppb.New(now.Add(time.Hour)), LastActivityAt: timestamppb.New(now), CreatedAt: timestamppb.New(now.Add(-time.Hour)),
			// The fields benchmarkBufconn's session has set.
			IpAddress: proto.String("203.0.113.7"), UserAgent: proto.String("Mozilla/5.0"),
			Email: "ada@example.test", FirstName: proto.String("Ada"),
		},
	}
	g := grpc.NewServer()
	sessiondv1.RegisterSessionServiceServer(g, noop{resp: resp})
	lis := bufconn.Listen(1 << 20)
	go func() { _ = g.Serve(lis) }()
	b.Cleanup(g.Stop)
	client := bufconnClient(b, lis)
	req := &sessiondv1.ValidateSessionRequest{Token: strings.Repeat("ab", 32)}
	ctx := context.Background()
	if _, err := client.ValidateSession(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if r, err := client.ValidateSession(ctx, req); err != nil || !r.GetValid() {
			b.Fatalf("%v %v", r, err)
		}
	}
}

type noop struct {
	sessiondv1.UnimplementedSessionServiceServer
	resp *sessiondv1.ValidateSessionResponse
}

func (n noop) ValidateSession(context.Context, *sessiondv1.ValidateSessionRequest) (*sessiondv1.ValidateSessionResponse, error) {
	return n.resp, nil
}

// bufconnClient is a SessionService client over lis, closed when b ends.
func bufconnClient(b *testing.B, lis *bufconn.Listener) sessiondv1.SessionServiceClient {
	b.Helper()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return sessiondv1.NewSessionServiceClient(conn)
}
