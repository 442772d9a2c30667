// Package server builds a sessiond server from its configuration and runs it:
// the tiers, the gRPC service with health and reflection, the background
// work, and the ordered shutdown. Production (cmd/sessiond) and tests use the
// same New and Run.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/activity"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/invalidate"
	"github.com/sessiond/sessiond/internal/service"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// ServiceName is the health-check name of SessionService.
const ServiceName = "sessiond.v1.SessionService"

// Limits on what one client may ask of the server.
const (
	maxRecvMsgSize       = 1 << 20 // InvalidateSessions may carry many tokens; nothing else comes close
	maxConcurrentStreams = 1024
)

// Server is a built, not yet running, sessiond.
type Server struct {
	cfg    config.Config
	log    *slog.Logger
	pool   *pgxpool.Pool
	redis  *tiers.Redis
	rt     *tiers.ReadThrough
	pg     *tiers.Postgres
	warmer *warm.Warmer
	waits  *poolWaits
	ops    *ops // metrics, ops endpoints, tracing, stream draining (ops.go)

	activity *activity.Recorder
	inval    *invalidate.Invalidator
	svc      *service.Service

	ready     chan struct{}
	readyOnce sync.Once
	grpc      *grpc.Server
	health    *health.Server

	bg             context.Context
	stopBackground context.CancelFunc
	background     sync.WaitGroup

	callers callers // ext_authz and forward-auth (callers.go)
}

// build is New, with a log that already masks the URLs' secrets.
func build(ctx context.Context, cfg config.Config, log *slog.Logger, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	security, err := securityOptions(cfg, log) // TLS files are read here, before anything starts
	if err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("invalid --database-url: %w", err)
	}
	pcfg.MaxConns = int32(cfg.PoolSize)
	if pcfg.ConnConfig.ConnectTimeout == 0 || pcfg.ConnConfig.ConnectTimeout > cfg.PostgresTimeout {
		pcfg.ConnConfig.ConnectTimeout = cfg.PostgresTimeout
	}
	if _, ok := pcfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "sessiond"
	}
	o, err := newOps(opts)
	if err != nil {
		return nil, err
	}
	waits := &poolWaits{}
	pcfg.ConnConfig.Tracer = o.pgTracer(waits)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres pool: %w", err)
	}

	// Background work (Redis reconnection, warming) lives until shutdown,
	// whatever happens to the ctx New was called with.
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	s := &Server{cfg: cfg, log: log, pool: pool, waits: waits, ops: o, bg: bg, stopBackground: stop, ready: make(chan struct{})}
	s.redis, err = tiers.ConnectRedis(bg, cfg.RedisURL, tiers.RedisOptions{
		TTL:              cfg.CacheTTL,
		LocalCache:       cfg.LocalCache,
		LocalCacheBytes:  cfg.LocalCacheMiB << 20,
		ConnWriteTimeout: cfg.RedisConnTimeout,
		DialTimeout:      cfg.PostgresTimeout,
		NegativeTTL:      cfg.NegativeTTL,
		Fence: tiers.FenceOptions{
			Listening: cfg.Invalidation,
			// A drop slower than a read may be is a loss at once: every
			// answer then comes from Postgres, instead of local copies that
			// a slow Redis has not yet told us to drop.
			Timeout: cfg.RedisTimeout,
			// An invalidation must outlive every read that could predate it
			// and still be written: a whole warming run at the longest.
			TombstoneTTL: cfg.WarmTimeout + cfg.PostgresTimeout + 10*time.Second,
			// A user's invalidation must outlive every entry written from
			// data read before it.
			UserTombstoneTTL: cfg.CacheTTL + cfg.WarmTimeout + cfg.PostgresTimeout + 10*time.Second,
			TombstoneMargin:  time.Second,
			// Redis's invalidation message arrives in milliseconds on a live
			// connection, and a dead one is dropped (with its local copies)
			// within 1.25 × RedisConnTimeout.
			LocalTombstoneTTL: 2 * cfg.RedisConnTimeout,
		},
	}, log)
	if err != nil {
		stop()
		pool.Close()
		return nil, fmt.Errorf("invalid --redis-url: %w", err)
	}
	s.activity = activity.New(pool, activity.Options{
		Interval: cfg.ActivityInterval, Granularity: cfg.ActivityGranularity, MaxPending: cfg.ActivityMaxPending,
		Timeout: cfg.PostgresTimeout + 3*time.Second,
	}, log)
	s.pg = tiers.NewPostgres(pool, tiers.PostgresOptions{
		Storage: tiers.TokenStorage(cfg.TokenStorage), Concurrent: min(cfg.LookupQueries, cfg.PoolSize),
	})
	s.rt = tiers.NewReadThrough(o.observeCache(s.redis), s.pg,
		tiers.ReadThroughOptions{
			RedisTimeout: cfg.RedisTimeout, PostgresTimeout: cfg.PostgresTimeout,
			Negative: cfg.NegativeTTL > 0, Activity: s.activity,
		}, log)
	s.inval = invalidate.New(s.redis.Fence(), invalidate.Options{
		DatabaseURL: cfg.ListenURL(), Storage: tiers.TokenStorage(cfg.TokenStorage), Timeout: cfg.PostgresTimeout,
	}, log)
	s.warmer = warm.New(bg, pool, s.redis, warm.Config{
		Count: cfg.WarmCount, BatchSize: cfg.WarmBatchSize, BatchDelay: cfg.WarmBatchDelay,
		Window: cfg.WarmWindow, Timeout: cfg.WarmTimeout, Storage: tiers.TokenStorage(cfg.TokenStorage),
	}, log)

	s.health = health.NewServer()
	// The stock health server starts as SERVING; readiness is earned.
	s.setServing(false)
	s.grpc = grpc.NewServer(append(append(s.opsServerOptions(), s.serverOptions()...), security...)...)
	s.svc = service.New(s.rt, s.warmer, s.inval, s.stats, log)
	sessiondv1.RegisterSessionServiceServer(s.grpc, s.svc)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	if err := s.setupCallers(); err != nil {
		s.stopBackground()
		s.redis.Close()
		s.pool.Close()
		return nil, err
	}
	if err := s.registerMetrics(); err != nil {
		s.stopBackground()
		s.redis.Close()
		s.pool.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) serverOptions() []grpc.ServerOption {
	// Calls other than ValidateSession (and ext_authz Check) are logged as
	// they finish; ValidateSession logs its own debug record (with the
	// guide's fields), and an interceptor on the hot path would cost every
	// caller.
	notValidate := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return !isHotPath(c)
	})
	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		s.log.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	// A panic becomes a plain Internal with the detail in our log, never the
	// stack sent to the client (the interceptor's default).
	recoverOpt := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		s.log.ErrorContext(ctx, "panic in handler", "panic", p)
		return status.Error(codes.Internal, "internal error")
	})
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		// Fixed flow-control windows turn off gRPC's bandwidth-delay
		// estimator, whose pings follow a connection's incoming data: it
		// serves large transfers over long links, and sessiond receives
		// requests of a few hundred bytes (the largest, an
		// InvalidateSessions of maxRecvMsgSize, takes about one
		// connection window: a window update or two on the way). Saves 6
		// allocations per call (BenchmarkValidateSessionBufconn).
		grpc.InitialWindowSize(256 << 10),
		grpc.InitialConnWindowSize(maxRecvMsgSize),
		// A pool of handler goroutines whose stacks have already grown:
		// a fresh goroutine per call spends a tenth of a cache hit's CPU
		// growing its stack (measured with BenchmarkValidateSessionBufconn).
		grpc.NumStreamWorkers(uint32(4 * runtime.GOMAXPROCS(0))),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second}),
		grpc.ChainUnaryInterceptor(
			selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(logger, logOpts...), notValidate),
			recovery.UnaryServerInterceptor(recoverOpt), // last, so it wraps the handler itself
		),
		grpc.ChainStreamInterceptor(
			logging.StreamServerInterceptor(logger, logOpts...),
			recovery.StreamServerInterceptor(recoverOpt),
		),
	}
}

