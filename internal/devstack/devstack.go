// Package devstack runs throwaway PostgreSQL and Redis servers from their binaries, for tests and local development.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotInstalled is wrapped by the errors of StartPostgres and StartRedis when a server binary cannot be found.
// The error's text says which package to install.
var ErrNotInstalled = errors.New("server binary not installed")

const (
	// defaultStartTimeout bounds startup when the caller's context has no deadline,
	// so a server that never becomes ready cannot hang a test binary.
	defaultStartTimeout = time.Minute
	// stopTimeout bounds a graceful stop before we fall back to SIGKILL.
	stopTimeout = 15 * time.Second
	// portAttempts is how many free ports we try when another process takes the one we picked before the server binds it.
	portAttempts = 5
	// pollInterval is the pause between readiness probes.
	pollInterval = 10 * time.Millisecond
	// probeTimeout bounds one probe, so a stuck one cannot hide the server's exit.
	probeTimeout = 2 * time.Second
)

// errPortInUse marks a start that failed because the port was taken between picking and binding it.
var errPortInUse = errors.New("port already in use")

// server is the lifecycle shared by Postgres and Redis: one child process listening on a fixed 127.0.0.1 port,
// with its files in a directory that we own and remove on stop.
type server struct {
	name    string                                         // the binary's name, for errors
	dir     string                                         // removed by stop
	logPath string                                         // the child's stdout and stderr, appended across restarts
	cmd     func(port int) *exec.Cmd                       // builds the command that runs the server in the foreground
	probe   func(ctx context.Context, port, pid int) error // nil once the server with this pid accepts clients on port
	stopSig syscall.Signal                                 // asks for a clean shutdown
	killSig syscall.Signal                                 // stops at once, leaving the files for a restart

	// port is fixed after the first successful start, so Restart comes back where clients expect it.
	port int

	mu      sync.Mutex
	proc    *process // nil while not running
	removed bool     // dir is gone: the server cannot start again
}

// startOnFreePort starts the server on a port that was free a moment ago, and tries another one if it was taken meanwhile.
func (s *server) startOnFreePort(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		s.port = port
		err = s.start(ctx)
		if errors.Is(err, errPortInUse) && attempt < portAttempts {
			continue
		}
		return err
	}
}

// start runs the server on s.port and waits until it is ready. The caller holds s.mu.
func (s *server) start(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cmd := s.cmd(s.port)
	proc, err := startProcess(cmd, s.logPath)
	if err != nil {
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	if err := s.waitReady(ctx, proc); err != nil {
		proc.kill()
		return err
	}
	s.proc = proc
	return nil
}

// waitReady polls s.probe until it succeeds, the process exits, or ctx ends.
func (s *server) waitReady(ctx context.Context, proc *process) error {
	// A probe stuck on something else listening on the port must not hide our server's exit.
	probeCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-proc.done:
			cancel()
		case <-probeCtx.Done():
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var probeErr error
	for {
		select {
		case <-proc.done:
			tail := logTail(s.logPath, proc.logStart)
			err := fmt.Errorf("%s on port %d exited during startup (%v); end of %s:\n%s", s.name, s.port, proc.err, s.logPath, tail)
			// "Address already in use" (postgres, redis, nginx), "address already in use" (caddy)
			if strings.Contains(strings.ToLower(tail), "address already in use") {
				return fmt.Errorf("%w: %w", errPortInUse, err)
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("%s on port %d not ready (last probe: %v): %w; end of %s:\n%s",
				s.name, s.port, probeErr, ctx.Err(), s.logPath, logTail(s.logPath, proc.logStart))
		case <-timer.C:
		}
		oneCtx, cancelOne := context.WithTimeout(probeCtx, probeTimeout)
		probeErr = s.probe(oneCtx, s.port, proc.cmd.Process.Pid)
		cancelOne()
		if probeErr == nil {
			return nil
		}
		timer.Reset(pollInterval)
	}
}

// restart stops the server if it runs (cleanly, keeping its files) and starts it again on the same port.
func (s *server) restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return fmt.Errorf("restart %s: already stopped and removed", s.name)
	}
	s.halt(s.stopSig)
	return s.start(ctx)
}

