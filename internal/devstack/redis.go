package devstack

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/rueidis"
)

// RedisOptions configures StartRedis. The zero value is ready to use.
type RedisOptions struct {
	// Dir is the directory in which the server's temporary directory is created; "" means os.TempDir().
	Dir string
}

// Redis is a throwaway Redis server started by StartRedis, or one node of a RedisCluster or RedisSentinel.
// Its methods are safe for concurrent use.
type Redis struct {
	srv *server
}

// StartRedis starts redis-server on a free 127.0.0.1 port, with persistence off (save "", appendonly no) and
// its working directory and redis.log in a new temporary directory, and returns once it answers.
//
// ctx bounds the wait for readiness (one minute if it has no deadline); the server itself lives until Stop,
// Kill, or the exit of this process. An error wraps ErrNotInstalled when redis-server is missing, and includes
// the end of the server's log when it failed to start. The server runs in its own process group, so a Ctrl-C
// in the terminal does not reach it: the caller stops it.
func StartRedis(ctx context.Context, opts RedisOptions) (*Redis, error) {
	return runRedis(ctx, redisSpec{parent: opts.Dir, pattern: "devstack-redis-"})
}

// redisSpec says how to run one redis-server or redis-sentinel: StartRedis's standalone server, a node of a
// cluster or of a Sentinel setup, or the sentinel itself.
type redisSpec struct {
	// bin is the program, "redis-server" when empty.
	bin string
	// parent is where the server's directory is created ("" means os.TempDir()); pattern names it.
	parent, pattern string
	// setup, if set, runs once in the new directory before the first start (a sentinel needs its config file).
	setup func(dir string) error
	// args returns the command line after the program for a start on port; nil means redisArgs(dir, port).
	// It is called again for each start, Restart included, so it may depend on the current state.
	args func(dir string, port int) []string
}

// redisArgs are the options every devstack redis-server runs with: loopback only, persistence off, its files
// in dir, in the foreground. Everything else is Redis's default, as production runs it: sessionbench measures
// memory per session on these servers (sessiond's entries are strings, so the hash encoding limits once set here
// no longer matter).
func redisArgs(dir string, port int) []string {
	return []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", dir,
		"--daemonize", "no",
	}
}

// runRedis creates the directory of spec, starts the server on a free port and returns once it answers.
func runRedis(ctx context.Context, spec redisSpec) (_ *Redis, err error) {
	name := cmp.Or(spec.bin, "redis-server")
	bin, err := exec.LookPath(name)
	if err != nil {
		// Each program comes in the Debian package of its name.
		return nil, fmt.Errorf("%w: %s is not in PATH; "+
			"install it with `apt-get install %s` (or run `make deps`)", ErrNotInstalled, name, name)
	}
	dir, err := newDir(spec.parent, spec.pattern)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if spec.setup != nil {
		if err := spec.setup(dir); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
	}
	args := spec.args
	if args == nil {
		args = redisArgs
	}
	r := &Redis{srv: &server{
		name:    name,
		dir:     dir,
		logPath: filepath.Join(dir, "redis.log"),
		cmd: func(port int) *exec.Cmd {
			cmd := exec.Command(bin, args(dir, port)...)
			cmd.Dir = dir
			return cmd
		},
		probe:   redisProbe,
		stopSig: syscall.SIGTERM, // Redis's clean shutdown; with persistence off it writes nothing
		killSig: syscall.SIGKILL,
	}}
	if err := r.srv.startOnFreePort(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// URL returns redis://127.0.0.1:PORT. It stays the same across Kill and Restart.
func (r *Redis) URL() string { return "redis://" + r.Addr() }

// Addr returns the server's host:port, 127.0.0.1:PORT.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.srv.port)) }

// Port returns the TCP port the server listens on.
func (r *Redis) Port() int { return r.srv.port }

// Dir returns the server's directory, which holds redis.log. Stop removes it.
func (r *Redis) Dir() string { return r.srv.dir }

// Stop shuts the server down (SIGTERM), waits for it to exit and removes its directory. Later calls, and later
// Kill calls, do nothing and return nil; Restart fails.
func (r *Redis) Stop() error { return r.srv.stop() }

// Kill stops the server with SIGKILL and returns once it has exited, so clients see an outage at once.
// Its directory is kept for Restart; with persistence off, the data is gone (unless a SAVE wrote SnapshotPath). Kill on a stopped server does nothing.
func (r *Redis) Kill() error {
	r.srv.kill()
	return nil
}

// Restart starts a fresh server on the same port, and so with the same URL, after Kill; if it is running,
// Restart shuts it down first. The new server is empty unless a SAVE or BGSAVE wrote SnapshotPath meanwhile:
// redis-server loads that file at start even with persistence off, as a restore from a backup would. Remove
// it for an empty restart. Restart returns once the server answers (the snapshot loaded), bounded by ctx as in
// StartRedis. It fails after Stop and if another process has taken the port meanwhile.
func (r *Redis) Restart(ctx context.Context) error { return r.srv.restart(ctx) }

// SnapshotPath is where SAVE and BGSAVE write the RDB snapshot that Restart loads: dump.rdb in Dir.
// With persistence off, nothing else writes it (a clean shutdown does not save).
func (r *Redis) SnapshotPath() string { return filepath.Join(r.srv.dir, "dump.rdb") }

// redisProbe succeeds once the redis-server with process id pid answers on port. Checking the id matters
// because, if another process took the port, we might otherwise be talking to a different server.
func redisProbe(ctx context.Context, port, pid int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Unblock the reads below when ctx ends.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := io.WriteString(conn, "INFO server\r\n"); err != nil {
		return err
	}
	// The reply is a bulk string: "$<length>\r\n<length bytes>\r\n", or an error line such as "-LOADING ...".
	br := bufio.NewReader(conn)
	header, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(header, "$")))
	if !strings.HasPrefix(header, "$") || err != nil || n < 0 {
		return fmt.Errorf("INFO answered %q", strings.TrimSpace(header))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return err
	}
	if !strings.Contains(string(body), "\r\nprocess_id:"+strconv.Itoa(pid)+"\r\n") {
		return fmt.Errorf("%s is served by another redis-server", addr)
	}
	return nil
}

// redisCommand sends one command to the one server at addr, a node of a cluster or a sentinel included (no
// discovery, no retry, no client-side cache), and returns its reply; a Redis error reply is an error.
func redisCommand(ctx context.Context, addr string, args ...string) (rueidis.RedisMessage, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{addr},
		ForceSingleClient: true,
		DisableCache:      true,
		DisableRetry:      true,
		Dialer:            net.Dialer{Timeout: probeTimeout},
	})
	if err != nil {
		return rueidis.RedisMessage{}, err
	}
	defer c.Close()
	return c.Do(ctx, c.B().Arbitrary(args...).Build()).ToMessage()
}
