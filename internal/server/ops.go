package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/internal/activity"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/metrics"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/tracing"
	"github.com/sessiond/sessiond/internal/warm"
)

// Paths of the ops listener; deploy/k8s probes them.
const (
	MetricsPath = "/metrics" // Prometheus text or OpenMetrics
	HealthzPath = "/healthz" // liveness: 200 while the process can answer at all
	ReadyzPath  = "/readyz"  // readiness: 200 when gRPC health is SERVING, else 503
)

// Option adds to what New builds.
type Option func(*options)

type options struct {
	opsLis net.Listener
	tp     trace.TracerProvider
}

// WithOpsListener has Run serve /metrics, /healthz and /readyz on lis (nil:
// no ops listener) until the gRPC side has drained.
func WithOpsListener(lis net.Listener) Option { return func(o *options) { o.opsLis = lis } }

// WithTracerProvider traces calls, and the Redis and Postgres calls made for
// them, with tp (nil: no tracing, at no cost).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tp = tp }
}

// ListenOps opens the ops listener on addr (--metrics-addr); nil and no
// error when addr is empty.
func ListenOps(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --metrics-addr %s: %w", addr, err)
	}
	return lis, nil
}

// ops is what operating the server takes: its own metrics registry (never
// the global one), the gRPC metrics, backend latencies, the ops HTTP server,
// and the signal that ends long-lived streams at shutdown.
type ops struct {
	options
	reg     *prometheus.Registry
	grpc    *grpcprom.ServerMetrics
	latency *metrics.Latency
	http    *http.Server

	draining context.Context // ends when long-lived streams must end
	drain    context.CancelFunc
}

func newOps(opts []Option) (*ops, error) {
	o := &ops{reg: prometheus.NewRegistry()}
	o.draining, o.drain = context.WithCancel(context.Background())
	for _, opt := range opts {
		opt(&o.options)
	}
	o.grpc = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(metrics.Buckets)))
	var err error
	if o.latency, err = metrics.NewLatency(o.reg); err != nil {
		return nil, err
	}
	for _, c := range []prometheus.Collector{o.grpc, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := o.reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return o, nil
}

// opsServerOptions come first in the server's options, so that the gRPC
// metrics count every call, refused ones included.
func (s *Server) opsServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.ops.grpc.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(s.ops.grpc.StreamServerInterceptor(), s.endStreamsOnDrain),
	}
	return append(opts, s.tracingServerOptions()...)
}

// registerMetrics registers sessiond's own metrics and the gRPC methods
// (so that each shows at 0 before its first call); call it once every
// service is registered.
func (s *Server) registerMetrics() error {
	if err := metrics.Register(s.ops.reg, metricsSource{s}); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	s.ops.grpc.InitializeMetrics(s.grpc)
	return nil
}

// Metrics is the server's registry (tests gather from it).
func (s *Server) Metrics() prometheus.Gatherer { return s.ops.reg }

// OpsHandler serves the ops endpoints.
func (s *Server) OpsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+MetricsPath, promhttp.HandlerFor(s.ops.reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	// Liveness asks nothing of Postgres or Redis: an instance that cannot
	// reach them still answers cached sessions, and restarting it would
	// lose its cache. What it proves is that the process schedules
	// goroutines and answers HTTP.
	mux.HandleFunc("GET "+HealthzPath, func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET "+ReadyzPath, func(w http.ResponseWriter, r *http.Request) {
		st := s.servingStatus(r.Context())
		if st != healthpb.HealthCheckResponse_SERVING {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, st)
	})
	return mux
}

// servingStatus is what gRPC health says of SessionService.
func (s *Server) servingStatus(ctx context.Context) healthpb.HealthCheckResponse_ServingStatus {
	resp, err := s.health.Check(ctx, &healthpb.HealthCheckRequest{Service: ServiceName})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN
	}
	return resp.GetStatus()
}

// startOps serves the ops endpoints, when there is a listener.
func (s *Server) startOps() {
	if s.ops.opsLis == nil {
		return
	}
	s.ops.http = &http.Server{Handler: s.OpsHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.ops.http.Serve(s.ops.opsLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("ops listener stopped", "error", err)
		}
	}()
	s.log.Info("ops endpoints serving", "addr", s.ops.opsLis.Addr().String(), "paths", []string{MetricsPath, HealthzPath, ReadyzPath})
}

