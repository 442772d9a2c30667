package faults

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/bench"
)

// ms is a time on a hand-made timeline: t0 + n milliseconds.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

const (
	sid = "0d4f4a5e-8d0c-4b0e-9a57-3e1f7b2c9d10"
	uid = "6b1e2f3a-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
)

// banAt1000 is a valid session whose user is banned by a commit sent at
// 1000 ms that returned at 1010 ms, with the default lag of 500 ms.
func banAt1000() *Token {
	return &Token{Kind: "valid", SessionID: sid, UserID: uid, Timeline: Timeline{
		Initial: Valid,
		Changes: []Change{{Before: ms(1000), After: ms(1010), Lag: 500 * time.Millisecond, To: UserBanned, What: "ban user"}},
	}}
}

func valid(src sessiondv1.Source) Answer {
	return Answer{Code: codes.OK, Valid: true, Source: src, SessionID: sid, UserID: uid}
}

func invalid(r sessiondv1.Reason) Answer {
	return Answer{Code: codes.OK, Reason: r, Source: sessiondv1.Source_SOURCE_POSTGRES}
}

func TestJudge(t *testing.T) {
	banned := invalid(sessiondv1.Reason_REASON_USER_BANNED)
	validLocal := valid(sessiondv1.Source_SOURCE_LOCAL)
	for _, tt := range []struct {
		name       string
		tok        *Token
		a          Answer
		sent, done int
		want       bench.Verdict
	}{
		// The old state: acceptable while sent - lag < commit returned.
		{"valid long before the ban", banAt1000(), validLocal, 100, 101, bench.Right},
		{"valid, sent while the commit ran", banAt1000(), validLocal, 1005, 1006, bench.Right},
		{"valid, sent within the lag after the commit returned", banAt1000(), validLocal, 1509, 1510, bench.Right},
		{"valid, sent exactly lag after the commit returned", banAt1000(), validLocal, 1510, 1511, bench.Wrong},
		{"valid, sent past the lag", banAt1000(), validLocal, 1600, 1601, bench.Wrong},
		{"valid, a slow call sent within the lag", banAt1000(), validLocal, 1400, 3000, bench.Right},
		// The new state: acceptable once the answer came after COMMIT was sent.
		{"banned, answered before COMMIT was sent", banAt1000(), banned, 900, 999, bench.Wrong},
		{"banned, answered exactly when COMMIT was sent", banAt1000(), banned, 900, 1000, bench.Wrong},
		{"banned, answered while the commit ran", banAt1000(), banned, 900, 1001, bench.Right},
		{"banned after the commit", banAt1000(), banned, 2000, 2001, bench.Right},
		// A reason other than the truth's is wrong whenever it comes.
		{"deleted instead of banned", banAt1000(), invalid(sessiondv1.Reason_REASON_USER_DELETED), 2000, 2001, bench.Wrong},
		{"not found for a valid session", banAt1000(), invalid(sessiondv1.Reason_REASON_NOT_FOUND), 100, 101, bench.Wrong},
		{"valid with another user's session", banAt1000(),
			Answer{Code: codes.OK, Valid: true, SessionID: sid, UserID: "00000000-0000-0000-0000-000000000001"}, 100, 101, bench.Wrong},
		{"valid without a session", banAt1000(), Answer{Code: codes.OK, Valid: true}, 100, 101, bench.Wrong},
		// Errors are never wrong answers, but INVALID_ARGUMENT for a well-formed token is.
		{"unavailable", banAt1000(), Answer{Code: codes.Unavailable}, 2000, 2001, bench.Failed},
		{"deadline exceeded", banAt1000(), Answer{Code: codes.DeadlineExceeded}, 2000, 3000, bench.Failed},
		{"internal", banAt1000(), Answer{Code: codes.Internal}, 2000, 2001, bench.Failed},
		{"invalid argument", banAt1000(), Answer{Code: codes.InvalidArgument}, 2000, 2001, bench.Wrong},
		// A fresh random token is never found.
		{"fresh: not found", nil, invalid(sessiondv1.Reason_REASON_NOT_FOUND), 1, 2, bench.Right},
		{"fresh: valid", nil, validLocal, 1, 2, bench.Wrong},
		{"fresh: unavailable", nil, Answer{Code: codes.Unavailable}, 1, 2, bench.Failed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.a
			a.Sent, a.Done = ms(tt.sent), ms(tt.done)
			if got := Judge(a, tt.tok); got != tt.want {
				t.Errorf("Judge = %v, want %v", got, tt.want)
			}
		})
	}
}

