package service

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/invalidate"
	"github.com/sessiond/sessiond/internal/tiers"
	"github.com/sessiond/sessiond/internal/warm"
)

// warmer is what the admin RPCs need of warming.
type warmer interface {
	StartWatching(req warm.Request) (r *warm.Run, progress <-chan warm.Progress, unwatch func(), joined bool)
	Estimate(ctx context.Context, count int) (int, error)
	Last() (warm.Progress, bool)
	Config() warm.Config
}

var _ warmer = (*warm.Warmer)(nil)

// Stats is the server's state that GetStats reports besides warming.
type Stats struct {
	CacheEnabled  bool
	CacheTTL      time.Duration
	LocalHits     int64
	RedisHits     int64
	NegativeHits  int64
	Misses        int64
	PostgresReads int64
	LookupQueries int64 // the queries they took (lookups may share one)
	Resyncs       int64
	Notifications int64
	Errors        int64
	Invalidations int64
	PoolSize      int32
	PoolAvailable int32
	PoolPending   int32
}

// maxWarmCount bounds one request's count; a bigger warm is a config change.
const maxWarmCount = 50_000_000

// WarmCache streams a warming run's progress; see the proto for the contract.
// A caller who arrives while a run goes on watches that run. A caller who
// hangs up cancels the run only when nobody else watches it.
func (s *Service) WarmCache(req *sessiondv1.WarmCacheRequest, stream grpc.ServerStreamingServer[sessiondv1.WarmCacheProgress]) error {
	ctx := stream.Context()
	if req.GetCount() < 0 || req.GetCount() > maxWarmCount {
		return status.Errorf(codes.InvalidArgument, "count %d: want 0 (the server's default) to %d", req.GetCount(), maxWarmCount)
	}
	if req.GetBatchSize() < 0 || req.GetBatchSize() > warm.MaxBatchSize {
		return status.Errorf(codes.InvalidArgument, "batch_size %d: want 0 (the server's default) to %d (one batch is one Redis call)", req.GetBatchSize(), warm.MaxBatchSize)
	}
	if req.GetEstimateOnly() {
		start := time.Now()
		n, err := s.w.Estimate(ctx, int(req.GetCount()))
		if err != nil {
			return toStatus(ctx, s.errs, "WarmCache", err)
		}
		return stream.Send(&sessiondv1.WarmCacheProgress{
			Total: int32(n), Done: true, Outcome: sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED,
			Elapsed: durationpb.New(time.Since(start)),
		})
	}
	wreq := warm.Request{Count: int(req.GetCount()), BatchSize: int(req.GetBatchSize())}
	if d := req.GetBatchDelay(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return status.Error(codes.InvalidArgument, "batch_delay: want a non-negative duration")
		}
		delay := d.AsDuration()
		wreq.BatchDelay = &delay
	}
	_, progress, unwatch, _ := s.w.StartWatching(wreq)
	defer unwatch()
	for {
		select {
		case p, ok := <-progress:
			if !ok {
				return nil
			}
			if err := stream.Send(progressToProto(p)); err != nil {
				return err
			}
		case <-ctx.Done():
			return toStatus(ctx, s.errs, "WarmCache", ctx.Err())
		}
	}
}

// GetStats reports what the guide's getCacheWarmingStats() does.
func (s *Service) GetStats(ctx context.Context, _ *sessiondv1.GetStatsRequest) (*sessiondv1.GetStatsResponse, error) {
	st := s.stats()
	hits := st.LocalHits + st.RedisHits + st.NegativeHits
	var rate float64
	if n := hits + st.Misses; n > 0 {
		rate = 100 * float64(hits) / float64(n)
	}
	cfg := s.w.Config()
	resp := &sessiondv1.GetStatsResponse{
		Cache: &sessiondv1.CacheStats{
			Enabled: st.CacheEnabled, HitRate: rate, Hits: hits, Misses: st.Misses, Errors: st.Errors,
			Invalidations: st.Invalidations, TtlSeconds: int64(st.CacheTTL.Seconds()),
			LocalHits: st.LocalHits, RedisHits: st.RedisHits, NegativeHits: st.NegativeHits,
			PostgresQueries: st.PostgresReads, PostgresRoundTrips: st.LookupQueries,
			Resyncs: st.Resyncs, Notifications: st.Notifications,
		},
		Pool: &sessiondv1.PoolStats{Size: st.PoolSize, Available: st.PoolAvailable, Pending: st.PoolPending},
		Config: &sessiondv1.WarmingConfig{
			DefaultSessionCount: int32(cfg.Count), BatchSize: int32(cfg.BatchSize),
			BatchDelay: durationpb.New(cfg.BatchDelay), RecentWindowHours: int32(cfg.Window.Hours()),
			MaxWarmingTime: durationpb.New(cfg.Timeout),
		},
	}
	if p, ok := s.w.Last(); ok {
		run := &sessiondv1.WarmingRun{
			StartedAt: timestamppb.New(p.StartedAt), Total: int32(p.Total), Warmed: int32(p.Warmed),
			Failed: int32(p.Failed), Outcome: outcomeToProto(p.Outcome), Error: runError(p),
			Skipped: int32(p.Skipped), Kept: int32(p.Kept), Phase: string(p.Phase),
		}
		if p.Done {
			run.FinishedAt = timestamppb.New(p.FinishedAt)
		}
		resp.LastWarming = run
	}
	return resp, nil
}

