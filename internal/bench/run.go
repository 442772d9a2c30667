package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// Caller makes one ValidateSession call: a gRPC client's method, or a fake.
type Caller func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error)

// RunOptions says how to drive the traffic.
type RunOptions struct {
	Duration time.Duration
	// Rate > 0 runs an open loop: call i is due at start + i/Rate whatever
	// happened to earlier calls, and its latency is measured from that due
	// time, so a stall shows in the latency of every call that waited behind
	// it (no coordinated omission). Rate = 0 runs a closed loop.
	Rate float64
	// Concurrency is the number of callers in a closed loop, each making its
	// next call when the previous one is answered; in an open loop, the
	// number of senders, so at most this many calls are in flight and a due
	// call waits (the wait counted in its latency) while all are busy.
	Concurrency int
	// Timeout bounds each call (0: none).
	Timeout time.Duration
	// Check compares every answer with the truth (off for the no-op server).
	Check bool
	// Seed makes the traffic reproducible: the open loop draws from one
	// sampler seeded Seed, closed-loop caller w from one seeded Seed+w.
	Seed uint64
	// DropLate ends an open loop at Duration whatever is left to send: a
	// machine that cannot send Rate calls per second sends what it can in
	// Duration, and the calls not sent by then are counted in Result.Unsent
	// instead of being sent after it. (Without it every scheduled call is
	// sent, however late the run ends.)
	DropLate bool
}

// Mode describes o for a report.
func (o RunOptions) Mode() string {
	if o.Rate > 0 {
		return fmt.Sprintf("open R=%g/s", o.Rate)
	}
	return fmt.Sprintf("closed C=%d", o.Concurrency)
}

const maxWrongExamples = 5

// recorder holds one goroutine's samples.
type recorder struct {
	start    time.Time
	check    bool
	samples  []Sample
	wrong    int
	examples []string
	unsent   int // open loop with DropLate: calls due but not sent by the end
}

// record keeps one call due at at, sent wait after that and answered lat
// after it was due.
func (r *recorder) record(c Call, at, wait, lat time.Duration, resp *sessiondv1.ValidateSessionResponse, err error) {
	s := Sample{At: at, Wait: wait, Lat: lat, Code: status.Code(err), Kind: c.Kind}
	if err == nil {
		s.Source = resp.GetSource()
	}
	r.samples = append(r.samples, s)
	if !r.check {
		return
	}
	if v, why := Check(c, resp, err); v == Wrong {
		r.wrong++
		if len(r.examples) < maxWrongExamples {
			r.examples = append(r.examples, why)
		}
	}
}

// Run drives ValidateSession traffic drawn by mix from rank through callers
// (goroutine w uses callers[w%len(callers)]) and summarizes every call. When
// ctx ends early it stops, and returns what was measured with ctx's error.
func Run(ctx context.Context, rank *Ranking, mix Mix, callers []Caller, o RunOptions) (Result, error) {
	if len(callers) == 0 {
		return Result{}, errors.New("bench: no callers")
	}
	if o.Concurrency < 1 {
		return Result{}, fmt.Errorf("invalid concurrency %d: must be at least 1", o.Concurrency)
	}
	if o.Duration <= 0 {
		return Result{}, fmt.Errorf("invalid duration %s: must be positive", o.Duration)
	}
	// Samplers are built first so that a bad mix fails before any call.
	n := o.Concurrency
	if o.Rate > 0 {
		n = 1
	}
	samplers := make([]*Sampler, n)
	for i := range samplers {
		s, err := NewSampler(rank, mix, o.Seed+uint64(i))
		if err != nil {
			return Result{}, err
		}
		samplers[i] = s
	}
	recs := make([]*recorder, o.Concurrency)
	start := time.Now()
	for i := range recs {
		recs[i] = &recorder{start: start, check: o.Check}
	}
	unsent := 0
	if o.Rate > 0 {
		unsent = runOpen(ctx, samplers[0], callers, recs, o, start)
	} else {
		runClosed(ctx, samplers, callers, recs, o, start)
	}
	elapsed := time.Since(start)

	var all []Sample
	wrong := 0
	var examples []string
	for _, r := range recs {
		all = append(all, r.samples...)
		wrong += r.wrong
		unsent += r.unsent
		for _, e := range r.examples {
			if len(examples) < maxWrongExamples {
				examples = append(examples, e)
			}
		}
	}
	res := summarize(all, elapsed)
	if o.Rate > 0 {
		res.Service, res.MaxSendLagMS = serviceLatency(all)
		res.Unsent = unsent
	}
	res.Mode = o.Mode()
	res.Checked = o.Check
	res.Wrong = wrong
	res.WrongExamples = examples
	return res, ctx.Err()
}

func call(ctx context.Context, c Caller, token string, timeout time.Duration) (*sessiondv1.ValidateSessionResponse, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	resp, err := c(ctx, token)
	if err != nil {
		if _, ok := status.FromError(err); !ok {
			// A fake caller's plain context error, say: keep the code right.
			err = status.FromContextError(err).Err()
		}
	}
	return resp, err
}

func runClosed(ctx context.Context, samplers []*Sampler, callers []Caller, recs []*recorder, o RunOptions, start time.Time) {
	deadline := start.Add(o.Duration)
	var wg sync.WaitGroup
	for w := range recs {
		wg.Go(func() {
			s, r, c := samplers[w], recs[w], callers[w%len(callers)]
			for ctx.Err() == nil {
				t := time.Now()
				if !t.Before(deadline) {
					return
				}
				cl := s.Next()
				resp, err := call(ctx, c, cl.Token, o.Timeout)
				if ctx.Err() != nil && status.Code(err) == codes.Canceled {
					return // our own stop, not the server's answer
				}
				r.record(cl, t.Sub(start), 0, time.Since(t), resp, err)
			}
		})
	}
	wg.Wait()
}

type job struct {
	at   time.Duration // due at start+at
	call Call
}

// runOpen runs the open loop and returns how many calls the dispatcher
// did not send because DropLate ended the run (the senders count those
// they took too late in their recorders).
func runOpen(ctx context.Context, s *Sampler, callers []Caller, recs []*recorder, o RunOptions, start time.Time) (unsent int) {
	jobs := make(chan job, 4096)
	end := start.Add(o.Duration)
	var wg sync.WaitGroup
	for w := range recs {
		wg.Go(func() {
			r, c := recs[w], callers[w%len(callers)]
			for j := range jobs {
				sent := time.Now()
				if o.DropLate && !sent.Before(end) {
					r.unsent++
					continue
				}
				resp, err := call(ctx, c, j.call.Token, o.Timeout)
				if ctx.Err() != nil && status.Code(err) == codes.Canceled {
					continue
				}
				due := start.Add(j.at)
				r.record(j.call, j.at, sent.Sub(due), time.Since(due), resp, err)
			}
		})
	}
	total := int(o.Rate * o.Duration.Seconds())
	timer := time.NewTimer(time.Hour)
	timer.Stop()
dispatch:
	for i := range total {
		if o.DropLate && !time.Now().Before(end) {
			unsent = total - i
			break
		}
		// The schedule is computed, not ticked: no drift, and a late
		// dispatcher sends what is due at once rather than skipping it.
		at := time.Duration(float64(i) * float64(time.Second) / o.Rate)
		if wait := time.Until(start.Add(at)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				break dispatch
			case <-timer.C:
			}
		}
		select {
		case jobs <- job{at: at, call: s.Next()}:
		case <-ctx.Done():
			break dispatch
		}
	}
	close(jobs)
	wg.Wait()
	return unsent
}
