package faults

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/bench"
)

// fakeTarget answers "valid" for the raw tokens it knows, not found for the
// rest, and counts what it was sent.
type fakeTarget struct {
	mu   sync.Mutex
	seen map[string]int
}

func (f *fakeTarget) caller(known map[string]bool) bench.Caller {
	return func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
		f.mu.Lock()
		f.seen[token]++
		f.mu.Unlock()
		if token == "slow" {
			<-ctx.Done()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		if known[token] {
			return &sessiondv1.ValidateSessionResponse{Valid: true, Source: sessiondv1.Source_SOURCE_LOCAL,
				Session: &sessiondv1.Session{Id: sid, UserId: uid}}, nil
		}
		return &sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_NOT_FOUND}, nil
	}
}

func TestLoadRecordsEveryCallAtACappedRate(t *testing.T) {
	table := &Table{}
	good := table.Add("good-token", &Token{Kind: "valid", SessionID: sid, UserID: uid, Timeline: Timeline{Initial: Valid}})
	slow := table.Add("slow", &Token{Kind: "valid", SessionID: sid, UserID: uid, Timeline: Timeline{Initial: Valid}})
	known := map[string]bool{"good-token": true}
	a, b := &fakeTarget{seen: map[string]int{}}, &fakeTarget{seen: map[string]int{}}
	l := NewLoad(table, 50*time.Millisecond)
	l.SetTargets(&Target{Name: "a", Callers: []bench.Caller{a.caller(known)}}, &Target{Name: "b", Callers: []bench.Caller{b.caller(known)}})
	l.SetMix(Mix{Draws: []Draw{{Weight: 8, Tokens: []int32{good}}, {Weight: 1, Tokens: []int32{slow}}, {Weight: 5}}, Fresh: 1})

	const workers, rate, run = 4, 400.0, 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), run)
	defer cancel()
	start := time.Now()
	l.Run(ctx, workers, rate, 1)
	elapsed := time.Since(start)
	answers := l.Drain()

	// Never more than the schedule allows: one call per worker per interval.
	if max := int(rate*elapsed.Seconds()) + workers; len(answers) > max {
		t.Errorf("%d calls in %v, more than the cap of %d", len(answers), elapsed, max)
	}
	if len(answers) == 0 {
		t.Fatal("no calls")
	}
	byInstance, byToken := map[string]int{}, map[int32]int{}
	for _, ans := range answers {
		byInstance[ans.Instance]++
		byToken[ans.Token]++
		want := bench.Right
		if ans.Token == slow {
			want = bench.Failed // the fake holds "slow" past the deadline
			if ans.Code != codes.DeadlineExceeded {
				t.Errorf("slow token answered %v, want DEADLINE_EXCEEDED", ans.Code)
			}
		}
		if got := table.Judge(ans); got != want {
			t.Errorf("answer %+v judged %v, want %v", ans, got, want)
		}
	}
	if byInstance["a"] == 0 || byInstance["b"] == 0 {
		t.Errorf("calls by instance %v: want both", byInstance)
	}
	if byToken[good] == 0 || byToken[Fresh] == 0 {
		t.Errorf("calls by token %v: want the good token and fresh ones", byToken)
	}
	if a.seen["good-token"]+b.seen["good-token"] != byToken[good] {
		t.Errorf("targets saw %d calls for the good token, the load recorded %d", a.seen["good-token"]+b.seen["good-token"], byToken[good])
	}
	if len(l.Drain()) != 0 {
		t.Error("Drain twice returned answers twice")
	}

	sw := l.Sweep([]*Target{{Name: "a", Callers: []bench.Caller{a.caller(known)}}}, []int32{good, good, good}, 2)
	if len(sw) != 3 || len(l.Drain()) != 3 {
		t.Errorf("Sweep of 3 tokens on 1 target: %d answers", len(sw))
	}
}
