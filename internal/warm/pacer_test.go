package warm

import (
	"errors"
	"testing"
	"time"
)

func TestPacer(t *testing.T) {
	ms := time.Millisecond
	p := pacer{}
	for _, step := range []struct {
		rtt  time.Duration
		err  error
		want time.Duration
	}{
		{ms, nil, 0},                  // the best so far: no pause
		{ms + ms/2, nil, 0},           // within twice the best plus 1 ms
		{4 * ms, nil, 5 * ms},         // Redis busy: a pause
		{4 * ms, nil, 10 * ms},        // still busy: doubled
		{0, errors.New("x"), 20 * ms}, // no answer counts as busy
		{ms, nil, 10 * ms},            // back to its best: halved
		{ms, nil, 5 * ms},
		{ms, nil, 2500 * time.Microsecond},
		{ms, nil, 1250 * time.Microsecond},
		{ms, nil, 0}, // under a millisecond: none
	} {
		p.observe(step.rtt, step.err)
		if p.delay != step.want {
			t.Fatalf("after rtt %v (err %v): pause %v, want %v", step.rtt, step.err, p.delay, step.want)
		}
	}
	for range 20 {
		p.observe(50*ms, nil)
	}
	if p.delay != time.Second {
		t.Errorf("pause grew to %v, want capped at 1s", p.delay)
	}
}
