package warm

import "sync/atomic"

// Totals are the counts of every run since start, for metrics.
type Totals struct {
	Runs    [Failed + 1]int64 // ended runs, by Outcome (Running stays 0)
	Warmed  int64             // sessions written
	Failed  int64             // sessions whose write failed
	Skipped int64             // sessions not written on purpose
}

type totals struct {
	runs                    [Failed + 1]atomic.Int64
	warmed, failed, skipped atomic.Int64
}

func (t *totals) add(warmed, failed, skipped int) {
	t.warmed.Add(int64(warmed))
	t.failed.Add(int64(failed))
	t.skipped.Add(int64(skipped))
}

// Totals returns the counts now; sessions are counted batch by batch, as
// they are written.
func (w *Warmer) Totals() Totals {
	var t Totals
	for o := range t.Runs {
		t.Runs[o] = w.totals.runs[o].Load()
	}
	t.Warmed, t.Failed, t.Skipped = w.totals.warmed.Load(), w.totals.failed.Load(), w.totals.skipped.Load()
	return t
}
