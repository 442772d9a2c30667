// Package bench measures sessiond: it seeds benchmark data, drives
// ValidateSession traffic (open or closed loop) whose every answer is checked
// against the seeded truth, and compares sessiond with a direct-Postgres
// baseline and a no-op gRPC server.
package bench

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/sessiond/sessiond/internal/seed"
)

// DefaultMix is the --mix default.
const DefaultMix = "hot=0.8,zipf=1.1,unknown=0.05,invalid=0.01"

// HotShare is the share of the activity ranking that makes up the hot set.
const HotShare = 0.01

// Kind says how a call's token was chosen.
type Kind uint8

const (
	// KindHot: uniform over the hot set, the top HotShare (1%, at least one
	// session) of the seeded sessions ranked by last_activity_at, newest first.
	KindHot Kind = iota
	// KindRanked: the rest of the known-token traffic, Zipf over the whole
	// activity ranking (rank 0 = most recently active) when Mix.Zipf is set,
	// else uniform over it.
	KindRanked
	// KindUnknown: a fresh random 64-hex token no session has (answer:
	// valid=false, REASON_NOT_FOUND).
	KindUnknown
	// KindInvalid: a malformed token (answer: INVALID_ARGUMENT).
	KindInvalid
	numKinds
)

func (k Kind) String() string {
	switch k {
	case KindHot:
		return "hot"
	case KindRanked:
		return "ranked"
	case KindUnknown:
		return "unknown"
	case KindInvalid:
		return "invalid"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Mix is what share of calls each Kind gets. Hot, Unknown and Invalid are
// shares of all calls; whatever they leave (1 − Hot − Unknown − Invalid) is
// KindRanked, drawn by Zipf with exponent Zipf (> 1) over the activity
// ranking, or uniformly over it when Zipf is 0.
//
// Every known token (hot or ranked) comes from the seeded truth, which holds
// every seeded session, valid or not: a known token's expected answer is its
// truth row's verdict (valid, or invalid with the row's reason).
type Mix struct {
	Hot     float64
	Zipf    float64
	Unknown float64
	Invalid float64
}

// Ranked is the share of calls of KindRanked.
func (m Mix) Ranked() float64 { return max(0, 1-m.Hot-m.Unknown-m.Invalid) }

func (m Mix) String() string {
	return fmt.Sprintf("hot=%g,zipf=%g,unknown=%g,invalid=%g", m.Hot, m.Zipf, m.Unknown, m.Invalid)
}

// ParseMix reads "hot=0.8,zipf=1.1,unknown=0.05,invalid=0.01". Absent keys
// are 0; an empty string is all ranked, uniformly.
func ParseMix(s string) (Mix, error) {
	var m Mix
	if strings.TrimSpace(s) == "" {
		return m, nil
	}
	seen := map[string]bool{}
	for part := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return m, fmt.Errorf("invalid --mix %q: %q is not key=value", s, part)
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return m, fmt.Errorf("invalid --mix %q: %s=%q is not a number", s, k, v)
		}
		if seen[k] {
			return m, fmt.Errorf("invalid --mix %q: %s given twice", s, k)
		}
		seen[k] = true
		switch k {
		case "hot":
			m.Hot = f
		case "zipf":
			m.Zipf = f
		case "unknown":
			m.Unknown = f
		case "invalid":
			m.Invalid = f
		default:
			return m, fmt.Errorf("invalid --mix %q: unknown key %q (want hot, zipf, unknown, invalid)", s, k)
		}
	}
	return m, m.validate()
}

func (m Mix) validate() error {
	for _, s := range []struct {
		name string
		v    float64
	}{{"hot", m.Hot}, {"unknown", m.Unknown}, {"invalid", m.Invalid}} {
		if s.v < 0 || s.v > 1 {
			return fmt.Errorf("invalid --mix: %s=%g: a share must be in [0, 1]", s.name, s.v)
		}
	}
	if sum := m.Hot + m.Unknown + m.Invalid; sum > 1+1e-9 {
		return fmt.Errorf("invalid --mix: hot+unknown+invalid = %g, more than 1", sum)
	}
	if m.Zipf != 0 && !(m.Zipf > 1) {
		return fmt.Errorf("invalid --mix: zipf=%g: the exponent must be > 1 (math/rand/v2's Zipf), or 0 for uniform", m.Zipf)
	}
	return nil
}

