//go:build faults

package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sessiond/sessiond/internal/devstack"
)

// TestEngineFaults runs issue 9's scenarios: failovers of the replicated
// engines production runs on, under the same load and judge as TestFaults.
// Its servers are its own: Redis is a master, its replica and a sentinel,
// Postgres a primary and its streaming replica, and sessiond reaches them
// directly (the sentinel's URL; a multi-host URL with
// target_session_attrs=read-write), as production would.
func TestEngineFaults(t *testing.T) {
	s := newSuite(t, engines{postgresPair: true, redisSentinel: true})

	s.run(t, "9a redis sentinel failover (SENTINEL FAILOVER)", s.sentinelFailover)
	s.run(t, "9a2 redis master killed, sentinel fails over", s.sentinelMasterKilled)
	s.run(t, "9b postgres primary killed, replica promoted", s.postgresPromoted)
}

// revokeUntil revokes the users one at a time, every, until done is closed
// or they run out, and returns those it revoked: revocations while a fault
// is in progress, whenever it is.
func (s *suite) revokeUntil(t *testing.T, done <-chan struct{}, every time.Duration, users []*userRow) []*userRow {
	for i, u := range users {
		select {
		case <-done:
			return users[:i]
		default:
		}
		s.revoke(t, DefaultLag, u)
		select {
		case <-done:
			return users[:i+1]
		case <-time.After(every):
		}
	}
	return users
}

// resyncs is each live instance's count of generation bumps (-1 when it
// does not say), to show in a note which instance bumped after a fault.
func (s *suite) resyncs() []int64 {
	var out []int64
	for _, in := range s.live() {
		st, err := in.stats(s.ctx)
		if err != nil {
			out = append(out, -1)
			continue
		}
		out = append(out, st.GetCache().GetResyncs())
	}
	return out
}

// resyncNote says how many bumps each instance made between before and after.
func (s *suite) resyncNote(before, after []int64) string {
	var parts []string
	for i, in := range s.live() {
		if i < len(before) && i < len(after) {
			parts = append(parts, fmt.Sprintf("%s +%d", in.name, after[i]-before[i]))
		}
	}
	return "generation bumps: " + strings.Join(parts, ", ")
}

// staleNote says how long after a revocation of this scenario had committed
// a valid answer for it was still given: the valid answers sent after the
// commit returned (each within the judge's lag, or it was counted wrong),
// and the latest of them. Called once the recovery is measured.
func (sc *scenario) staleNote() {
	prefix := sc.s.current + ": "
	var worst time.Duration
	n := 0
	for _, a := range sc.answers {
		tok := sc.s.table.Token(a.Token)
		if a.Code != codes.OK || !a.Valid || tok == nil {
			continue
		}
		var last *Change // the last change committed before the call
		for i := range tok.Changes {
			if c := &tok.Changes[i]; c.After.Before(a.Sent) {
				last = c
			}
		}
		if last != nil && !last.To.Valid && strings.HasPrefix(last.What, prefix) {
			n++
			worst = max(worst, a.Sent.Sub(last.After))
		}
	}
	sc.note("valid answers sent after their revocation had committed: %d, the latest %v after (lag %v)", n, worst.Round(time.Millisecond), DefaultLag)
}

