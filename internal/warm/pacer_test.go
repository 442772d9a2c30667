package warm

import (
	"errors"
	"testing"
	"time"
)

func TestPacer(t *testing.T) {
	ms := time.Millisecond
	p := pacer{}
	for range 8 {
		if p.observe(ms, nil); p.delay != 0 {
			t.Fatalf("steady 1 ms round trips: pause %v", p.delay)
		}
	}
	for i, step := range []struct {
		rtt  time.Duration
		err  error
		want time.Duration
	}{
		{ms + ms/2, nil, 0},           // within twice the median (1 ms) plus 1 ms
		{4 * ms, nil, 5 * ms},         // Redis busier: a pause
		{4 * ms, nil, 10 * ms},        // still busy: doubled
		{0, errors.New("x"), 20 * ms}, // no answer counts as busy
		{ms, nil, 10 * ms},            // back to normal: halved
		{ms, nil, 5 * ms},
		{ms, nil, 2500 * time.Microsecond},
		{ms, nil, 1250 * time.Microsecond},
		{ms, nil, 0},                       // under a millisecond: none
		{2900 * time.Microsecond, nil, 0},  // a spread within the bar
		{10 * ms, nil, 5 * ms},             // a spike
		{ms, nil, 2500 * time.Microsecond}, // gone
	} {
		p.observe(step.rtt, step.err)
		if p.delay != step.want {
			t.Fatalf("step %d, rtt %v (err %v): pause %v, want %v", i, step.rtt, step.err, p.delay, step.want)
		}
	}

	// A rise that lasts: paused, up to a second, until it is half the
	// window; then it is the baseline, and the pause halves away.
	p = pacer{}
	for range pacerWindow {
		p.observe(ms, nil)
	}
	var pauses []time.Duration
	for range 3 * pacerWindow {
		p.observe(50*ms, nil)
		pauses = append(pauses, p.delay)
	}
	busy := pacerWindow/2 + 1 // until the 50 ms round trips are the (lower) median
	for i, d := range pauses {
		switch {
		case i < busy && d != min(5*ms<<i, time.Second):
			t.Fatalf("pause after %d slow round trips: %v, want %v (doubling)", i+1, d, min(5*ms<<i, time.Second))
		case i >= busy && i > 0 && d > pauses[i-1]:
			t.Fatalf("pause after %d slow round trips: %v, up from %v: the rise should be the baseline by now", i+1, d, pauses[i-1])
		}
	}
	if last := pauses[len(pauses)-1]; last != 0 {
		t.Errorf("pause after %d round trips of 50 ms: %v, want none", len(pauses), last)
	}
	for range 4 {
		p.observe(0, errors.New("down"))
	}
	if p.delay != 40*ms {
		t.Errorf("four failed PINGs in a row: pause %v, want 40ms", p.delay)
	}
}
