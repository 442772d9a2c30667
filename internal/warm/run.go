package warm

import (
	"context"
	"sync"
	"time"
)

// watcherBuffer is how many progress messages a watcher may fall behind by
// before the oldest unread one is dropped. The last message (done=true) is
// never dropped, so every watcher learns how the run ended.
const watcherBuffer = 64

// Run is one warming run, watched by any number of callers.
type Run struct {
	id     string
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	p        Progress
	watchers map[chan Progress]struct{}
	holders  int // watchers, plus the starter when it holds the run
	// knownTotal is set once the total is known: only then is there a
	// snapshot worth sending to a new watcher.
	knownTotal bool
}

func newRun(id string, cancel context.CancelFunc, held bool) *Run {
	r := &Run{id: id, cancel: cancel, done: make(chan struct{}), watchers: map[chan Progress]struct{}{}}
	r.p = Progress{RunID: id, StartedAt: time.Now()}
	if held {
		r.holders = 1
	}
	return r
}

// ID identifies the run.
func (r *Run) ID() string { return r.id }

// Done is closed when the run has ended.
func (r *Run) Done() <-chan struct{} { return r.done }

// Snapshot is the run's progress now.
func (r *Run) Snapshot() Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshot()
}

func (r *Run) snapshot() Progress {
	p := r.p
	if p.Done {
		p.Elapsed = p.FinishedAt.Sub(p.StartedAt)
	} else {
		p.Elapsed = time.Since(p.StartedAt)
	}
	return p
}

// Watch returns a channel of the run's progress: the latest snapshot at once
// if the total is known, then one per batch, then the last (Done), after
// which it is closed. unwatch must be called when the watcher leaves; if it
// was the last one holding the run, the run is cancelled.
func (r *Run) Watch() (progress <-chan Progress, unwatch func()) {
	ch := make(chan Progress, watcherBuffer)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p.Done {
		ch <- r.snapshot()
		close(ch)
		return ch, func() {}
	}
	if r.knownTotal {
		ch <- r.snapshot()
	}
	r.watchers[ch] = struct{}{}
	r.holders++
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			r.mu.Lock()
			delete(r.watchers, ch)
			r.holders--
			last := r.holders == 0 && !r.p.Done
			r.mu.Unlock()
			if last {
				r.cancel()
			}
		})
	}
}

// publish sends the current snapshot to every watcher, dropping a watcher's
// oldest unread message when it has fallen watcherBuffer behind. Called with
// r.mu held: it is the only sender, so after one drop a send cannot block.
func (r *Run) publish() Progress {
	p := r.snapshot()
	for ch := range r.watchers {
		select {
		case ch <- p:
		default:
			select {
			case <-ch:
			default:
			}
			ch <- p
		}
	}
	return p
}

func (r *Run) found(total int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Total = total
	r.knownTotal = true
	r.publish()
}

func (r *Run) batchDone(warmed, failed, skipped, kept int) Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Warmed += warmed
	r.p.Failed += failed
	r.p.Skipped += skipped
	r.p.Kept += kept
	r.p.Batches++
	return r.publish()
}

// unreadable counts a row that could not be read as failed; the next batch
// publishes it.
func (r *Run) unreadable() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Failed++
}

func (r *Run) finish(o Outcome, err error) Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Done, r.p.Outcome, r.p.FinishedAt = true, o, time.Now()
	if o != Completed {
		r.p.Err = err
	}
	p := r.publish()
	for ch := range r.watchers {
		close(ch)
	}
	r.watchers = nil
	close(r.done)
	return p
}
