package bench

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sessiond/sessiond/internal/cli"
	"github.com/sessiond/sessiond/internal/devstack"
	"github.com/sessiond/sessiond/internal/seed"
	"github.com/sessiond/sessiond/internal/server"
)

// childEnv, set to 1 in a process's environment, makes RunSessiondChild run
// sessiond's command line in it: coldstart starts sessiond as this very
// program, so that no build step is needed.
const childEnv = "SESSIONBENCH_RUN_SESSIOND"

// RunSessiondChild runs sessiond (internal/cli, as cmd/sessiond does) with
// this process's arguments and exits, when coldstart started this process
// as a sessiond; otherwise it returns at once. Call it first in main (and
// in TestMain of tests that run coldstart).
func RunSessiondChild() {
	if os.Getenv(childEnv) != "1" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.Env{Getenv: os.Getenv, Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(code)
}

// ColdStartOptions configures ColdStart.
type ColdStartOptions struct {
	DatabaseURL string // an empty database (then Runs must be 1); empty: a throwaway PostgreSQL, a fresh database per run
	Sessions    int
	Seed        int64
	Mix         Mix
	Duration    time.Duration // of the load, from SERVING
	Concurrency int           // closed-loop callers
	Conns       int
	Runs        int
	Sessiond    string        // a sessiond binary; empty: this program, as RunSessiondChild
	SessiondLog io.Writer     // if set, every line sessiond logs (JSON), each run's after a "# run N" line
	Timeout     time.Duration // per call
	Progress    io.Writer
}

// ColdRun is one cold start.
type ColdRun struct {
	Seed seed.Summary `json:"seed"`
	// From the process's start (exec) to its log line "sessiond serving"
	// (the gRPC port open), and to health SERVING as a Watch saw it.
	ToListeningMS float64 `json:"to_listening_ms"`
	ToServingMS   float64 `json:"to_serving_ms"`
	// LoadAfterServingMS is how long after SERVING the first call was sent.
	LoadAfterServingMS float64 `json:"load_after_serving_ms"`
	// From sessiond's log: its startup warm (before SERVING), and its
	// background warm of the rest of the window (after SERVING) if it
	// completed while the load ran.
	Startup    WarmPhase `json:"startup_warm"`
	Background WarmPhase `json:"background_warm"`
	Load       Result    `json:"load"`
}

// WarmPhase is a warming run, as sessiond logged it: completed, or how far
// it had come (Done of Found) when the load ended.
type WarmPhase struct {
	Complete bool  `json:"complete"`
	Done     int   `json:"done"` // sessions attempted so far (the last progress line), when not complete
	Warmed   int   `json:"warmed"`
	Kept     int   `json:"kept"` // already cached, left as they were
	Found    int   `json:"found"`
	MS       int64 `json:"ms"` // the run's own duration
	// DoneAfterServingMS is when its completion line was read from the
	// log, from SERVING (negative: before it; the line is read a little
	// after it is written).
	DoneAfterServingMS float64 `json:"done_after_serving_ms"`
}

// ColdStartReport is what ColdStart measured.
type ColdStartReport struct {
	Command string    `json:"command,omitempty"`
	Mix     string    `json:"mix"`
	Mode    string    `json:"mode"`
	Runs    []ColdRun `json:"runs"`
}

// ColdStart measures sessiond's first seconds: for each run, a freshly
// seeded database, a fresh (cold) redis-server, and sessiond started as its
// own process with its default flags (only where to listen and what to
// reach are given); the load starts the moment health turns SERVING. It
// returns what it measured also when it fails part way.
func ColdStart(ctx context.Context, o ColdStartOptions) (rep ColdStartReport, err error) {
	progress := progressTo(o.Progress)
	if o.Sessions < 1 || o.Duration <= 0 || o.Concurrency < 1 || o.Runs < 1 {
		return rep, errors.New("coldstart: want sessions, concurrency and runs >= 1, duration > 0")
	}
	if o.DatabaseURL != "" && o.Runs > 1 {
		return rep, errors.New("coldstart: with --database-url, one run only (each run needs a freshly seeded database: sessiond writes activity back)")
	}
	rep.Mix = o.Mix.String()
	rep.Mode = RunOptions{Concurrency: o.Concurrency}.Mode()
	st := &stack{progress: progress}
	defer st.stop()
	first, err := st.postgres(ctx, o.DatabaseURL, devstack.PostgresOptions{})
	if err != nil {
		return rep, err
	}
	for i := range o.Runs {
		dbURL := first
		if i > 0 {
			// A fresh database: the last run's sessiond wrote activity back,
			// which would change what this one warms.
			if dbURL, err = st.pg.CreateDatabase(ctx, fmt.Sprintf("coldstart%d", i+1)); err != nil {
				return rep, err
			}
		}
		if o.SessiondLog != nil {
			fmt.Fprintf(o.SessiondLog, "# run %d\n", i+1)
		}
		run, err := coldRun(ctx, o, dbURL, progress)
		if err != nil {
			return rep, fmt.Errorf("run %d: %w", i+1, err)
		}
		rep.Runs = append(rep.Runs, run)
		progress("run %d: SERVING %.0f ms after start, startup warm %s; hit rate %.1f%% over %.0f s, %d wrong",
			i+1, run.ToServingMS, fmtWarmPhase(run.Startup, false), run.Load.HitRate, run.Load.Seconds, run.Load.Wrong)
	}
	return rep, nil
}

// coldRun seeds dbURL, starts a cold Redis and sessiond, and loads it from
// SERVING on.
func coldRun(ctx context.Context, o ColdStartOptions, dbURL string, progress func(string, ...any)) (run ColdRun, err error) {
	var truth []seed.Truth
	run.Seed, err = loadSeed(ctx, dbURL, seedOptions(0, o.Sessions, o.Seed), func(t seed.Truth) error {
		truth = append(truth, t)
		return nil
	})
	if err != nil {
		return run, fmt.Errorf("seed: %w", err)
	}
	progress("seeded %s", summaryLine(run.Seed))
	rank := NewRanking(truth)
	redisURL, stopRedis, err := startEngine(ctx, EngineSingle, progress)
	if err != nil {
		return run, err
	}
	defer stopRedis()

	p, err := startSessiondProcess(o.Sessiond, dbURL, redisURL, o.SessiondLog)
	if err != nil {
		return run, err
	}
	defer func() {
		if serr := p.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	var addr string
	select {
	case addr = <-p.addr:
	case <-p.exited:
		return run, fmt.Errorf("sessiond exited before listening:\n%s", p.logTail())
	case <-ctx.Done():
		return run, ctx.Err()
	}
	run.ToListeningMS = ms(p.listening.Sub(p.started))
	serving, err := watchServing(ctx, addr)
	if err != nil {
		return run, err
	}
	c, err := dial(ctx, addr, min(max(o.Conns, 1), o.Concurrency))
	if err != nil {
		return run, err
	}
	defer c.close()
	var servingAt time.Time
	select {
	case servingAt = <-serving:
	case <-p.exited:
		return run, fmt.Errorf("sessiond exited before SERVING:\n%s", p.logTail())
	case <-ctx.Done():
		return run, ctx.Err()
	}
	loadStart := time.Now()
	run.ToServingMS = ms(servingAt.Sub(p.started))
	run.LoadAfterServingMS = ms(loadStart.Sub(servingAt))
	run.Load, err = Run(ctx, rank, o.Mix, c.callers, RunOptions{
		Duration: o.Duration, Concurrency: o.Concurrency, Timeout: o.Timeout, Check: true, Seed: uint64(o.Seed) << 32,
	})
	run.Load.Scenario = "cold start"
	run.Startup = p.logs.phase(phaseStartup, servingAt)
	run.Background = p.logs.phase(phaseBackground, servingAt)
	return run, err
}

// watchServing watches sessiond's health at addr and sends the time it
// first says SERVING.
func watchServing(ctx context.Context, addr string) (<-chan time.Time, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: server.ServiceName}, grpc.WaitForReady(true))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("watch health: %w", err)
	}
	out := make(chan time.Time, 1)
	go func() {
		defer conn.Close()
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if m.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				out <- time.Now()
				return
			}
		}
	}()
	return out, nil
}