// redisFailover runs a Redis failover (fail, which returns once the
// sentinel names a new master that answers as one) under load, with
// revocations before it, every 250 ms while it runs, and right after.
func (s *suite) redisFailover(sc *scenario, fail func(ctx context.Context) error) {
	t := sc.t
	victims := sc.prepare(12)
	s.revoke(t, DefaultLag, victims[:2]...)
	old, err := s.sentinel.Master(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	bumpsBefore := s.resyncs()

	sc.faultBegins()
	done := make(chan struct{})
	var failErr error
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
		defer cancel()
		failErr = fail(ctx)
	}()
	during := s.revokeUntil(t, done, 250*time.Millisecond, victims[2:10])
	<-done
	if failErr != nil {
		t.Fatal(failErr)
	}
	switched := time.Now()
	s.revoke(t, DefaultLag, victims[2+len(during):]...)
	sc.faultEnds()
	now, err := s.sentinel.Master(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	sc.note("master %s → %s in %.1f s; revocations: 2 before, %d during, %d right after",
		old.Addr(), now.Addr(), switched.Sub(sc.faultStart).Seconds(), len(during), len(victims)-2-len(during))
	sc.heal = append(sc.heal, func() {
		sc.note("%s", s.resyncNote(bumpsBefore, s.resyncs()))
		sc.staleNote()
	})
}

// 9a. SENTINEL FAILOVER, as an operator would: the replica is promoted and
// the old master made its replica. The promoted replica is a dataset the
// fence has not verified: every instance must stop believing what it cached
// (a generation bump) and the cache fill again by itself.
func (s *suite) sentinelFailover(sc *scenario) {
	s.redisFailover(sc, s.sentinel.Failover)
}

// 9a2. The master is killed (SIGKILL): the sentinel fails over once it has
// not answered for its down-after (2 s); meanwhile Redis has no master.
// Once the recovery is measured, the killed node is restarted (empty, as a
// replica of the new master), as an operator would.
func (s *suite) sentinelMasterKilled(sc *scenario) {
	t := sc.t
	var killed *devstack.Redis
	s.redisFailover(sc, func(ctx context.Context) (err error) {
		killed, err = s.sentinel.KillMaster(ctx)
		return err
	})
	sc.heal = append(sc.heal, func() {
		if killed == nil {
			return
		}
		ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
		defer cancel()
		if err := killed.Restart(ctx); err != nil {
			t.Errorf("restart the killed redis master: %v", err)
		}
	})
}

// 9b. The Postgres primary is killed under load and its replica promoted
// (pg_promote). sessiond has both hosts in its URL: its pool and its
// listener must follow the new primary without a restart. While no primary
// answers, cached sessions may keep validating (the listener sees only
// refusals and a read-only host) and sessions never cached get
// UNAVAILABLE; revocations committed on the new primary from the moment it
// takes writes must be refused within DefaultLag.
func (s *suite) postgresPromoted(sc *scenario) {
	t := sc.t
	cold, coldToks := s.coldSessions(t)
	before, later := s.victims(t, 2), s.victims(t, 4)
	focus := tokensOf(s.sessionsOf(append(append([]*userRow(nil), before...), later...)))
	sc.focus(focus)
	sc.observe(BaselineWindow)
	s.revoke(t, DefaultLag, before...)
	// The truth model is what the new primary will hold: everything the
	// harness committed must have reached the replica (asynchronous
	// replication loses the rest, as a real failover would).
	if err := s.pair.WaitReplicated(s.ctx); err != nil {
		t.Fatal(err)
	}
	backendsBefore, err := s.sessiondBackends(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	listenersBefore, err := s.listenerPIDs(s.ctx)
	if err != nil {
		t.Fatal(err)
	}

	sc.faultBegins()
	s.defaultMix(focus, Draw{Weight: 0.10, Tokens: tokensOf(rowsOf(cold))})
	down := time.Now()
	// Killed before the promotion starts, so that no commit of the harness
	// can reach it (and be lost with it) from here on.
	if err := s.pair.Primary().Kill(); err != nil {
		t.Fatal(err)
	}
	s.db.Reset() // the harness's connections died with it; new ones find the primary there is
	promoted := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
		defer cancel()
		promoted <- s.pair.Promote(ctx)
	}()
	// The first revocation is committed the moment the promoted replica
	// takes writes, as an application retrying its writes would: sessiond's
	// listener may not be listening there yet.
	first := later[:1]
	var firstAt time.Time
	attempts := 0
	for deadline := time.Now().Add(time.Minute); ; attempts++ {
		_, after, err := s.tryCommit(t, banWhat(first), DefaultLag, setUsersSQL(first, banSet), s.markUsers(first, banned))
		if err == nil {
			firstAt = after
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no primary took a ban within a minute of the kill: %v", err)
		}
		time.Sleep(5 * time.Millisecond) // the next attempt: a primary is polled for, with the deadline above
	}
	if err := <-promoted; err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	s.revoke(t, DefaultLag, later[1:]...)
	sc.faultEnds()
	s.defaultMix(nil)
	sc.pull()
	sc.note("primary killed to the first ban committed on the promoted replica: %.2f s (after %d refusals), to the promotion's end: %.2f s",
		firstAt.Sub(down).Seconds(), attempts, up.Sub(down).Seconds())

	// While no primary answered (from the kill to the promoted replica
	// accepting writes): what the cached sessions and the cold ones got.
	type pair struct {
		tok  int32
		inst string
	}
	// Cached: the pair's last answer before the kill came from a cache (a
	// session revoked just before is not cached any more).
	cached := map[pair]bool{}
	for _, a := range sc.answers {
		if a.Token != Fresh && a.Done.Before(down) {
			cached[pair{a.Token, a.Instance}] = a.Code == codes.OK && a.FromCache()
		}
	}
	coldCalls, coldOK, cachedCalls, cachedOK := 0, 0, 0, 0
	var unanswered []Answer
	for _, a := range sc.answers {
		if a.Sent.Before(down) || a.Done.After(up) {
			continue
		}
		if coldToks[a.Token] {
			coldCalls++
			if a.Code == codes.OK {
				coldOK++
			}
			continue
		}
		if cached[pair{a.Token, a.Instance}] {
			cachedCalls++
			if a.Code == codes.OK {
				cachedOK++
			} else {
				unanswered = append(unanswered, a)
			}
		}
	}
	sc.note("during the failover: cached sessions answered %d of %d, never-cached sessions %d of %d (the rest UNAVAILABLE or past their deadline)",
		cachedOK, cachedCalls, coldOK, coldCalls)
	if len(unanswered) > 0 {
		sc.note("cached sessions not answered (times from the kill): %s", sc.describeCalls(unanswered, down))
	}

	// The pool and the listener follow the new primary: every instance
	// listens there again, and its connections stay within the pool.
	for {
		if _, ok := Recovery(sc.answers, sc.bad(), sc.faultStart, sc.faultEnd); ok || time.Since(sc.faultEnd) > maxObserve {
			break
		}
		sc.observe(200 * time.Millisecond)
	}
	listeners, err := s.listenerPIDs(s.ctx)
	sc.check(err == nil && len(listeners) >= len(s.live()), "%d listener backends on the new primary for %d instances (error: %v)", len(listeners), len(s.live()), err)
	backendsAfter, err := s.sessiondBackends(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	limit := len(s.live()) * (poolSize + 2)
	sc.note("sessiond backends %d on the old primary, %d on the new one (limit %d); listeners %d → %d",
		backendsBefore, backendsAfter, limit, len(listenersBefore), len(listeners))
	sc.check(backendsAfter <= limit, "%d sessiond connections to the new primary after recovery, more than %d", backendsAfter, limit)
	sc.heal = append(sc.heal, sc.staleNote)
}