// truncateAndRestore is a session removed by TRUNCATE at 1000 ms and put
// back at 4000 ms: the answer must follow both, each within the lag.
func truncateAndRestore() *Token {
	lag := 500 * time.Millisecond
	return &Token{Kind: "valid", SessionID: sid, UserID: uid, Timeline: Timeline{
		Initial: Valid,
		Changes: []Change{
			{Before: ms(1000), After: ms(1020), Lag: lag, To: NotFound, What: "truncate"},
			{Before: ms(4000), After: ms(4100), Lag: lag, To: Valid, What: "re-insert"},
		},
	}}
}

func TestJudgeTwoChanges(t *testing.T) {
	validRedis := valid(sessiondv1.Source_SOURCE_REDIS)
	notFound := invalid(sessiondv1.Reason_REASON_NOT_FOUND)
	for _, tt := range []struct {
		name       string
		a          Answer
		sent, done int
		want       bench.Verdict
	}{
		{"valid before the truncate", validRedis, 500, 501, bench.Right},
		{"valid within the truncate's lag", validRedis, 1500, 1501, bench.Right},
		{"valid while truncated: resurrected", validRedis, 2000, 2001, bench.Wrong},
		{"valid just before the restore's commit", validRedis, 3999, 3999, bench.Wrong},
		{"valid, answered while the restore committed", validRedis, 3990, 4001, bench.Right},
		{"valid after the restore", validRedis, 5000, 5001, bench.Right},
		{"not found while truncated", notFound, 2000, 2001, bench.Right},
		{"not found within the restore's lag", notFound, 4550, 4560, bench.Right},
		{"not found past the restore's lag", notFound, 4600, 4610, bench.Wrong},
		{"not found, answered before the truncate", notFound, 900, 999, bench.Wrong},
		{"a call spanning all three states", notFound, 900, 5000, bench.Right},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.a
			a.Sent, a.Done = ms(tt.sent), ms(tt.done)
			if got := Judge(a, truncateAndRestore()); got != tt.want {
				t.Errorf("Judge = %v, want %v", got, tt.want)
			}
		})
	}
}

// A change whose lag outlasts the next change keeps the oldest state
// acceptable while it runs: each change's lag bounds only the state it ended.
func TestAcceptableOverlappingLags(t *testing.T) {
	tl := Timeline{Initial: Valid, Changes: []Change{
		{Before: ms(1000), After: ms(1001), Lag: 2 * time.Second, To: UserBanned},
		{Before: ms(1500), After: ms(1501), Lag: 100 * time.Millisecond, To: UserDeleted},
	}}
	got := tl.Acceptable(ms(1700), ms(1701))
	want := []State{Valid, UserDeleted}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Acceptable = %v, want %v", got, want)
	}
	if cur := tl.Current(); cur != UserDeleted {
		t.Errorf("Current = %v, want %v", cur, UserDeleted)
	}
}

// Whatever the call's times, some state is acceptable: every answer gets a
// verdict from the truth, none is skipped.
func TestAcceptableNeverEmpty(t *testing.T) {
	tl := truncateAndRestore().Timeline
	for sent := 0; sent < 6000; sent += 37 {
		for _, d := range []int{0, 1, 50, 700, 3000} {
			if got := tl.Acceptable(ms(sent), ms(sent+d)); len(got) == 0 {
				t.Fatalf("no acceptable state for a call sent at %d ms, answered %d ms later", sent, d)
			}
		}
	}
}

func TestDescribe(t *testing.T) {
	tok := banAt1000()
	a := valid(sessiondv1.Source_SOURCE_LOCAL)
	a.Instance, a.Sent, a.Done = "b", ms(2000), ms(2003)
	got := Describe(a, tok, ms(1000))
	for _, want := range []string{
		"valid token of session " + sid, "user " + uid, "on b", "got valid=true from SOURCE_LOCAL",
		"sent +1.000s, answered +1.003s", "user_banned (ban user committed in [+0.000s, +0.010s])",
		"acceptable for calls sent before +0.510s (lag 500ms)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Describe = %q\nlacks %q", got, want)
		}
	}
}
