package faults

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// Recovery is measured on the answers around a fault:
//
//   - the baseline tokens are those the load had an OK answer for in the
//     BaselineWindow before the fault began, and the baseline hit share is
//     the share of those answers that came from a cache (SOURCE_LOCAL or
//     SOURCE_REDIS). Hit shares after the fault count the answers for these
//     tokens only: a token first drawn after the fault (the load's long tail
//     over every session) measures how much of the whole table is cached,
//     which only a re-warm restores, not whether the cache serves its
//     traffic again (with no OK answer before the fault, all count);
//   - the service has recovered at the earliest instant t at or after the
//     fault's end (on a RecoveryStep grid) after which no answer until the
//     end of the observation is a caller error or wrong, and such that at
//     least minWindowAnswers answers for baseline tokens in
//     [t, t + RecoveryWindow) are OK and their hit share is at least the
//     baseline minus RecoveredHitSlack;
//   - the time to recover is t minus the fault's end: 0 when the service
//     answered well from the first instant after the fault.
const (
	BaselineWindow    = 2 * time.Second
	RecoveryWindow    = time.Second
	RecoveryStep      = 50 * time.Millisecond
	RecoveredHitSlack = 0.02
	minWindowAnswers  = 10
	minBaseline       = 50 // fewer baseline answers than this: only error-free counts
)

// BaselineTokens is the set of tokens (Fresh excluded) with an OK answer done
// in [from, to).
func BaselineTokens(answers []Answer, from, to time.Time) map[int32]bool {
	set := map[int32]bool{}
	for _, a := range answers {
		if a.Code == codes.OK && a.Token != Fresh && !a.Done.Before(from) && a.Done.Before(to) {
			set[a.Token] = true
		}
	}
	return set
}

// HitShare is the share of OK answers done in [from, to) that came from a
// cache, and how many OK answers there were; keep, if not nil, selects the
// answers counted.
func HitShare(answers []Answer, from, to time.Time, keep func(Answer) bool) (float64, int) {
	ok, hits := 0, 0
	for _, a := range answers {
		if a.Code != codes.OK || a.Done.Before(from) || !a.Done.Before(to) || (keep != nil && !keep(a)) {
			continue
		}
		ok++
		if a.FromCache() {
			hits++
		}
	}
	if ok == 0 {
		return 0, 0
	}
	return float64(hits) / float64(ok), ok
}

// Recovery returns the time to recover after a fault that ran from start to
// end (see the constants above), and false if the answers given do not show
// a recovery. bad[i] says whether answers[i] was a caller error or wrong.
func Recovery(answers []Answer, bad []bool, start, end time.Time) (time.Duration, bool) {
	tokens := BaselineTokens(answers, start.Add(-BaselineWindow), start)
	baseline, n := HitShare(answers, start.Add(-BaselineWindow), start, nil)
	if n < minBaseline {
		baseline = 0
	}
	idx := make([]int, 0, len(answers))
	for i, a := range answers {
		if !a.Done.Before(end) {
			idx = append(idx, i)
		}
	}
	slices.SortFunc(idx, func(i, j int) int { return answers[i].Done.Compare(answers[j].Done) })
	if len(idx) == 0 {
		return 0, false
	}
	last := answers[idx[len(idx)-1]].Done
	t := end
	for _, i := range idx {
		if bad[i] && !answers[i].Done.Before(t) {
			// Recovery starts on the grid after the last bad answer.
			steps := answers[i].Done.Sub(end)/RecoveryStep + 1
			t = end.Add(steps * RecoveryStep)
		}
	}
	lo := 0 // first answer done at or after t
	for ; !t.Add(RecoveryWindow).After(last); t = t.Add(RecoveryStep) {
		for lo < len(idx) && answers[idx[lo]].Done.Before(t) {
			lo++
		}
		okCount, hits := 0, 0
		for _, i := range idx[lo:] {
			a := answers[i]
			if !a.Done.Before(t.Add(RecoveryWindow)) {
				break
			}
			if a.Code == codes.OK && (len(tokens) == 0 || tokens[a.Token]) {
				okCount++
				if a.FromCache() {
					hits++
				}
			}
		}
		if okCount >= minWindowAnswers && float64(hits)/float64(okCount) >= baseline-RecoveredHitSlack {
			return t.Sub(end), true
		}
	}
	return 0, false
}

// P99 is the 99th percentile latency of the calls sent in [from, to],
// whatever their answer.
func P99(answers []Answer, from, to time.Time) time.Duration {
	var lat []time.Duration
	for _, a := range answers {
		if !a.Sent.Before(from) && !a.Sent.After(to) {
			lat = append(lat, a.Latency())
		}
	}
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[(len(lat)*99+99)/100-1]
}

// Row is one scenario's line in the report.
type Row struct {
	Scenario  string
	Requests  int                // calls made
	Checked   int                // answers judged against the truth (every call that got an answer)
	Wrong     int                // answers that contradicted the truth
	Errors    map[codes.Code]int // caller errors (no answer) by code
	P99Fault  time.Duration      // p99 latency of the calls sent during the fault
	Recovery  time.Duration      // time to recover after the fault (see Recovery)
	Recovered bool               // false: no recovery seen in the observation window
	Notes     string
}

// ErrorsString is the caller errors as "UNAVAILABLE 12, DEADLINE_EXCEEDED 3", or "0".
func (r Row) ErrorsString() string {
	if len(r.Errors) == 0 {
		return "0"
	}
	codesSeen := make([]codes.Code, 0, len(r.Errors))
	for c := range r.Errors {
		codesSeen = append(codesSeen, c)
	}
	slices.Sort(codesSeen)
	parts := make([]string, len(codesSeen))
	for i, c := range codesSeen {
		parts[i] = fmt.Sprintf("%s %d", upperSnake(c), r.Errors[c])
	}
	return strings.Join(parts, ", ")
}

// upperSnake spells a code as the gRPC spec does: DEADLINE_EXCEEDED.
func upperSnake(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// RecoveryString is the time to recover, or "not seen".
func (r Row) RecoveryString() string {
	if !r.Recovered {
		return "not seen"
	}
	return fmt.Sprintf("%.2f s", r.Recovery.Seconds())
}

// Markdown renders rows as a Markdown table.
func Markdown(rows []Row) string {
	var b strings.Builder
	b.WriteString("| scenario | requests | answers checked | wrong | caller errors | p99 in fault | time to recover | notes |\n")
	b.WriteString("| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %s | %s | %s |\n",
			r.Scenario, r.Requests, r.Checked, r.Wrong, r.ErrorsString(),
			r.P99Fault.Round(100*time.Microsecond), r.RecoveryString(), strings.ReplaceAll(r.Notes, "|", "/"))
	}
	return b.String()
}
