package server

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/sessiond/sessiond/internal/warm"
)

// startBackground starts the startup warm (which alone turns health to
// SERVING) and the periodic re-warm.
func (s *Server) startBackground() {
	s.background.Go(func() { s.redis.Fence().Run(s.bg) })
	s.background.Go(func() { _ = s.inval.Run(s.bg, s.cfg.Invalidation) })
	s.background.Go(func() {
		if err := s.activity.Run(s.bg); err != nil {
			s.log.Warn("session activity not written at shutdown", "error", err)
		}
	})
	if s.cfg.WarmOnStart {
		s.background.Go(func() { s.warmOnStart(s.bg) })
	} else {
		// Even unwarmed, an instance is ready only once it hears
		// invalidations (its listener covers).
		s.background.Go(func() {
			select {
			case <-s.inval.Ready():
				s.setServing(true)
			case <-s.bg.Done():
			}
		})
	}
	if s.cfg.RewarmInterval > 0 {
		s.background.Go(func() { s.rewarmLoop(s.bg) })
	}
}

// errRetryWarm marks a startup run worth running again.
var errRetryWarm = errors.New("startup warm must be retried")

// warmOnStart runs the startup warm and turns health to SERVING when it ends:
// done, timed out, or failed on Redis (Postgres answers meanwhile, so the
// instance is useful). When Postgres cannot be reached, nothing uncached can
// be answered: health stays NOT_SERVING and the warm is retried with
// exponential backoff until it gets through or the server stops.
func (s *Server) warmOnStart(ctx context.Context) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 200*time.Millisecond, 10*time.Second
	p, err := backoff.Retry(ctx, func() (warm.Progress, error) {
		// Warm only once invalidations are heard (a bump the listener may
		// need to cover would otherwise drop what this run writes).
		select {
		case <-s.inval.Ready():
		case <-ctx.Done():
			return warm.Progress{}, backoff.Permanent(ctx.Err())
		case <-time.After(s.cfg.PostgresTimeout):
			s.log.Warn("startup warm: the invalidation listener is not connected yet; staying NOT_SERVING and retrying")
			return warm.Progress{}, errRetryWarm
		}
		// What another instance already cached in this generation is left
		// as it is: a new instance beside warm ones writes nothing twice.
		run, _ := s.warmer.Start(warm.Request{Phase: warm.PhaseStartup, KeepCached: true}, true)
		select {
		case <-run.Done():
		case <-ctx.Done():
			return warm.Progress{}, backoff.Permanent(ctx.Err())
		}
		p := run.Snapshot()
		switch {
		case p.Outcome == warm.Failed && errors.Is(p.Err, warm.ErrPostgres):
			s.log.Warn("startup warm: postgres unreachable; staying NOT_SERVING and retrying", "error", p.Err)
			return p, errRetryWarm
		case p.Outcome == warm.Canceled && ctx.Err() == nil:
			// It joined a run started by a caller who then hung up.
			return p, errRetryWarm
		}
		return p, nil
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0))
	if err != nil {
		return // shutting down
	}
	if p.Outcome == warm.Failed {
		s.log.Warn("startup warm failed on redis; SERVING from postgres until redis is back", "error", p.Err)
	}
	s.setServing(true)
	s.log.Info("ready: health SERVING", "warm_outcome", p.Outcome.String(), "warmed", p.Warmed, "kept", p.Kept, "total", p.Total)
	switch {
	case !s.cfg.WarmBackground || p.Outcome != warm.Completed:
	case p.Total < s.cfg.WarmCount:
		// The count found fewer warmable sessions than the startup warm
		// was allowed: it took the whole window, and a background pass
		// would only read every entry again.
		s.log.Info("startup warm took the whole window: no background phase", "total", p.Total)
	default:
		s.warmBackground(ctx)
	}
}

// backgroundBatch is the batch size of the background phase. The phase
// paces itself by Redis's round trip, not by a fixed pause, so it runs
// almost unpaused on a steady Redis; a batch's script holds Redis for
// about 6 µs per session, and 250 keeps that under 2 ms for the callers
// queued behind it. In `sessionbench coldstart` (32 callers from SERVING)
// batches of 1,000 finished the phase in 0.8–1.4 s but raised the callers'
// p99 in those seconds (45.5 and 32.0 ms in seconds 0 and 1, medians of 3);
// batches of 250 finished in 1.7–2.1 s at 25.6 and 17.2 ms, as with the
// earlier pacer (32.8 and 17.7 ms), which took 5 s to over 10 s.
const backgroundBatch = 250

// warmBackground warms the rest of the window after SERVING: every warmable
// session, what is already cached in this generation left as it is, paced so
// that callers' reads through Redis are not held up (see warm.Request.Paced).
func (s *Server) warmBackground(ctx context.Context) {
	run, joined := s.warmer.Start(warm.Request{Phase: warm.PhaseBackground, Count: math.MaxInt32,
		BatchSize: backgroundBatch, KeepCached: true, Paced: true}, true)
	if joined {
		return // someone's run goes on; theirs stands
	}
	select {
	case <-run.Done():
	case <-ctx.Done():
	}
}

// rewarmLoop checks the hit rate every RewarmInterval and re-warms below the
// threshold, as the guide's periodic re-warming does.
func (s *Server) rewarmLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.RewarmInterval)
	defer t.Stop()
	var last HitCount
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			last = s.RewarmOnce(last)
		}
	}
}

// HitCount is a reading of the answer counters.
type HitCount struct{ hits, answers int64 }

// RewarmOnce compares the counters with the previous reading, starts a
// background warm if the hit rate since then is under the threshold, and
// returns the new reading. With no answers since, there is nothing to judge
// and it does nothing.
func (s *Server) RewarmOnce(prev HitCount) HitCount {
	st := s.stats()
	hits := st.LocalHits + st.RedisHits + st.NegativeHits
	now := HitCount{hits: hits, answers: hits + st.Misses}
	answers := now.answers - prev.answers
	if answers <= 0 {
		return now
	}
	rate := 100 * float64(now.hits-prev.hits) / float64(answers)
	if rate < s.cfg.RewarmThreshold {
		run, joined := s.warmer.Start(warm.Request{Phase: warm.PhaseRewarm, KeepCached: true}, true)
		s.log.Info("hit rate under threshold: re-warming", "hit_rate", rate, "threshold", s.cfg.RewarmThreshold,
			"answers", answers, "run_id", run.ID(), "joined_running", joined)
	}
	return now
}
