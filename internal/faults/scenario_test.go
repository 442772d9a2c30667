//go:build faults

package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sessiond/sessiond/internal/bench"
)

const (
	// maxObserve bounds the wait for a recovery after a fault.
	maxObserve = 15 * time.Second
	// settleWithin bounds the wait for the instances' notification counters
	// to stand still between scenarios (a backlog of 10,000 inserts takes
	// seconds on today's code).
	settleWithin = time.Minute
	// maxExamples is how many sessions with wrong answers a failure describes.
	maxExamples = 12
)

// scenario is one row of the report: the answers recorded while it ran,
// their verdicts, and its fault window.
type scenario struct {
	s    *suite
	t    *testing.T
	name string

	begun                time.Time
	faultStart, faultEnd time.Time
	answers              []Answer
	verdicts             []bench.Verdict
	notes                []string
	heal                 []func() // repairs an operator would make, run once the recovery is measured
}

// run runs body as the subtest name and records its row. The row covers
// every answer recorded since the previous scenario's row: none is left out.
func (s *suite) run(t *testing.T, name string, body func(sc *scenario)) {
	t.Run(name, func(t *testing.T) {
		if s.broken != "" {
			t.Fatalf("not run: the system was not healthy after %q", s.broken)
		}
		sc := &scenario{s: s, t: t, name: name, begun: time.Now()}
		s.current, _, _ = strings.Cut(name, " ")
		defer sc.finish()
		body(sc)
	})
}

// pull takes the answers recorded since the last pull and judges them. The
// judge runs in the scenario's goroutine, which alone changes timelines, and
// every change it made is complete by now: an answer done before now cannot
// be affected by a later commit (its Before would come after the answer).
func (sc *scenario) pull() {
	for _, a := range sc.s.load.Drain() {
		sc.answers = append(sc.answers, a)
		sc.verdicts = append(sc.verdicts, sc.s.table.Judge(a))
	}
}

// observe lets the load run for d: a measurement window (the baseline
// before a fault, a fault held open), not a wait for a condition.
func (sc *scenario) observe(d time.Duration) {
	time.Sleep(d)
	sc.pull()
}

func (sc *scenario) faultBegins() { sc.faultStart = time.Now() }
func (sc *scenario) faultEnds()   { sc.faultEnd = time.Now() }

func (sc *scenario) note(format string, args ...any) {
	sc.notes = append(sc.notes, fmt.Sprintf(format, args...))
}

// check fails the scenario unless ok, and says so in its row.
func (sc *scenario) check(ok bool, format string, args ...any) {
	sc.t.Helper()
	if !ok {
		msg := fmt.Sprintf(format, args...)
		sc.t.Errorf("%s: %s", sc.name, msg)
		sc.note("FAILED: %s", msg)
	}
}

// focus points a share of the load at toks (the tokens the scenario will
// change) and makes sure every live instance answers each from a cache.
func (sc *scenario) focus(toks []int32) {
	sc.s.defaultMix(toks)
	sc.s.precache(sc.t, toks, sc.s.live())
}

// describeCalls lists up to 5 answers for a failure message: instance,
// token kind, session, code, and times relative to origin.
func (sc *scenario) describeCalls(as []Answer, origin time.Time) string {
	var parts []string
	for i, a := range as {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("and %d more", len(as)-5))
			break
		}
		what := "fresh token"
		if tok := sc.s.table.Token(a.Token); tok != nil {
			what = fmt.Sprintf("%s session %s", tok.Kind, tok.SessionID)
		}
		parts = append(parts, fmt.Sprintf("%s on %s: %v, sent %+.3fs, answered %+.3fs",
			what, a.Instance, a.Code, a.Sent.Sub(origin).Seconds(), a.Done.Sub(origin).Seconds()))
	}
	return strings.Join(parts, "; ")
}

// prepare hands out n victims, points the load at their sessions (cached
// everywhere), and lets it run for the baseline window.
func (sc *scenario) prepare(n int) []*userRow {
	victims := sc.s.victims(sc.t, n)
	sc.focus(tokensOf(sc.s.sessionsOf(victims)))
	sc.observe(BaselineWindow)
	return victims
}