func progressToProto(p warm.Progress) *sessiondv1.WarmCacheProgress {
	return &sessiondv1.WarmCacheProgress{
		Total: int32(p.Total), Warmed: int32(p.Warmed), Failed: int32(p.Failed), Done: p.Done,
		EstimatedHitRate: p.EstimatedHitRate(), Elapsed: durationpb.New(p.Elapsed),
		Outcome: outcomeToProto(p.Outcome), Error: runError(p), Batches: int32(p.Batches), RunId: p.RunID,
		Skipped: int32(p.Skipped), Kept: int32(p.Kept), Phase: string(p.Phase),
	}
}

func outcomeToProto(o warm.Outcome) sessiondv1.WarmOutcome {
	switch o {
	case warm.Completed:
		return sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED
	case warm.TimedOut:
		return sessiondv1.WarmOutcome_WARM_OUTCOME_TIMED_OUT
	case warm.Canceled:
		return sessiondv1.WarmOutcome_WARM_OUTCOME_CANCELED
	case warm.Failed:
		return sessiondv1.WarmOutcome_WARM_OUTCOME_FAILED
	}
	return sessiondv1.WarmOutcome_WARM_OUTCOME_UNSPECIFIED
}

// invalidator is what InvalidateSessions needs.
type invalidator interface {
	User(ctx context.Context, userID string) (int64, error)
	Token(ctx context.Context, token string) (int64, error)
}

var _ invalidator = (*invalidate.Invalidator)(nil)

// maxInvalidateTokens bounds one InvalidateSessions request.
const maxInvalidateTokens = 1000

// InvalidateSessions drops cached sessions by token and/or user, for
// applications that cannot install the triggers. Once it returns OK, no
// instance answers valid=true from a copy older than the call (see
// tiers.Redis.DropKey). It is all or nothing from the caller's point of
// view: on UNAVAILABLE (Redis unreachable) retry it; meanwhile this instance
// believes nothing cached.
func (s *Service) InvalidateSessions(ctx context.Context, req *sessiondv1.InvalidateSessionsRequest) (*sessiondv1.InvalidateSessionsResponse, error) {
	if len(req.GetTokens()) == 0 && req.GetUserId() == "" {
		return nil, status.Error(codes.InvalidArgument, "give tokens, a user_id, or both")
	}
	if len(req.GetTokens()) > maxInvalidateTokens {
		return nil, status.Errorf(codes.InvalidArgument, "%d tokens: at most %d per call", len(req.GetTokens()), maxInvalidateTokens)
	}
	for i, tok := range req.GetTokens() {
		if err := tiers.CheckToken(tok); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "tokens[%d]: %v", i, err)
		}
	}
	if uid := req.GetUserId(); uid != "" && !isUUID(uid) {
		return nil, status.Error(codes.InvalidArgument, "user_id: want a UUID")
	}
	var n int64
	for _, tok := range req.GetTokens() {
		k, err := s.inv.Token(ctx, tok)
		if err != nil {
			s.errs.warn(ctx, "InvalidateSessions", err)
			return nil, status.Error(codes.Unavailable, msgRedisUnavailable)
		}
		n += k
	}
	if uid := req.GetUserId(); uid != "" {
		k, err := s.inv.User(ctx, strings.ToLower(uid))
		if err != nil {
			s.errs.warn(ctx, "InvalidateSessions", err)
			return nil, status.Error(codes.Unavailable, msgRedisUnavailable)
		}
		n += k
	}
	return &sessiondv1.InvalidateSessionsResponse{Invalidated: int32(n)}, nil
}

// isUUID accepts the 8-4-4-4-12 hex form, any case.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return false
		}
	}
	return true
}