func (s *Server) stopOps() {
	if s.ops.http == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.ops.http.Shutdown(ctx); err != nil {
		_ = s.ops.http.Close()
	}
}

// delayShutdown keeps serving for --shutdown-delay after health turned
// NOT_SERVING, so that load balancers and health-checking clients stop
// sending before the drain. An instance that never was ready has no traffic
// to wait out.
func (s *Server) delayShutdown() {
	select {
	case <-s.ready:
	default:
		return
	}
	if s.cfg.ShutdownDelay <= 0 {
		return
	}
	s.log.Info("NOT_SERVING; serving on while load balancers notice", "shutdown_delay", s.cfg.ShutdownDelay.String())
	time.Sleep(s.cfg.ShutdownDelay)
}

// drainStreams ends the long-lived streams (health Watch, WarmCache
// watchers): they would otherwise hold the graceful stop until its timeout.
func (s *Server) drainStreams() { s.ops.drain() }

// errShuttingDown is what a stream ended by the drain returns: a caller may
// try another instance.
var errShuttingDown = status.Error(codes.Unavailable, "sessiond is shutting down")

// endStreamsOnDrain gives each stream a context that also ends when the
// server starts draining.
func (s *Server) endStreamsOnDrain(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	defer context.AfterFunc(s.ops.draining, cancel)()
	w := middleware.WrapServerStream(ss)
	w.WrappedContext = ctx
	err := handler(srv, w)
	if err != nil && s.ops.draining.Err() != nil && ss.Context().Err() == nil {
		return errShuttingDown
	}
	return err
}

// metricsSource is what the metrics read of the server.
type metricsSource struct{ s *Server }

var _ metrics.Source = metricsSource{}

func (m metricsSource) Answers() *tiers.Counters        { return m.s.rt.Counters() }
func (m metricsSource) Invalidations() int64            { return m.s.redis.Fence().Invalidations() }
func (m metricsSource) Notifications() int64            { return m.s.inval.Notifications() }
func (m metricsSource) Resyncs() int64                  { return m.s.redis.Fence().Resyncs() }
func (m metricsSource) Fence() *tiers.Fence             { return m.s.redis.Fence() }
func (m metricsSource) Heartbeats() int64               { return m.s.inval.Heartbeats() }
func (m metricsSource) WarmTotals() warm.Totals         { return m.s.warmer.Totals() }
func (m metricsSource) LastWarm() (warm.Progress, bool) { return m.s.warmer.Last() }
func (m metricsSource) Activity() activity.Stats        { return m.s.activity.Stats() }
func (m metricsSource) Pool() metrics.PoolStat          { return m.s.pool.Stat() }
func (m metricsSource) PoolPending() int32              { return m.s.waits.n.Load() }
func (m metricsSource) LookupQueries() int64            { return m.s.pg.Queries() }
func (m metricsSource) SlowLookupQueries() int64        { return m.s.pg.SlowQueries() }

func (m metricsSource) Ready() bool {
	return m.s.servingStatus(context.Background()) == healthpb.HealthCheckResponse_SERVING
}

func (m metricsSource) RedisUp() bool {
	c, err := m.s.redis.Client()
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.s.cfg.RedisTimeout)
	defer cancel()
	return c.Do(ctx, c.B().Ping().Build()).Error() == nil
}

// OpsOptions opens what cfg and the environment ask for besides the gRPC
// listener: the ops listener (--metrics-addr) and tracing (the standard
// OTEL_* variables, see package tracing). It returns New's options and a
// release function to call once Run has returned (or New failed), which
// closes the listener and flushes buffered spans.
func OpsOptions(ctx context.Context, cfg config.Config, getenv func(string) string, log *slog.Logger) ([]Option, func(), error) {
	lis, err := ListenOps(cfg.MetricsAddr)
	if err != nil {
		return nil, nil, err
	}
	opts := []Option{WithOpsListener(lis)}
	release := func() {
		if lis != nil {
			_ = lis.Close() // already closed after Run
		}
	}
	tp, err := tracing.FromEnv(ctx, getenv)
	if err != nil {
		release()
		return nil, nil, err
	}
	if tp != nil {
		log.Info("tracing on: spans exported over OTLP (OTEL_* environment)")
		opts = append(opts, WithTracerProvider(tp))
		closeListener := release
		release = func() {
			closeListener()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				log.Warn("tracing: spans not flushed at exit", "error", err)
			}
		}
	}
	return opts, release, nil
}