// bad is whether verdict i is a caller error or a wrong answer.
func (sc *scenario) bad() []bool {
	b := make([]bool, len(sc.verdicts))
	for i, v := range sc.verdicts {
		b[i] = v != bench.Right
	}
	return b
}

// finish waits for the recovery, lets notifications settle, judges
// everything and records the row; then checks that the system is healthy
// for the next scenario and puts the load back to its default.
func (sc *scenario) finish() {
	s, t := sc.s, sc.t
	now := time.Now()
	if sc.faultStart.IsZero() {
		sc.faultStart = sc.begun
	}
	if sc.faultEnd.IsZero() {
		sc.faultEnd = now
	}
	var rec time.Duration
	recovered := false
	for {
		sc.pull()
		rec, recovered = Recovery(sc.answers, sc.bad(), sc.faultStart, sc.faultEnd)
		if recovered || time.Since(sc.faultEnd) > maxObserve {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.settle(t)
	// From here on, calls go to the next row: back to the usual mix, and
	// what the scenario left broken repaired (answers until then are this
	// row's; the recovery above was measured without the repair).
	s.defaultMix(nil)
	s.load.SetTargets(targets(s.live()...)...)
	for _, f := range sc.heal {
		f()
	}
	sc.pull()

	row := Row{Scenario: sc.name, Requests: len(sc.answers), Errors: map[codes.Code]int{},
		P99Fault: P99(sc.answers, sc.faultStart, sc.faultEnd), Recovery: rec, Recovered: recovered}
	wrongByKind := map[string]int{}
	type first struct {
		a     Answer
		n     int
		lastS time.Time
	}
	wrongByToken := map[int32]*first{}
	var order []int32
	for i, v := range sc.verdicts {
		a := sc.answers[i]
		switch v {
		case bench.Failed:
			row.Errors[a.Code]++
			continue
		case bench.Wrong:
			row.Wrong++
			kind := "fresh"
			if tok := s.table.Token(a.Token); tok != nil {
				kind = tok.Kind
			}
			wrongByKind[kind]++
			f := wrongByToken[a.Token]
			if f == nil {
				f = &first{a: a}
				wrongByToken[a.Token] = f
				order = append(order, a.Token)
			}
			f.n++
			f.lastS = a.Sent
		}
		row.Checked++
	}
	if !recovered {
		sc.note("no recovery within %v of the fault's end", maxObserve)
	}
	row.Notes = strings.Join(sc.notes, "; ")
	s.rows = append(s.rows, row)
	t.Logf("%s: %d requests, %d answers checked, %d wrong, caller errors: %s, p99 in fault %v, recovery %s; fault %v long; %s",
		sc.name, row.Requests, row.Checked, row.Wrong, row.ErrorsString(), row.P99Fault.Round(100*time.Microsecond),
		row.RecoveryString(), sc.faultEnd.Sub(sc.faultStart).Round(time.Millisecond), row.Notes)
	if row.Wrong > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "%s: %d wrong answers of %d checked (by kind: %s), %d sessions; times are relative to the fault's start:",
			sc.name, row.Wrong, row.Checked, joinKinds(wrongByKind), len(order))
		for i, tok := range order {
			if i == maxExamples {
				fmt.Fprintf(&b, "\n  ... and %d more sessions", len(order)-maxExamples)
				break
			}
			f := wrongByToken[tok]
			fmt.Fprintf(&b, "\n  %s\n    (%d wrong answers for this token, the last for a call sent at %+.3fs)",
				Describe(f.a, s.table.Token(tok), sc.faultStart), f.n, f.lastS.Sub(sc.faultStart).Seconds())
		}
		t.Error(b.String())
	}

	// Healthy for the next scenario: a and b up and SERVING, and the cache
	// warm again (what sessiond's periodic re-warm would do, later), so that
	// each scenario starts from the hit share of a warm cache.
	for _, in := range []*instance{s.a, s.b} {
		if err := in.waitServing(s.ctx, 30*time.Second); err != nil {
			s.broken = sc.name
			t.Errorf("%s left the system unhealthy: %v", sc.name, err)
		}
	}
	if s.broken == "" {
		if err := s.a.warm(s.ctx); err != nil {
			t.Errorf("re-warm after %s: %v", sc.name, err)
		}
	}
}

