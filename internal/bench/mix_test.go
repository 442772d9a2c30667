package bench

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/seed"
)

// fakeTruth is n sessions, session i active i minutes before a fixed time,
// every tenth expired.
func fakeTruth(n int) []seed.Truth {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	out := make([]seed.Truth, n)
	for i := range out {
		t := seed.Truth{
			Token: fmt.Sprintf("%064x", i), SessionID: fmt.Sprintf("s%d", i), UserID: fmt.Sprintf("u%d", i%7),
			Valid: true, LastActivityAt: now.Add(-time.Duration(i) * time.Minute),
		}
		if i%10 == 9 {
			t.Valid, t.Reason = false, seed.ReasonExpired
		}
		out[i] = t
	}
	// Out of order, so the ranking has work to do.
	for i := 0; i+1 < n; i += 2 {
		out[i], out[i+1] = out[i+1], out[i]
	}
	return out
}

func TestParseMix(t *testing.T) {
	m, err := ParseMix(DefaultMix)
	if err != nil {
		t.Fatal(err)
	}
	if m != (Mix{Hot: 0.8, Zipf: 1.1, Unknown: 0.05, Invalid: 0.01}) {
		t.Errorf("ParseMix(%q) = %+v", DefaultMix, m)
	}
	if r := m.Ranked(); math.Abs(r-0.14) > 1e-9 {
		t.Errorf("Ranked() = %v, want 0.14", r)
	}
	for _, bad := range []string{"hot", "hot=x", "hot=0.9,unknown=0.2", "zipf=1", "zipf=0.5", "cold=0.1", "hot=-0.1", "hot=0.1,hot=0.2"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q): no error", bad)
		}
	}
}

func TestRankingHotSet(t *testing.T) {
	r := NewRanking(fakeTruth(1000))
	if r.HotLen() != 10 {
		t.Fatalf("hot set of 1000 = %d, want 10 (1%%)", r.HotLen())
	}
	for i := 1; i < r.Len(); i++ {
		if r.rows[i].LastActivityAt.After(r.rows[i-1].LastActivityAt) {
			t.Fatalf("rank %d is more recent than rank %d", i, i-1)
		}
	}
	if NewRanking(fakeTruth(5)).HotLen() != 1 {
		t.Error("a tiny ranking needs a hot set of one")
	}
}

func TestSamplerShares(t *testing.T) {
	r := NewRanking(fakeTruth(10_000))
	mix := Mix{Hot: 0.6, Zipf: 1.1, Unknown: 0.1, Invalid: 0.05}
	s, err := NewSampler(r, mix, 42)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200_000
	var kinds [numKinds]int
	hotTokens := map[string]bool{}
	for _, row := range r.rows[:r.HotLen()] {
		hotTokens[row.Token] = true
	}
	rank0 := 0
	for range n {
		c := s.Next()
		kinds[c.Kind]++
		switch c.Kind {
		case KindHot:
			if !hotTokens[c.Token] || c.Truth == nil || c.Truth.Token != c.Token {
				t.Fatalf("hot call outside the hot set: %+v", c)
			}
		case KindRanked:
			if c.Truth == nil || c.Truth.Token != c.Token {
				t.Fatalf("ranked call without its truth: %+v", c)
			}
			if c.Token == r.rows[0].Token {
				rank0++
			}
		case KindUnknown:
			if len(c.Token) != 64 || c.Truth != nil || hotTokens[c.Token] {
				t.Fatalf("bad unknown token %q", c.Token)
			}
		case KindInvalid:
			if CheckTokenOK(c.Token) {
				t.Fatalf("malformed token %q passes the token check", c.Token)
			}
		}
	}
	for k, want := range map[Kind]float64{KindHot: 0.6, KindRanked: 0.25, KindUnknown: 0.1, KindInvalid: 0.05} {
		got := float64(kinds[k]) / n
		if math.Abs(got-want) > 0.01 {
			t.Errorf("%v share = %.4f, want %.2f ± 0.01", k, got, want)
		}
	}
	// Zipf(1.1) over 10,000 ranks gives rank 0 about 1/H(10000, 1.1) ≈ 14%.
	if share := float64(rank0) / float64(kinds[KindRanked]); share < 0.08 || share > 0.25 {
		t.Errorf("rank 0 got %.3f of ranked calls, want Zipf-like ~0.14", share)
	}
}

func TestSamplerDeterministic(t *testing.T) {
	r := NewRanking(fakeTruth(1000))
	mix, _ := ParseMix(DefaultMix)
	a, _ := NewSampler(r, mix, 7)
	b, _ := NewSampler(r, mix, 7)
	c, _ := NewSampler(r, mix, 8)
	same := true
	for i := range 10_000 {
		x, y, z := a.Next(), b.Next(), c.Next()
		if x.Token != y.Token || x.Kind != y.Kind {
			t.Fatalf("call %d differs with the same seed: %v/%q vs %v/%q", i, x.Kind, x.Token, y.Kind, y.Token)
		}
		same = same && x.Token == z.Token
	}
	if same {
		t.Error("seeds 7 and 8 drew the same 10,000 calls")
	}
}

func TestSamplerNeedsTruthForKnownTokens(t *testing.T) {
	if _, err := NewSampler(NewRanking(nil), Mix{Hot: 0.5}, 1); err == nil {
		t.Error("no error for known-token traffic without truth")
	}
	s, err := NewSampler(NewRanking(nil), Mix{Unknown: 0.5, Invalid: 0.5}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		if c := s.Next(); c.Truth != nil {
			t.Fatal("a known token from no truth")
		}
	}
}