// Call is one ValidateSession to make and what it must answer.
type Call struct {
	Token string
	Kind  Kind
	Truth *seed.Truth // the seeded verdict; nil for KindUnknown and KindInvalid
}

// Ranking is the seeded truth ordered by last_activity_at, newest first
// (ties by token), shared read-only by every Sampler.
type Ranking struct {
	rows []seed.Truth
	hot  int // rows[:hot] is the hot set
}

// NewRanking ranks truth by activity. It copies truth.
func NewRanking(truth []seed.Truth) *Ranking {
	rows := slices.Clone(truth)
	slices.SortFunc(rows, func(a, b seed.Truth) int {
		if c := b.LastActivityAt.Compare(a.LastActivityAt); c != 0 {
			return c
		}
		return strings.Compare(a.Token, b.Token)
	})
	hot := int(math.Ceil(float64(len(rows)) * HotShare))
	if hot == 0 && len(rows) > 0 {
		hot = 1
	}
	return &Ranking{rows: rows, hot: hot}
}

// Len is the number of ranked sessions; HotLen the size of the hot set.
func (r *Ranking) Len() int    { return len(r.rows) }
func (r *Ranking) HotLen() int { return r.hot }

// Sampler draws calls by a Mix. The same (Ranking, Mix, seed) gives the same
// calls in the same order. A Sampler is not safe for concurrent use: give
// each goroutine its own.
type Sampler struct {
	r    *Ranking
	mix  Mix
	rng  *rand.Rand
	zipf *rand.Zipf
	n    uint64 // calls drawn, to rotate the malformed forms
}

// NewSampler returns a sampler over r. A mix with known-token traffic needs
// a non-empty ranking.
func NewSampler(r *Ranking, m Mix, seed uint64) (*Sampler, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	if r.Len() == 0 && m.Hot+m.Ranked() > 0 {
		return nil, fmt.Errorf("no seeded sessions to draw known tokens from")
	}
	s := &Sampler{r: r, mix: m, rng: rand.New(rand.NewPCG(seed, seed^0x73657373696f6e64))}
	if m.Zipf > 0 && r.Len() > 0 {
		s.zipf = rand.NewZipf(s.rng, m.Zipf, 1, uint64(r.Len()-1))
	}
	return s, nil
}

// malformed are tokens sessiond must refuse with INVALID_ARGUMENT: empty,
// too long, a control byte, DEL, non-ASCII (valid UTF-8, as proto3 strings
// must be).
var malformed = []string{
	"",
	strings.Repeat("a", 513),
	"bad\ntoken",
	"tab\ttoken",
	"del\x7ftoken",
	"t\u00f6k\u00e9n",
}

// Next draws a call.
func (s *Sampler) Next() Call {
	s.n++
	u := s.rng.Float64()
	m := s.mix
	switch {
	case u < m.Invalid:
		return Call{Token: malformed[s.n%uint64(len(malformed))], Kind: KindInvalid}
	case u < m.Invalid+m.Unknown:
		var b [32]byte
		for i := 0; i < len(b); i += 8 {
			v := s.rng.Uint64()
			for j := range 8 {
				b[i+j] = byte(v >> (8 * j))
			}
		}
		return Call{Token: hex.EncodeToString(b[:]), Kind: KindUnknown}
	case u < m.Invalid+m.Unknown+m.Hot:
		t := &s.r.rows[s.rng.IntN(s.r.hot)]
		return Call{Token: t.Token, Kind: KindHot, Truth: t}
	}
	if len(s.r.rows) == 0 { // only reachable by rounding when the mix leaves ~0 to ranked
		return Call{Token: strings.Repeat("0", 64), Kind: KindUnknown}
	}
	var i int
	if s.zipf != nil {
		i = int(s.zipf.Uint64())
	} else {
		i = s.rng.IntN(len(s.r.rows))
	}
	t := &s.r.rows[i]
	return Call{Token: t.Token, Kind: KindRanked, Truth: t}
}
