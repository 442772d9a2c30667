package tiers

import (
	"context"
	"testing"
	"time"
)

// Every answer the rule ran on is counted once, under its reason and source.
func TestAnswered(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	valid := &Record{ID: "s1", UserID: "u1", ExpiresAt: now.Add(time.Hour)}
	expired := &Record{ID: "s2", UserID: "u1", ExpiresAt: now.Add(-time.Hour)}
	cache := &fakeCache{m: map[string]*Record{Key(TokenHash("cached-expired")): expired}, local: true}
	truth := &fakeTruth{rows: map[string]*Record{"valid": valid}}
	rt := newTestReadThrough(cache, truth, func() time.Time { return now })
	for _, tok := range []string{"valid", "valid", "cached-expired", "unknown"} {
		if _, err := rt.Validate(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
		rt.Wait() // a miss's fill lands after its answer
	}
	c := rt.Counters()
	want := map[[2]int]int64{
		{int(ReasonNone), int(SourcePostgres)}:     1, // the miss that filled
		{int(ReasonNone), int(SourceLocal)}:        1, // then the fake's local copy
		{int(ReasonExpired), int(SourceLocal)}:     1,
		{int(ReasonNotFound), int(SourcePostgres)}: 1,
	}
	var total int64
	for _, r := range Reasons {
		for _, s := range Sources {
			got := c.Answered(r, s)
			total += got
			if w := want[[2]int{int(r), int(s)}]; got != w {
				t.Errorf("Answered(%v, %v) = %d, want %d", r, s, got, w)
			}
		}
	}
	if total != 4 {
		t.Errorf("%d answers counted, want 4", total)
	}
	if got := c.Answered(Reason(99), SourceLocal); got != 0 {
		t.Errorf("Answered of an unknown reason = %d, want 0", got)
	}
}
