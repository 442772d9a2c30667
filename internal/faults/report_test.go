package faults

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// timeline builds one answer per 10 ms from 0 to 6 s; the fault runs from
// 2 s to 3 s. kind(t) says what the answer done at t ms is.
func answersOver(kind func(t int) (code codes.Code, cached, wrong bool)) ([]Answer, []bool) {
	var as []Answer
	var bad []bool
	for t := 0; t < 6000; t += 10 {
		code, cached, wrong := kind(t)
		src := sessiondv1.Source_SOURCE_POSTGRES
		if cached {
			src = sessiondv1.Source_SOURCE_LOCAL
		}
		// After the fault, every other answer is for a token the baseline never saw.
		tok := int32(0)
		if t >= 3000 && t%20 != 0 {
			tok = 1
		}
		as = append(as, Answer{Sent: ms(t - 1), Done: ms(t), Token: tok, Code: code, Source: src})
		bad = append(bad, wrong || code != codes.OK)
	}
	return as, bad
}

func TestRecovery(t *testing.T) {
	for _, tt := range []struct {
		name string
		kind func(t int) (codes.Code, bool, bool)
		want time.Duration
		ok   bool
	}{
		{"never disturbed", func(int) (codes.Code, bool, bool) { return codes.OK, true, false }, 0, true},
		{"errors until 3.5 s", func(t int) (codes.Code, bool, bool) {
			if t < 3500 {
				return codes.Unavailable, false, false
			}
			return codes.OK, true, false
		}, 500 * time.Millisecond, true},
		{"a wrong answer at 4.2 s", func(t int) (codes.Code, bool, bool) {
			return codes.OK, true, t == 4200
		}, 1250 * time.Millisecond, true},
		{"all misses until 4 s, then hits", func(t int) (codes.Code, bool, bool) {
			return codes.OK, t < 2000 || t >= 4000, false
		}, time.Second, true},
		{"new tokens missing after the fault do not count", func(t int) (codes.Code, bool, bool) {
			return codes.OK, t < 3000 || t%20 == 0, false
		}, 0, true},
		{"errors to the end", func(t int) (codes.Code, bool, bool) {
			return codes.Unavailable, false, false
		}, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			as, bad := answersOver(tt.kind)
			got, ok := Recovery(as, bad, ms(2000), ms(3000))
			if ok != tt.ok || got != tt.want {
				t.Errorf("Recovery = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestP99(t *testing.T) {
	var as []Answer
	for i := 1; i <= 200; i++ {
		as = append(as, Answer{Sent: ms(1000), Done: ms(1000 + i)})
	}
	as = append(as, Answer{Sent: ms(5000), Done: ms(9000)}) // outside the window
	if got := P99(as, ms(0), ms(2000)); got != 198*time.Millisecond {
		t.Errorf("P99 = %v, want 198ms", got)
	}
	if got := P99(nil, ms(0), ms(1)); got != 0 {
		t.Errorf("P99 of nothing = %v", got)
	}
}

func TestMarkdown(t *testing.T) {
	md := Markdown([]Row{
		{Scenario: "1 listener killed", Requests: 10, Checked: 8, Wrong: 1,
			Errors: map[codes.Code]int{codes.Unavailable: 1, codes.DeadlineExceeded: 1}, P99Fault: 1234 * time.Microsecond,
			Recovery: 250 * time.Millisecond, Recovered: true, Notes: "a|b"},
		{Scenario: "2", Recovered: false},
	})
	for _, want := range []string{
		"| 1 listener killed | 10 | 8 | 1 | DEADLINE_EXCEEDED 1, UNAVAILABLE 1 | 1.2ms | 0.25 s | a/b |",
		"| 2 | 0 | 0 | 0 | 0 | 0s | not seen |  |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown:\n%s\nlacks %q", md, want)
		}
	}
}
