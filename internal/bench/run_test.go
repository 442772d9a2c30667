package bench

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// TestOpenLoopMeasuresFromSchedule: one sender, 100 calls/s for 2 s, and
// the first call stalls for 1 s. Every call due during the stall waited
// behind it, and its latency counts from when it was due: call i (due at
// i·10 ms, i < 100) is answered at 1 s, so its latency is 1 s − i·10 ms. A
// closed loop (or a load generator timing from the actual send) would show
// one slow call; here half the calls are slow and p99 is near 1 s.
func TestOpenLoopMeasuresFromSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		res := stalledOpenLoop(t)
		if res.Calls != 200 || res.Wrong != 0 {
			t.Fatalf("calls %d, wrong %d; want 200, 0", res.Calls, res.Wrong)
		}
		l := res.Latency
		// 100 calls at 10 ms … 1000 ms, then 100 at 0 (the fake answers at once).
		if l.Max != 1000 || l.P99 != 980 || l.P90 != 800 || l.P50 != 0 {
			t.Errorf("latency %+v, want max 1000, p99 980, p90 800, p50 0 ms", l)
		}
		if len(res.Series) != 2 || res.Series[0].P99 < 900 || res.Series[1].P99 != 0 {
			t.Errorf("series %+v: want second 0 slow (p99 ≥ 900 ms), second 1 at 0", res.Series)
		}
		if res.Seconds < 1.99 || res.Seconds > 2.01 { // the last call is due at 1.99 s
			t.Errorf("the run took %v s, want 2 (the schedule catches up after the stall)", res.Seconds)
		}
	})
}

// TestOpenLoopKeepsTheRate: with enough senders a slow server does not slow
// the schedule: calls are sent when due and the latency is the server's.
func TestOpenLoopKeepsTheRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
			time.Sleep(50 * time.Millisecond)
			return &sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_NOT_FOUND}, nil
		}
		res, err := Run(t.Context(), NewRanking(nil), Mix{Unknown: 1}, []Caller{slow},
			RunOptions{Duration: time.Second, Rate: 1000, Concurrency: 100, Check: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.Calls != 1000 || res.Latency.Max != 50 || res.Latency.P50 != 50 {
			t.Errorf("calls %d, latency %+v; want 1000 calls all at 50 ms", res.Calls, res.Latency)
		}
	})
}

// TestClosedLoopCountsWrongAnswers: a server that says valid=true to
// everything is caught on every call that is not for a valid session.
func TestClosedLoopCountsWrongAnswers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		liar := func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
			time.Sleep(time.Millisecond)
			return &sessiondv1.ValidateSessionResponse{Valid: true, Session: &sessiondv1.Session{Id: "x"}}, nil
		}
		res, err := Run(t.Context(), NewRanking(fakeTruth(100)), Mix{Hot: 0.5, Unknown: 0.25, Invalid: 0.25}, []Caller{liar},
			RunOptions{Duration: time.Second, Concurrency: 4, Check: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.Calls != 4000 {
			t.Errorf("calls %d, want 4 callers × 1000", res.Calls)
		}
		if res.Wrong != res.Calls { // wrong session id even for valid ones
			t.Errorf("wrong %d of %d calls, want all", res.Wrong, res.Calls)
		}
		if len(res.WrongExamples) != maxWrongExamples {
			t.Errorf("%d examples, want %d", len(res.WrongExamples), maxWrongExamples)
		}
	})
}

func TestRunStopsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		fast := func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
			time.Sleep(time.Millisecond)
			return &sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_NOT_FOUND}, nil
		}
		res, err := Run(ctx, NewRanking(nil), Mix{Unknown: 1}, []Caller{fast},
			RunOptions{Duration: time.Hour, Rate: 100, Concurrency: 2, Check: true})
		if err == nil || res.Calls < 45 || res.Calls > 51 {
			t.Errorf("err %v, calls %d: want the context's error after ~50 calls", err, res.Calls)
		}
	})
}

// TestOpenLoopServiceLatency: in the stalled run of
// TestOpenLoopMeasuresFromSchedule, the time from send to answer is 1 s for
// the stalled call and 0 for every other (they waited before being sent,
// not in the server), and the longest lag between due and sent is that of
// call 1 (due at 10 ms, sent at 1 s).
func TestOpenLoopServiceLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		res := stalledOpenLoop(t)
		if res.Service == nil || res.Service.Max != 1000 || res.Service.P99 != 0 {
			t.Errorf("service latency %+v, want max 1000 ms, p99 0", res.Service)
		}
		if res.MaxSendLagMS != 990 || res.Unsent != 0 {
			t.Errorf("max send lag %v ms, unsent %d; want 990 ms, 0", res.MaxSendLagMS, res.Unsent)
		}
	})
}

// TestOpenLoopDropLate: one sender and a server taking 10 ms cannot send
// 1,000 calls/s. With DropLate the run ends at its duration: about 100
// calls were sent, the rest are counted unsent, and each call sent took the
// server's 10 ms (its latency from due time is far longer).
func TestOpenLoopDropLate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
			time.Sleep(10 * time.Millisecond)
			return &sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_NOT_FOUND}, nil
		}
		res, err := Run(t.Context(), NewRanking(nil), Mix{Unknown: 1}, []Caller{slow},
			RunOptions{Duration: time.Second, Rate: 1000, Concurrency: 1, Check: true, DropLate: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.Calls != 100 || res.Calls+res.Unsent != 1000 {
			t.Errorf("calls %d, unsent %d; want 100 sent of 1000", res.Calls, res.Unsent)
		}
		if res.Seconds != 1 {
			t.Errorf("the run took %v s, want 1", res.Seconds)
		}
		if res.Service.P50 != 10 || res.Service.Max != 10 || res.Latency.Max < 900 {
			t.Errorf("service %+v, latency %+v; want 10 ms to answer, up to ~900 ms from due", res.Service, res.Latency)
		}
	})
}

// stalledOpenLoop runs 2 s of an open loop at 100 calls/s with one sender
// against a server whose first answer takes 1 s and every other none; it
// must run inside a synctest bubble.
func stalledOpenLoop(t *testing.T) Result {
	t.Helper()
	var stalled atomic.Bool
	fake := func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
		if stalled.CompareAndSwap(false, true) {
			time.Sleep(time.Second)
		}
		return &sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_NOT_FOUND}, nil
	}
	res, err := Run(t.Context(), NewRanking(nil), Mix{Unknown: 1}, []Caller{fake},
		RunOptions{Duration: 2 * time.Second, Rate: 100, Concurrency: 1, Check: true})
	if err != nil {
		t.Fatal(err)
	}
	return res
}
