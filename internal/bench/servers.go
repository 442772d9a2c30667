package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/server"
	"github.com/sessiond/sessiond/internal/service"
	"github.com/sessiond/sessiond/internal/tiers"
)

// target is a server under test, listening on 127.0.0.1.
type target struct {
	addr string
	// postgres returns the running count of Postgres answers (nil: unknown).
	postgres func(ctx context.Context) (int64, error)
	stop     func()
}

// directServer is what a team without sessiond runs: one Postgres query per
// ValidateSession, the same query and rule as sessiond's L2.
type directServer struct {
	sessiondv1.UnimplementedSessionServiceServer
	pg      *tiers.Postgres
	queries atomic.Int64
}

func (d *directServer) ValidateSession(ctx context.Context, req *sessiondv1.ValidateSessionRequest) (*sessiondv1.ValidateSessionResponse, error) {
	if err := tiers.CheckToken(req.GetToken()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	d.queries.Add(1)
	rec, err := d.pg.Lookup(ctx, req.GetToken())
	if err != nil {
		if c := status.FromContextError(ctx.Err()); ctx.Err() != nil {
			return nil, c.Err()
		}
		return nil, status.Error(codes.Unavailable, "postgres: "+err.Error())
	}
	return service.Response(tiers.Result{Record: rec, Reason: tiers.Check(rec, time.Now()), Source: tiers.SourcePostgres}), nil
}

// noopServer answers every ValidateSession with one constant response: the
// floor of any gRPC service on this machine.
type noopServer struct {
	sessiondv1.UnimplementedSessionServiceServer
	resp *sessiondv1.ValidateSessionResponse
}

func (n *noopServer) ValidateSession(context.Context, *sessiondv1.ValidateSessionRequest) (*sessiondv1.ValidateSessionResponse, error) {
	return n.resp, nil
}

// serveGRPC serves svc on a fresh 127.0.0.1 port.
func serveGRPC(svc sessiondv1.SessionServiceServer) (string, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	g := grpc.NewServer()
	sessiondv1.RegisterSessionServiceServer(g, svc)
	done := make(chan struct{})
	go func() {
		_ = g.Serve(lis)
		close(done)
	}()
	return lis.Addr().String(), func() {
		g.Stop()
		<-done
	}, nil
}

// startDirect starts the direct-Postgres baseline with a pool of poolSize.
func startDirect(ctx context.Context, databaseURL string, poolSize int) (*target, error) {
	pcfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("invalid --database-url: %w", err)
	}
	pcfg.MaxConns = int32(poolSize)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, err
	}
	d := &directServer{pg: tiers.NewPostgres(pool, tiers.PostgresOptions{Storage: tiers.TokenStorageHash})}
	addr, stop, err := serveGRPC(d)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &target{
		addr:     addr,
		postgres: func(context.Context) (int64, error) { return d.queries.Load(), nil },
		stop:     func() { stop(); pool.Close() },
	}, nil
}

// noopResponse is the no-op server's constant answer: a valid session of
// the size sessiond answers with, so that the floor marshals and sends the
// same bytes and the comparison measures the service, not the payload.
func noopResponse() *sessiondv1.ValidateSessionResponse {
	return service.Response(tiers.Result{Source: tiers.SourceLocal, Record: sampleRecord(time.Now())})
}

// sampleRecord is a valid session of the usual size at now.
func sampleRecord(now time.Time) *tiers.Record {
	s := func(v string) *string { return &v }
	return &tiers.Record{
		ID: "0d4f4a5e-8d0c-4b0e-9a57-3e1f7b2c9d10", UserID: "6b1e2f3a-4c5d-4e6f-8a9b-0c1d2e3f4a5b",
		ExpiresAt: now.Add(24 * time.Hour), LastActivityAt: now, CreatedAt: now.Add(-time.Hour),
		IPAddress: s("203.0.113.7"), UserAgent: s("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
		Email: "kkim12@fastmail.com", FirstName: s("Kim"), LastName: s("Kowalski"), Username: s("kkim59"),
	}
}

func startNoop() (*target, error) {
	addr, stop, err := serveGRPC(&noopServer{resp: noopResponse()})
	if err != nil {
		return nil, err
	}
	return &target{addr: addr, stop: stop}, nil
}

// startSessiond builds sessiond with config.Default() and runs it in this
// process on 127.0.0.1:0, warming every seeded session (WarmCount =
// sessions, no batch delay, a warm window covering the seed's 30 days of
// activity), and returns once it is ready (health SERVING).
func startSessiond(ctx context.Context, databaseURL, redisURL string, sessions int, localCache bool, log *slog.Logger, opts ...server.Option) (*target, error) {
	cfg := config.Default()
	cfg.DatabaseURL, cfg.RedisURL = databaseURL, redisURL
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.WarmCount = max(sessions, 1)
	cfg.WarmBatchDelay = 0
	cfg.WarmWindow = 31 * 24 * time.Hour
	cfg.LocalCache = localCache
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.ShutdownDelay = 0 // no load balancer to wait for
	srv, err := server.New(ctx, cfg, log, opts...)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx, lis) }()
	stop := func() {
		cancel()
		<-done
	}
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("sessiond stopped before it was ready: %w", err)
	case <-ctx.Done():
		stop()
		return nil, ctx.Err()
	}
	addr := lis.Addr().String()
	return &target{addr: addr, stop: stop, postgres: func(ctx context.Context) (int64, error) {
		return statsMisses(ctx, addr, "")
	}}, nil
}

// startSessiondTraced is startSessiond with tracing on: every call sampled,
// its spans (the call's, its Redis and Postgres calls') batched to an
// exporter that drops them, so the measure is what tracing costs sessiond
// itself, not a collector.
func startSessiondTraced(ctx context.Context, databaseURL, redisURL string, sessions int, log *slog.Logger) (*target, error) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	t, err := startSessiond(ctx, databaseURL, redisURL, sessions, true, log, server.WithTracerProvider(tp))
	if err != nil {
		_ = tp.Shutdown(context.WithoutCancel(ctx))
		return nil, err
	}
	stop := t.stop
	t.stop = func() {
		stop()
		_ = tp.Shutdown(context.WithoutCancel(ctx))
	}
	return t, nil
}
