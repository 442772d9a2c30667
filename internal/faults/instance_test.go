//go:build faults

package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/bench"
)

// connsPerInstance is how many client connections the load opens to each
// instance, as a few callers behind a load balancer would.
const connsPerInstance = 2

// instance is one `sessiond serve` process.
type instance struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	addr    string // the gRPC address it logged ("sessiond serving")
	conns   []*grpc.ClientConn
	target  *Target
	health  healthpb.HealthClient
	admin   sessiondv1.SessionServiceClient

	done    chan struct{} // closed when the process has exited
	exitErr error         // from Wait; read after done
}

// startInstance runs `sessiond serve` on 127.0.0.1:0 with the suite's
// settings plus extra flags, its stderr (JSON log lines) copied to
// logDir/name.log, and returns once it has logged its address and the
// client connections are made. It does not wait for SERVING.
func startInstance(ctx context.Context, logDir, name string, args []string) (*instance, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// Several instances on one machine: each its own ops port (the default
	// :9090 is for one per host), and a short shutdown delay (there is no
	// load balancer to wait for).
	cmd := exec.Command(sessiondBin, append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--log-format", "json",
		"--metrics-addr", "127.0.0.1:0", "--shutdown-delay", "500ms"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // nothing from our environment leaks into its configuration
	// Its own process group, so a Ctrl-C reaches only the test, which stops it; killed if the test dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	cmd.Stdout = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	in := &instance{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	addrs := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			logFile.Write(append(line, '\n'))
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "sessiond serving" && rec.Addr != "" {
				select {
				case addrs <- rec.Addr:
				default:
				}
			}
		}
		_, _ = io.Copy(logFile, stderr)
	}()
	go func() {
		<-copied // Wait closes the pipe: read it all first
		in.exitErr = cmd.Wait()
		close(in.done)
	}()
	select {
	case in.addr = <-addrs:
	case <-in.done:
		return nil, fmt.Errorf("%s exited before serving (%v); see %s", name, in.exitErr, logPath)
	case <-ctx.Done():
		in.kill()
		return nil, fmt.Errorf("%s did not log its address: %w; see %s", name, ctx.Err(), logPath)
	case <-time.After(30 * time.Second):
		in.kill()
		return nil, fmt.Errorf("%s did not log its address within 30s; see %s", name, logPath)
	}
	in.target = &Target{Name: name}
	for range connsPerInstance {
		conn, err := grpc.NewClient(in.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			in.kill()
			return nil, err
		}
		in.conns = append(in.conns, conn)
		cl := sessiondv1.NewSessionServiceClient(conn)
		in.target.Callers = append(in.target.Callers, bench.Caller(func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
			return cl.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: token})
		}))
	}
	in.health = healthpb.NewHealthClient(in.conns[0])
	in.admin = sessiondv1.NewSessionServiceClient(in.conns[0])
	return in, nil
}

// alive reports whether the process is still running.
func (in *instance) alive() bool {
	select {
	case <-in.done:
		return false
	default:
		return true
	}
}

func (in *instance) pid() int { return in.cmd.Process.Pid }

// serving asks the health service once.
func (in *instance) serving(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	r, err := in.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("%s is %v", in.name, r.GetStatus())
	}
	return nil
}

// waitServing waits until health says SERVING, the process exits, or within passes.
func (in *instance) waitServing(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := in.serving(ctx)
		if err == nil {
			return nil
		}
		if !in.alive() {
			return fmt.Errorf("%s exited (%v); see %s", in.name, in.exitErr, in.logPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not SERVING within %v (last: %v); see %s", in.name, within, err, in.logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stats calls GetStats (the admin RPCs are open: the suite sets no --admin-token).
func (in *instance) stats(ctx context.Context) (*sessiondv1.GetStatsResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return in.admin.GetStats(ctx, &sessiondv1.GetStatsRequest{})
}

// warm runs a WarmCache with the instance's settings and waits for its end,
// as an operator (or sessiond's periodic re-warm) would after losing the cache.
func (in *instance) warm(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := in.admin.WarmCache(ctx, &sessiondv1.WarmCacheRequest{})
	if err != nil {
		return err
	}
	for {
		p, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("warm %s: %w", in.name, err)
		}
		if p.GetDone() {
			if p.GetOutcome() != sessiondv1.WarmOutcome_WARM_OUTCOME_COMPLETED {
				return fmt.Errorf("warm %s: %v %s", in.name, p.GetOutcome(), p.GetError())
			}
			return nil
		}
	}
}

// terminate sends SIGTERM, as an orchestrator stopping the instance does.
func (in *instance) terminate() { _ = in.cmd.Process.Signal(syscall.SIGTERM) }

// wait waits for the exit, up to within; false if it did not come.
func (in *instance) wait(within time.Duration) bool {
	select {
	case <-in.done:
		return true
	case <-time.After(within):
		return false
	}
}

// stop sends SIGTERM, waits up to 30 s (SIGKILL after), and closes the clients.
func (in *instance) stop() {
	in.terminate()
	if !in.wait(30 * time.Second) {
		in.kill()
	}
	for _, c := range in.conns {
		c.Close()
	}
}

func (in *instance) kill() {
	_ = in.cmd.Process.Kill()
	<-in.done
}

// procStats is what the OS says of a process.
type procStats struct {
	Threads int // OS threads
	FDs     int // open file descriptors: sockets to clients, Postgres and Redis, and files
	RSSKiB  int
}

func (p procStats) String() string {
	return fmt.Sprintf("%d threads, %d fds, %d MiB RSS", p.Threads, p.FDs, p.RSSKiB>>10)
}

// readProcStats reads /proc/PID. sessiond has no metrics endpoint yet, so the
// number of goroutines cannot be read from outside; these are the nearest
// robust signs of a pile-up: calls piling up on a connection or a leaked
// connection per call show as file descriptors, goroutines blocked in system
// calls as threads, and many parked goroutines (8 KiB of stack and more each)
// as resident memory. Goroutines parked on the network show in none of them
// but memory.
func readProcStats(pid int) (procStats, error) {
	var p procStats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "Threads":
			p.Threads, _ = strconv.Atoi(f[0])
		case "VmRSS":
			p.RSSKiB, _ = strconv.Atoi(f[0])
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return p, err
	}
	p.FDs = len(fds)
	if p.Threads == 0 {
		return p, errors.New("no Threads line in /proc status")
	}
	return p, nil
}