// sessiondProcess is sessiond running as a child process.
type sessiondProcess struct {
	cmd       *exec.Cmd
	started   time.Time
	listening time.Time
	addr      chan string   // its gRPC address, once it listens
	exited    chan struct{} // closed when its log ends (it exited)
	logs      *logWatch
}

// startSessiondProcess starts sessiond (bin, or this program as
// RunSessiondChild) with its default flags but for where to listen (a port
// the system picks; no metrics port) and what to reach, in an environment
// that carries nothing else of ours.
func startSessiondProcess(bin, dbURL, redisURL string, logTo io.Writer) (*sessiondProcess, error) {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		bin = self
		env = append(env, childEnv+"=1")
	}
	cmd := exec.Command(bin, "serve", "--database-url", dbURL, "--redis-url", redisURL,
		"--grpc-addr", "127.0.0.1:0", "--metrics-addr", "")
	cmd.Env = env
	// Its own process group (a Ctrl-C reaches us, and we stop it), and it
	// dies with us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p := &sessiondProcess{cmd: cmd, addr: make(chan string, 1), exited: make(chan struct{}), logs: &logWatch{copyTo: logTo}}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sessiond: %w", err)
	}
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if addr, ok := p.logs.line(sc.Bytes()); ok {
				p.listening = time.Now()
				p.addr <- addr
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	return p, nil
}