// kill stops the server with s.killSig and keeps its files.
func (s *server) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.halt(s.killSig)
}

// running reports whether the server runs: started, and neither killed nor stopped since.
func (s *server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// stop shuts the server down cleanly and removes its directory. Calls after the first return nil.
func (s *server) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return nil
	}
	s.halt(s.stopSig)
	s.removed = true
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("stop %s: %w", s.name, err)
	}
	return nil
}

// halt sends sig, waits for the exit (SIGKILL after stopTimeout) and forgets the process. The caller holds s.mu.
// The exit status is not reported: we asked for the exit.
func (s *server) halt(sig syscall.Signal) {
	if s.proc == nil {
		return
	}
	_ = s.proc.cmd.Process.Signal(sig) // fails only if it already exited
	select {
	case <-s.proc.done:
	case <-time.After(stopTimeout):
		s.proc.kill()
	}
	s.proc = nil
}

// withDefaultTimeout returns ctx bounded by defaultStartTimeout if it has no deadline, so a server that never
// becomes ready cannot hang a test binary.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultStartTimeout)
}

// poll calls check, each call bounded by probeTimeout, every pollInterval until it returns nil, or until ctx
// ends: then the error starts with what and ends with the last check's error.
func poll(ctx context.Context, check func(ctx context.Context) error, what string) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last error
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last check: %v)", what, ctx.Err(), last)
		case <-timer.C:
		}
		oneCtx, cancel := context.WithTimeout(ctx, probeTimeout)
		last = check(oneCtx)
		cancel()
		if last == nil {
			return nil
		}
		timer.Reset(pollInterval)
	}
}

// process is a started child whose exit is observed by a goroutine.
type process struct {
	cmd      *exec.Cmd
	logStart int64         // the log's size when the child started: what it wrote comes after
	done     chan struct{} // closed when the child has exited
	err      error         // from Wait; read only after done is closed
}

// startProcess starts cmd with its output appended to logPath, in its own process group (so a Ctrl-C in the
// terminal reaches only our process, which stops the servers in order) and with SIGKILL as its parent-death
// signal (so it does not outlive us; strictly, the signal comes when the OS thread that started it exits,
// which in Go happens only with our process or a goroutine that exits while locked to its thread).
func startProcess(cmd *exec.Cmd, logPath string) (*process, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// The child gets its own copy of the descriptor, so ours can be closed once it has started.
	defer log.Close()
	fi, err := log.Stat()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, logStart: fi.Size(), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// kill sends SIGKILL and waits for the exit.
func (p *process) kill() {
	_ = p.cmd.Process.Kill() // fails only if it already exited
	<-p.done
}

// freePort returns a TCP port on 127.0.0.1 that was free when we asked. The servers need a number on their
// command line, so we cannot hand them a listener; the callers retry when the port is taken before they bind it.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// logTail returns the last lines written to a log file from offset from on, for error messages.
func logTail(path string, from int64) string {
	const limit = 4 << 10
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(reading log: %v)", err)
	}
	seek := fi.Size()-from > limit
	if seek {
		from = fi.Size() - limit
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return fmt.Sprintf("(reading log: %v)", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(reading log: %v)", err)
	}
	s := string(b)
	if seek {
		// Drop the partial first line.
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	return strings.TrimRight(s, "\n")
}

// newDir creates the server's directory: a new temporary one inside parent, or inside os.TempDir() if parent is "".
func newDir(parent, pattern string) (string, error) {
	dir, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		return "", fmt.Errorf("create directory: %w", err)
	}
	// The servers report their directory absolute and with symlinks resolved; the probes compare it with ours.
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("create directory: %w", err)
	}
	return abs, nil
}
