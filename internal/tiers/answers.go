package tiers

import "sync/atomic"

// Reasons and Sources list every value, for whoever reports per value
// (metrics).
var (
	Reasons = []Reason{ReasonNone, ReasonNotFound, ReasonExpired, ReasonUserDeleted, ReasonUserBanned}
	Sources = []Source{SourceLocal, SourceRedis, SourcePostgres}
)

// answerCounts counts answers by reason and source: one atomic add per
// answer, indexed, so the hot path pays no lookup.
type answerCounts [ReasonUserBanned + 1][SourcePostgres + 1]atomic.Int64

func (a *answerCounts) add(r Result) {
	if r.Reason >= 0 && int(r.Reason) < len(a) && r.Source >= 0 && int(r.Source) < len(a[0]) {
		a[r.Reason][r.Source].Add(1)
	}
}

// Answered is how many answers had reason r and came from source s. The
// rule ran on each: a cached negative ("no such session") is not among
// them, it is counted in NegativeHits.
func (c *Counters) Answered(r Reason, s Source) int64 {
	if r < 0 || int(r) >= len(c.answers) || s < 0 || int(s) >= len(c.answers[0]) {
		return 0
	}
	return c.answers[r][s].Load()
}