// stop ends sessiond with SIGTERM (SIGKILL if it has not exited 30 s
// later) and waits for it.
func (p *sessiondProcess) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("sessiond: %w:\n%s", err, p.logTail())
	}
	return nil
}

func (p *sessiondProcess) logTail() string { return p.logs.tail() }

// logWatch reads sessiond's JSON log, line by line: where it listens, what
// its first completed warming run of each phase did, and the last lines
// (for errors).
type logWatch struct {
	copyTo   io.Writer // every line, if set
	mu       sync.Mutex
	last     []string
	warms    map[string]warmLog // completed runs, by phase
	progress map[string][2]int  // the last progress (done, total) of each phase
}

// Warming phases as sessiond logs them (internal/warm.Phase).
const (
	phaseStartup    = "startup" // also a run logged without a phase (an older sessiond)
	phaseBackground = "background"
)

// warmLog is a completed warming run, as sessiond logs it, and when its
// line was read.
type warmLog struct {
	warmed, kept, total int
	ms                  int64
	at                  time.Time
}

const logTailLines = 40

// line takes one log line and returns the gRPC address when the line says
// sessiond is serving on it.
func (l *logWatch) line(b []byte) (addr string, serving bool) {
	var rec struct {
		Msg        string `json:"msg"`
		Addr       string `json:"addr"`
		Phase      string `json:"phase"`
		Warmed     int    `json:"warmed"`
		Kept       int    `json:"kept"`
		Done       int    `json:"done"`
		Total      int    `json:"total"`
		DurationMS int64  `json:"duration_ms"`
	}
	err := json.Unmarshal(b, &rec)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.copyTo != nil {
		fmt.Fprintf(l.copyTo, "%s\n", b)
	}
	l.last = append(l.last, string(b))
	if len(l.last) > logTailLines {
		l.last = l.last[len(l.last)-logTailLines:]
	}
	phase := cmp.Or(rec.Phase, phaseStartup)
	switch {
	case err != nil:
	case strings.HasPrefix(rec.Msg, "[CacheWarming] Progress"):
		if l.progress == nil {
			l.progress = map[string][2]int{}
		}
		l.progress[phase] = [2]int{rec.Done, rec.Total}
	case strings.HasPrefix(rec.Msg, "[CacheWarming] Completed"):
		if l.warms == nil {
			l.warms = map[string]warmLog{}
		}
		if _, seen := l.warms[phase]; !seen {
			l.warms[phase] = warmLog{warmed: rec.Warmed, kept: rec.Kept, total: rec.Total, ms: rec.DurationMS, at: time.Now()}
		}
	case rec.Msg == "sessiond serving" && rec.Addr != "":
		return rec.Addr, true
	}
	return "", false
}

