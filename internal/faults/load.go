package faults

import (
	"context"
	"encoding/hex"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/internal/bench"
)

// Table is every token the suite knows: the raw value, which only the load
// sends (never printed, logged or stored elsewhere), and what the judge knows
// of it. Tokens are added, never removed; a token's Timeline is changed only
// by the goroutine that runs the scenarios, which is also the one that judges.
type Table struct {
	mu   sync.RWMutex
	raw  []string
	toks []*Token
}

// Add puts a token in the table and returns its index.
func (t *Table) Add(raw string, tok *Token) int32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.raw = append(t.raw, raw)
	t.toks = append(t.toks, tok)
	return int32(len(t.raw) - 1)
}

// Raw is token i's raw value, for sending it.
func (t *Table) Raw(i int32) string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.raw[i]
}

// Token is what the judge knows of token i; nil for Fresh.
func (t *Table) Token(i int32) *Token {
	if i == Fresh {
		return nil
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.toks[i]
}

// Len is the number of tokens.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.raw)
}

// Judge decides an answer against the table (see the function Judge).
func (t *Table) Judge(a Answer) bench.Verdict { return Judge(a, t.Token(a.Token)) }

// Target is one sessiond instance as the load sees it.
type Target struct {
	Name    string
	Callers []bench.Caller // one per client connection; calls rotate over them
}

// Draw is a part of a Mix: Weight relative to the other parts, and the
// tokens (indexes in the Table) drawn from uniformly.
type Draw struct {
	Weight float64
	Tokens []int32
}

// Mix is what the load calls with. Fresh is the weight of random tokens made
// for one call each (always a cache miss, answered not found).
type Mix struct {
	Draws []Draw
	Fresh float64
}

// Load drives ValidateSession calls at a capped, steady rate over a set of
// targets and records every answer. Its methods are safe for concurrent use.
type Load struct {
	table    *Table
	deadline time.Duration // each call's deadline, as a caller would set it

	mix     atomic.Pointer[Mix]
	targets atomic.Pointer[[]*Target]

	mu      sync.Mutex
	answers []Answer
}

// NewLoad returns a load over table whose calls each have deadline.
func NewLoad(table *Table, deadline time.Duration) *Load {
	l := &Load{table: table, deadline: deadline}
	l.mix.Store(&Mix{})
	l.targets.Store(&[]*Target{})
	return l
}

// SetMix changes what the next calls draw from. Draws without tokens are left out.
func (l *Load) SetMix(m Mix) {
	var draws []Draw
	for _, d := range m.Draws {
		if len(d.Tokens) > 0 && d.Weight > 0 {
			draws = append(draws, d)
		}
	}
	l.mix.Store(&Mix{Draws: draws, Fresh: m.Fresh})
}

// SetTargets changes which instances the next calls go to, as a load
// balancer's endpoint list would; calls in flight finish where they are.
func (l *Load) SetTargets(ts ...*Target) {
	ts = append([]*Target(nil), ts...)
	l.targets.Store(&ts)
}

// Run makes calls from workers goroutines at rate calls per second in all,
// until ctx ends; then it waits for the calls in flight, which finish under
// their own deadline (they are not cancelled: every call made is an answer
// to judge). A worker whose call outlasts its turn skips the turns it missed
// rather than bursting to catch up, so a stall lowers the rate.
func (l *Load) Run(ctx context.Context, workers int, rate float64, seed uint64) {
	interval := time.Duration(float64(workers) / rate * float64(time.Second))
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			next := start.Add(time.Duration(w) * interval / time.Duration(workers))
			timer := time.NewTimer(0)
			defer timer.Stop()
			<-timer.C
			for k := 0; ; k++ {
				timer.Reset(time.Until(next))
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
				ts := *l.targets.Load()
				if len(ts) > 0 {
					t := ts[(w+k)%len(ts)]
					tok, raw := l.draw(rng)
					l.call(t, t.Callers[k%len(t.Callers)], tok, raw)
				}
				next = next.Add(interval)
				if now := time.Now(); next.Before(now) {
					next = now
				}
			}
		})
	}
	wg.Wait()
}

// draw picks a token by the current mix.
func (l *Load) draw(rng *rand.Rand) (int32, string) {
	m := l.mix.Load()
	total := m.Fresh
	for _, d := range m.Draws {
		total += d.Weight
	}
	u := rng.Float64() * total
	for _, d := range m.Draws {
		if u < d.Weight {
			i := d.Tokens[rng.IntN(len(d.Tokens))]
			return i, l.table.Raw(i)
		}
		u -= d.Weight
	}
	var b [32]byte
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return Fresh, hex.EncodeToString(b[:])
}

// call makes one call, records its answer and returns it.
func (l *Load) call(t *Target, c bench.Caller, tok int32, raw string) Answer {
	ctx, cancel := context.WithTimeout(context.Background(), l.deadline)
	defer cancel()
	a := Answer{Sent: time.Now(), Token: tok, Instance: t.Name}
	resp, err := c(ctx, raw)
	a.Done = time.Now()
	a.Code = status.Code(err)
	if err == nil {
		a.Valid, a.Reason, a.Source = resp.GetValid(), resp.GetReason(), resp.GetSource()
		if s := resp.GetSession(); s != nil {
			a.SessionID, a.UserID = s.GetId(), s.GetUserId()
		}
	}
	l.mu.Lock()
	l.answers = append(l.answers, a)
	l.mu.Unlock()
	return a
}

// Call validates token tok on t once, outside the steady load, and records
// the answer with the others (it is judged like them).
func (l *Load) Call(t *Target, tok int32) Answer {
	return l.call(t, t.Callers[0], tok, l.table.Raw(tok))
}

// Sweep validates every token of toks once on every target, concurrency
// calls at a time, recording every answer, and returns the answers.
func (l *Load) Sweep(targets []*Target, toks []int32, concurrency int) []Answer {
	type job struct {
		t   *Target
		tok int32
	}
	jobs := make(chan job)
	var mu sync.Mutex
	var out []Answer
	var wg sync.WaitGroup
	for w := range concurrency {
		wg.Go(func() {
			for j := range jobs {
				a := l.call(j.t, j.t.Callers[w%len(j.t.Callers)], j.tok, l.table.Raw(j.tok))
				mu.Lock()
				out = append(out, a)
				mu.Unlock()
			}
		})
	}
	for _, tok := range toks {
		for _, t := range targets {
			jobs <- job{t, tok}
		}
	}
	close(jobs)
	wg.Wait()
	return out
}

// Drain returns the answers recorded since the last Drain and forgets them.
func (l *Load) Drain() []Answer {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.answers
	l.answers = nil
	return out
}
