package server

import (
	"context"
	"errors"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/metrics"
	"github.com/sessiond/sessiond/internal/tiers"
)

// Span attributes sessiond adds. None holds a token, a token hash, a cache
// key or a query parameter.
const (
	attrValid  = attribute.Key("sessiond.valid")
	attrReason = attribute.Key("sessiond.reason")
	attrSource = attribute.Key("sessiond.source")
	attrLocal  = attribute.Key("sessiond.cache.local") // a Redis read answered from process memory
	attrFound  = attribute.Key("sessiond.cache.found")
	attrFills  = attribute.Key("db.operation.batch.size") // fills written in one round trip
)

var redisSystem = attribute.String("db.system.name", "redis")

// tracingServerOptions trace every call but health checks, with the answer
// of ValidateSession on its span; none when tracing is off.
func (s *Server) tracingServerOptions() []grpc.ServerOption {
	if s.ops.tp == nil {
		return nil
	}
	return []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(s.ops.tp),
			otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()), // metrics are Prometheus's
			otelgrpc.WithPropagators(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})),
			otelgrpc.WithFilter(filters.Not(filters.HealthCheck())),
		)),
		grpc.ChainUnaryInterceptor(annotateAnswer),
	}
}

// annotateAnswer puts ValidateSession's answer (never the session or the
// token) on the call's span.
func annotateAnswer(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if r, ok := resp.(*sessiondv1.ValidateSessionResponse); ok && err == nil {
		trace.SpanFromContext(ctx).SetAttributes(
			attrValid.Bool(r.GetValid()), attrReason.String(r.GetReason().String()), attrSource.String(r.GetSource().String()))
	}
	return resp, err
}

// pgTracer is the pool's one pgx tracer: the acquire counter, the query
// timer, and, when tracing is on, otelpgx's spans (statements without their
// parameters: the token hash is one).
func (o *ops) pgTracer(waits *poolWaits) pgx.QueryTracer {
	tracers := []pgx.QueryTracer{waits, pgTimer{o.latency}}
	if o.tp != nil {
		tracers = append(tracers, otelpgx.NewTracer(
			otelpgx.WithTracerProvider(o.tp),
			otelpgx.WithMeterProvider(metricnoop.NewMeterProvider()),
			otelpgx.WithDisableConnectionDetailsInAttributes(),
		))
	}
	return multitracer.New(tracers...)
}

// pgTimer observes each query's duration, and counts failed queries and
// failed connection acquisitions (Postgres down shows as the latter).
type pgTimer struct{ l *metrics.Latency }

var _ pgxpool.AcquireTracer = pgTimer{}

func (t pgTimer) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	return ctx
}

func (t pgTimer) TraceAcquireEnd(_ context.Context, _ *pgxpool.Pool, data pgxpool.TraceAcquireEndData) {
	if data.Err != nil {
		t.l.PostgresErrors.Inc()
	}
}

type pgStartKey struct{}

func (t pgTimer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, pgStartKey{}, time.Now())
}

func (t pgTimer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	if start, ok := ctx.Value(pgStartKey{}).(time.Time); ok {
		t.l.Postgres.Observe(time.Since(start).Seconds())
	}
	if data.Err != nil {
		t.l.PostgresErrors.Inc()
	}
}

// observedCache is the read-through's Redis tier, timed, and traced when
// tracing is on. A lookup answered from process memory is not a round trip:
// it is traced (marked local) but not timed.
type observedCache struct {
	*tiers.Redis
	l      *metrics.Latency
	tracer trace.Tracer // nil: tracing off
}

func (o *ops) observeCache(r *tiers.Redis) observedCache {
	c := observedCache{Redis: r, l: o.latency}
	if o.tp != nil {
		c.tracer = o.tp.Tracer("github.com/sessiond/sessiond/internal/server")
	}
	return c
}

// start begins a client span for op, when tracing is on.
func (c observedCache) start(ctx context.Context, op string) (context.Context, trace.Span) {
	if c.tracer == nil {
		return ctx, nil
	}
	return c.tracer.Start(ctx, "redis "+op, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(redisSystem, attribute.String("db.operation.name", op)))
}

// end ends span, with a fixed error message: a Redis error may name the key,
// which holds a token's hash.
func end(span trace.Span, err error, attrs ...attribute.KeyValue) {
	if span == nil {
		return
	}
	span.SetAttributes(attrs...)
	if err != nil {
		span.SetStatus(otelcodes.Error, "redis call failed")
	}
	span.End()
}

// Cached answers from process memory; it makes the same span as Get when
// it answers, so that every validation shows one "redis get".
func (c observedCache) Cached(ctx context.Context, key string) (tiers.Lookup, bool) {
	l, ok := c.Redis.Cached(ctx, key)
	if ok && c.tracer != nil {
		_, span := c.start(ctx, "get")
		end(span, nil, attrLocal.Bool(l.Local), attrFound.Bool(l.Found()))
	}
	return l, ok
}

func (c observedCache) Get(ctx context.Context, key string, timeout time.Duration) (tiers.Lookup, error) {
	ctx, span := c.start(ctx, "get")
	start := time.Now()
	l, err := c.Redis.Get(ctx, key, timeout)
	if err != nil || !l.Local {
		c.l.RedisGet.Observe(time.Since(start).Seconds())
	}
	end(span, err, attrLocal.Bool(l.Local), attrFound.Bool(l.Found()))
	return l, err
}

// SetFills is one span and one round trip for a batch of fills (see
// ReadThrough's filler), under the trace of the first.
func (c observedCache) SetFills(ctx context.Context, fills []tiers.Fill) ([]tiers.WriteResult, []error) {
	ctx, span := c.start(ctx, "set")
	start := time.Now()
	res, errs := c.Redis.SetFills(ctx, fills)
	c.l.RedisSet.Observe(time.Since(start).Seconds())
	end(span, errors.Join(errs...), attrFills.Int(len(fills)))
	return res, errs
}
