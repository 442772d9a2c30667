package server

import (
	"context"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sessiond/sessiond/internal/service"
)

// poolWaits counts the callers waiting for a Postgres connection: pgxpool
// reports only a cumulative count of empty acquires, and the guide's
// pool.pending is how many wait now.
type poolWaits struct{ n atomic.Int32 }

var _ pgxpool.AcquireTracer = (*poolWaits)(nil)

func (w *poolWaits) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	w.n.Add(1)
	return ctx
}

func (w *poolWaits) TraceAcquireEnd(context.Context, *pgxpool.Pool, pgxpool.TraceAcquireEndData) {
	w.n.Add(-1)
}

// pgx requires a pool tracer to be a query tracer too; it traces nothing.
func (w *poolWaits) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (w *poolWaits) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// stats gathers what GetStats reports besides warming.
func (s *Server) stats() service.Stats {
	c := s.rt.Counters()
	ps := s.pool.Stat()
	_, err := s.redis.Client()
	return service.Stats{
		CacheEnabled:  err == nil,
		CacheTTL:      s.cfg.CacheTTL,
		LocalHits:     c.LocalHits.Load(),
		RedisHits:     c.RedisHits.Load(),
		NegativeHits:  c.NegativeHits.Load(),
		Invalidations: s.redis.Fence().Invalidations(),
		Misses:        c.Misses.Load(),
		PostgresReads: c.PostgresReads.Load(),
		LookupQueries: s.pg.Queries(),
		Resyncs:       s.redis.Fence().Resyncs(),
		Notifications: s.inval.Notifications(),
		Errors:        c.Errors.Load(),
		PoolSize:      ps.TotalConns(),
		PoolAvailable: ps.IdleConns(),
		PoolPending:   s.waits.n.Load(),
	}
}
