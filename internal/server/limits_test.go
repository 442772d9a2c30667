package server_test

import (
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// The admin calls' caps (README, API): a caller cannot make one call that
// stalls Redis or Postgres for everyone.
func TestAdminCallsBounded(t *testing.T) {
	h := start(t, devtest.Database(t), devtest.RedisURL(t))
	h.addActive(3)

	t.Run("batch_size at most 5000", func(t *testing.T) {
		for _, n := range []int32{5001, 100_000} {
			_, err := h.warm(t.Context(), &sessiondv1.WarmCacheRequest{BatchSize: n})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "5000") {
				t.Errorf("batch_size %d: %v, want InvalidArgument naming the cap", n, err)
			}
		}
		msgs := h.mustWarm(&sessiondv1.WarmCacheRequest{BatchSize: 5000})
		if last := msgs[len(msgs)-1]; last.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED || last.GetWarmed() != 3 {
			t.Errorf("batch_size 5000: %v, want 3 warmed", last)
		}
	})

	t.Run("concurrent estimates agree", func(t *testing.T) {
		var wg sync.WaitGroup
		totals := make([]int32, 10)
		for i := range totals {
			wg.Go(func() {
				msgs, err := h.warm(t.Context(), &sessiondv1.WarmCacheRequest{EstimateOnly: true})
				if err != nil || len(msgs) != 1 {
					t.Errorf("estimate: %v %v", msgs, err)
					return
				}
				totals[i] = msgs[0].GetTotal()
			})
		}
		wg.Wait()
		for i, n := range totals {
			if n != 3 {
				t.Errorf("estimate %d: %d, want 3", i, n)
			}
		}
	})

	t.Run("at most 1000 tokens per InvalidateSessions", func(t *testing.T) {
		tokens := make([]string, 1001)
		for i := range tokens {
			tokens[i] = newToken(t)
		}
		_, err := h.client.InvalidateSessions(t.Context(), &sessiondv1.InvalidateSessionsRequest{Tokens: tokens})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "1000") {
			t.Errorf("1001 tokens: %v, want InvalidArgument naming the cap", err)
		}
		if _, err := h.client.InvalidateSessions(t.Context(), &sessiondv1.InvalidateSessionsRequest{Tokens: tokens[:1000]}); err != nil {
			t.Errorf("1000 tokens: %v", err)
		}
	})
}