// settle waits until the notification and resync counters of every live
// instance stand still for 300 ms, so that a backlog left by one scenario
// does not delay the next one's revocations.
func (s *suite) settle(t *testing.T) {
	deadline := time.Now().Add(settleWithin)
	prev, since := "", time.Now()
	for time.Now().Before(deadline) {
		var b strings.Builder
		for _, in := range s.live() {
			st, err := in.stats(s.ctx)
			if err != nil {
				fmt.Fprintf(&b, "%s:err;", in.name)
				continue
			}
			fmt.Fprintf(&b, "%s:%d/%d;", in.name, st.GetCache().GetNotifications(), st.GetCache().GetResyncs())
		}
		cur := b.String()
		if cur != prev || strings.Contains(cur, "err") {
			prev, since = cur, time.Now()
		} else if time.Since(since) >= 300*time.Millisecond {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("notification counters still moving after %v: %s", settleWithin, prev)
}

// precache validates toks on every instance until each has answered each
// from a cache (every answer judged with the rest).
func (s *suite) precache(t *testing.T, toks []int32, ins []*instance) {
	s.sweepUntil(t, toks, ins, 10*time.Second, "answered from a cache", func(a Answer) bool {
		return a.Code == codes.OK && a.FromCache()
	})
}

// sweepUntil validates toks on every instance, again and again for the
// pairs whose answer does not satisfy ok yet, until all do or within passes.
func (s *suite) sweepUntil(t *testing.T, toks []int32, ins []*instance, within time.Duration, what string, ok func(Answer) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	pending := map[string][]int32{}
	for _, in := range ins {
		pending[in.name] = toks
	}
	byName := map[string]*instance{}
	for _, in := range ins {
		byName[in.name] = in
	}
	for {
		left := 0
		for name, toks := range pending {
			var again []int32
			for _, a := range s.load.Sweep([]*Target{byName[name].target}, toks, 8) {
				if !ok(a) {
					again = append(again, a.Token)
				}
			}
			pending[name] = again
			left += len(again)
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d token×instance pairs not %s within %v", left, what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listenerPIDs lists the backends on which sessiond LISTENs: those of our
// database, not the harness's, whose last statement was a LISTEN or named
// the channel (a NOTIFY on it, say), or whose application_name says
// "listen". Postgres does not show who listens where; if sessiond's listener
// comes to look like none of these, this is the place to teach it.
func (s *suite) listenerPIDs(ctx context.Context) ([]int, error) {
	rows, err := s.db.Query(ctx, `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
		AND application_name <> $1
		AND (query ILIKE 'listen %' OR query ILIKE '%sessiond_invalidate%' OR application_name ILIKE '%listen%')`, harnessApp)
	if err != nil {
		return nil, err
	}
	var pids []int
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return nil, err
		}
		pids = append(pids, pid)
	}
	return pids, rows.Err()
}

// waitListeners waits until each of n instances has a listener backend not
// in gone, and returns those backends' pids.
func (s *suite) waitListeners(t *testing.T, n int, gone map[int]bool, within time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		pids, err := s.listenerPIDs(s.ctx)
		var fresh []int
		for _, p := range pids {
			if !gone[p] {
				fresh = append(fresh, p)
			}
		}
		if err == nil && len(fresh) >= n {
			return fresh
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d listener backends of %d after %v (error: %v); see listenerPIDs for how they are found", len(fresh), n, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sessiondBackends counts the Postgres connections of sessiond instances:
// every client backend of our database that is not the harness's.
func (s *suite) sessiondBackends(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND backend_type = 'client backend' AND application_name <> $1`, harnessApp).Scan(&n)
	return n, err
}