// phase is the first completed run of phase, its completion timed from
// serving.
func (l *logWatch) phase(phase string, serving time.Time) WarmPhase {
	l.mu.Lock()
	defer l.mu.Unlock()
	w, ok := l.warms[phase]
	if !ok {
		p := l.progress[phase]
		return WarmPhase{Done: p[0], Found: p[1]}
	}
	return WarmPhase{Complete: true, Warmed: w.warmed, Kept: w.kept, Found: w.total, MS: w.ms, DoneAfterServingMS: ms(w.at.Sub(serving))}
}

func (l *logWatch) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.last, "\n")
}

// percentile50 is the median of vs (the lower middle one for an even count;
// 0 for none). It reorders nothing.
func percentile50(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func cmdColdStart(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("coldstart", `sessionbench coldstart measures sessiond's first seconds, as a user starting it with
the defaults sees them. For each run: a freshly seeded database (--sessions, the demo
shape), a fresh redis-server (cold: empty, Redis's defaults), and sessiond started as
its own process with its default flags (the guide's warm: 1,000 sessions, batches of
100, 50 ms apart, and whatever sessiond's defaults do after SERVING); only --grpc-addr
127.0.0.1:0, --metrics-addr "" and the URLs are given. The moment its health (grpc.health.v1 Watch) says SERVING, --concurrency
callers start a closed loop drawing sessions by --mix (Zipf(1.1) over every seeded
session ranked by activity) for --duration. It reports the time from process start
to SERVING, the hit rate (local + redis of OK answers) of each second, and what
sessiond's log says its warming runs did (startup, and background if it completes
while the load runs). Every answer is checked against the
seeded truth: a wrong answer fails the command.

sessiond is this program run again as sessiond (internal/cli, as cmd/sessiond), or
--sessiond BIN (e.g. bin/sessiond from make build). About 20 s per run.`, stderr)
	dbURL := fs.String("database-url", "", "Postgres URL of an empty database, for --runs 1 (empty: a throwaway PostgreSQL, a fresh database per run)")
	sessions := fs.Int("sessions", 50_000, "sessions to seed")
	s := fs.Int64("seed", 1, "data and traffic seed")
	mixS := fs.String("mix", "zipf=1.1", "token mix (see load --help)")
	dur := fs.Duration("duration", 10*time.Second, "how long the load runs from SERVING")
	conc := fs.Int("concurrency", 32, "closed-loop callers")
	conns := fs.Int("conns", 4, "gRPC connections")
	runs := fs.Int("runs", 3, "cold starts (medians reported)")
	bin := fs.String("sessiond", "", "sessiond binary to start (empty: this program, as sessiond)")
	logPath := fs.String("sessiond-log", "", "write everything sessiond logs to this file")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of each call")
	asJSON := fs.Bool("json", false, "print JSON instead of markdown")
	if err := parse(fs, args); err != nil {
		return err
	}
	mix, err := ParseMix(*mixS)
	if err != nil {
		return err
	}
	var logTo io.Writer
	if *logPath != "" {
		f, err := os.Create(*logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		logTo = f
	}
	rep, err := ColdStart(ctx, ColdStartOptions{
		DatabaseURL: *dbURL, Sessions: *sessions, Seed: *s, Mix: mix, Duration: *dur, Concurrency: *conc,
		Conns: *conns, Runs: *runs, Sessiond: *bin, SessiondLog: logTo, Timeout: *timeout, Progress: stderr,
	})
	if len(rep.Runs) == 0 {
		return err
	}
	rep.Command = commandLine(append([]string{"coldstart"}, args...))
	if werr := writeReport(stdout, *asJSON, rep, func(w io.Writer) { WriteColdStart(w, rep) }); werr != nil {
		return errors.Join(err, werr)
	}
	if err != nil {
		return err
	}
	for i, r := range rep.Runs {
		if r.Load.Wrong > 0 {
			return fmt.Errorf("run %d: %d wrong answers", i+1, r.Load.Wrong)
		}
	}
	return nil
}

// fmtWarmPhase renders a warming run from sessiond's log; after says when
// it ended relative to SERVING.
func fmtWarmPhase(p WarmPhase, after bool) string {
	switch {
	case !p.Complete && p.Found > 0:
		return fmt.Sprintf("not completed: %d of %d when the load ended", p.Done, p.Found)
	case !p.Complete:
		return "not completed, no progress logged"
	}
	s := fmt.Sprintf("%d warmed", p.Warmed)
	if p.Kept > 0 {
		s += fmt.Sprintf(" + %d kept", p.Kept)
	}
	s += fmt.Sprintf(" of %d in %d ms", p.Found, p.MS)
	if after {
		s += fmt.Sprintf(", done %.1f s after SERVING", p.DoneAfterServingMS/1000)
	}
	return s
}

// Issue 12's cold-start targets, printed beside the figures.
const (
	TargetColdHitRate   = 95
	TargetColdServingMS = 600
)

// WriteColdStart writes a cold-start report as markdown: one row per run
// and their medians, then the hit rate of each second.
func WriteColdStart(w io.Writer, rep ColdStartReport) {
	fmt.Fprintf(w, "command: `%s`\n\n", rep.Command)
	if len(rep.Runs) > 0 {
		fmt.Fprintf(w, "seeded (each run): %s\n", summaryLine(rep.Runs[0].Seed))
	}
	fmt.Fprintf(w, "mix: %s, %s, from the moment health said SERVING\n\n", rep.Mix, rep.Mode)
	fmt.Fprintln(w, "| run | start → listening ms | start → SERVING ms | startup warm | background warm | load sent after SERVING ms | calls | hit rate over the run | wrong |")
	fmt.Fprintln(w, "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
	var listening, serving, hit []float64
	for i, r := range rep.Runs {
		fmt.Fprintf(w, "| %d | %.0f | %.0f | %s | %s | %.1f | %d | %.1f %% | %s |\n", i+1, r.ToListeningMS, r.ToServingMS,
			fmtWarmPhase(r.Startup, false), fmtWarmPhase(r.Background, true), r.LoadAfterServingMS, r.Load.Calls, r.Load.HitRate, fmtWrong(r.Load))
		listening, serving, hit = append(listening, r.ToListeningMS), append(serving, r.ToServingMS), append(hit, r.Load.HitRate)
	}
	if len(rep.Runs) > 1 {
		fmt.Fprintf(w, "| median | %.0f | %.0f | | | | | %.1f %% | |\n", percentile50(listening), percentile50(serving), percentile50(hit))
	}
	// Each second's hit rate and p99 (of the calls made in it): what a
	// faster or slower background warm trades.
	fmt.Fprint(w, "\n| second |")
	for i := range rep.Runs {
		fmt.Fprintf(w, " run %d hit %% |", i+1)
	}
	fmt.Fprint(w, " median hit % |")
	for i := range rep.Runs {
		fmt.Fprintf(w, " run %d p99 ms |", i+1)
	}
	fmt.Fprint(w, " median p99 ms |\n| ---: |")
	for range 2 * (len(rep.Runs) + 1) {
		fmt.Fprint(w, " ---: |")
	}
	fmt.Fprintln(w)
	last := -1
	bySecond := make([]map[int]Second, len(rep.Runs))
	for i, r := range rep.Runs {
		bySecond[i] = map[int]Second{}
		for _, s := range r.Load.Series {
			bySecond[i][s.T] = s
			last = max(last, s.T)
		}
	}
	for sec := 0; sec <= last; sec++ {
		var hits, p99s []float64
		hitCells, p99Cells := make([]string, len(rep.Runs)), make([]string, len(rep.Runs))
		for i := range rep.Runs {
			if v, ok := bySecond[i][sec]; ok {
				hits, p99s = append(hits, v.HitRate), append(p99s, v.P99)
				hitCells[i], p99Cells[i] = fmt.Sprintf("%.1f", v.HitRate), fmt.Sprintf("%.1f", v.P99)
			}
		}
		fmt.Fprintf(w, "| %d | %s | %.1f | %s | %.1f |\n", sec, strings.Join(hitCells, " | "), percentile50(hits),
			strings.Join(p99Cells, " | "), percentile50(p99s))
	}
	fmt.Fprintf(w, "\ntargets (issue 12): hit rate ≥ %d %% over the first 10 s after SERVING, SERVING ≤ %.1f s after start, with the defaults\n",
		TargetColdHitRate, float64(TargetColdServingMS)/1000)
}