func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(ServiceName, st)
	if ok {
		s.readyOnce.Do(func() { close(s.ready) })
	}
}

// Ready is closed when health first turns SERVING: the invalidation listener
// hears changes, and the startup warm (if any) has ended.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Service is the SessionService implementation, for calling it in process
// (the fuzz test feeds it token bytes no gRPC client would send).
func (s *Server) Service() *service.Service { return s.svc }

// ReadThrough exposes the read-through (tests, stats).
func (s *Server) ReadThrough() *tiers.ReadThrough { return s.rt }

// Run serves on lis (and the ops endpoints, see WithOpsListener) until ctx
// ends, then shuts down in order: health NOT_SERVING (and /readyz 503), still
// serving for the shutdown delay, long-lived streams ended, in-flight calls
// finish (bounded by the shutdown timeout, then cut), background work stops,
// the ops listener closes, Redis and Postgres close. It returns nil after a
// clean shutdown.
func (s *Server) Run(ctx context.Context, lis net.Listener) error {
	s.log.Info("sessiond serving", "addr", lis.Addr().String())
	s.startOps()
	s.startBackground()

	served := make(chan error, 1)
	go func() { served <- s.grpc.Serve(lis) }()
	s.serveCallers()

	var err error
	select {
	case err = <-served:
		err = fmt.Errorf("grpc serve: %w", err)
	case err = <-s.callers.err:
	case <-ctx.Done():
		s.log.Info("shutting down")
	}
	s.shutdown(err == nil)
	return err
}

// shutdown stops the server; delay says it was serving until now, so load
// balancers may still send to it (see delayShutdown).
func (s *Server) shutdown(delay bool) {
	s.health.Shutdown() // NOT_SERVING everywhere, and stays so
	callersStopped := s.stopCallers()
	if delay {
		s.delayShutdown()
	}
	s.drainStreams()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Warn("in-flight calls did not finish in time; closing them", "timeout", s.cfg.ShutdownTimeout)
		s.grpc.Stop()
		<-done
	}
	<-callersStopped
	s.stopBackground()
	s.background.Wait()
	s.rt.Wait() // reads and fills under way end within their timeouts
	s.stopOps()
	s.redis.Close()
	s.pool.Close()
	s.log.Info("stopped")
}
