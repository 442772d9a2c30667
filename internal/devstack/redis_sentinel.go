package devstack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// defaultDownAfter is how long the master may not answer before the sentinel fails over (Redis's default is
	// 30 s). 1 s, the sentinel's ping period, made it fail over a healthy new master right after a failover on a
	// busy machine.
	defaultDownAfter = 2 * time.Second
	// sentinelFailoverTimeout bounds a failover's steps, and a sentinel waits twice as long before it fails over
	// the same master again by itself (Redis's default is 3 minutes), in milliseconds.
	sentinelFailoverTimeout = 5000
	// defaultMasterSet names the master when RedisSentinelOptions.MasterSet is empty.
	defaultMasterSet = "devstack"
)

// RedisSentinelOptions configures StartRedisSentinel. The zero value is ready to use.
type RedisSentinelOptions struct {
	// Dir is the directory in which the setup's temporary directory is created; "" means os.TempDir().
	Dir string
	// MasterSet is the name under which the sentinel monitors the master; "" means "devstack".
	MasterSet string
	// DownAfter is how long the master may not answer before the sentinel fails over; 0 means 2 s. Less than
	// 2 s risks failovers of a master that is merely slow on a busy machine.
	DownAfter time.Duration
}

// RedisSentinel is a throwaway Redis master, its replica, and one redis-sentinel watching them, started by
// StartRedisSentinel. Its methods are safe for concurrent use.
type RedisSentinel struct {
	dir       string
	masterSet string
	nodes     [2]*Redis
	sentinel  *Redis

	mu     sync.Mutex
	master int // index in nodes of the master as of the last start, Failover or KillMaster
}

// StartRedisSentinel starts two redis-server nodes as StartRedis does (free ports, persistence off, their own
// directories), the second a replica of the first, and one redis-sentinel monitoring the first under
// MasterSet with a quorum of 1 (one sentinel may decide alone): it fails over when the master has not
// answered for DownAfter. It returns once the replica is in sync and the sentinel knows both nodes.
//
// ctx bounds the start (one minute per step if it has no deadline); the servers live until Stop, or the exit
// of this process. An error wraps ErrNotInstalled when redis-server or redis-sentinel is missing.
func StartRedisSentinel(ctx context.Context, opts RedisSentinelOptions) (_ *RedisSentinel, err error) {
	dir, err := newDir(opts.Dir, "devstack-redis-sentinel-")
	if err != nil {
		return nil, fmt.Errorf("start redis sentinel: %w", err)
	}
	s := &RedisSentinel{dir: dir, masterSet: cmp.Or(opts.MasterSet, defaultMasterSet)}
	downAfter := cmp.Or(opts.DownAfter, defaultDownAfter)
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	for i := range s.nodes {
		s.nodes[i], err = runRedis(ctx, redisSpec{
			parent:  dir,
			pattern: "node" + strconv.Itoa(i+1) + "-",
			args: func(dir string, port int) []string {
				// A node (re)starts as a replica of the current master, as the sentinel would make it.
				// Replication goes through memory only: no waiting 5 s for more replicas before a full sync, and no
				// dump.rdb left for a Restart to load (persistence is off).
				args := append(redisArgs(dir, port), "--repl-diskless-sync-delay", "0", "--repl-diskless-load", "swapdb")
				if m := s.masterPort(); m != 0 && m != port {
					args = append(args, "--replicaof", "127.0.0.1", strconv.Itoa(m))
				}
				return args
			},
		})
		if err != nil {
			return nil, fmt.Errorf("start redis sentinel: %w", err)
		}
	}
	if err := waitReplicaSynced(ctx, s.nodes[1].Addr()); err != nil {
		return nil, err
	}
	s.sentinel, err = runRedis(ctx, redisSpec{
		bin:     "redis-sentinel",
		parent:  dir,
		pattern: "sentinel-",
		setup: func(dir string) error {
			// The sentinel insists on a config file it can rewrite: it records what it learns there.
			conf := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 1\n"+
				"sentinel down-after-milliseconds %[1]s %[3]d\n"+
				"sentinel failover-timeout %[1]s %[4]d\n",
				s.masterSet, s.nodes[0].Port(), downAfter.Milliseconds(), sentinelFailoverTimeout)
			return os.WriteFile(filepath.Join(dir, "sentinel.conf"), []byte(conf), 0o644)
		},
		args: func(dir string, port int) []string {
			return []string{filepath.Join(dir, "sentinel.conf"),
				"--port", strconv.Itoa(port),
				"--bind", "127.0.0.1",
				"--dir", dir,
				"--daemonize", "no",
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("start redis sentinel: %w", err)
	}
	if err := s.waitSentinelReady(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// masterPort returns the port of the master: as the sentinel says if it answers, else as of the last start,
// Failover or KillMaster; 0 before the first node has started.
func (s *RedisSentinel) masterPort() int {
	if s.sentinel != nil && s.sentinel.srv.running() {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		if m, err := s.Master(ctx); err == nil {
			return m.Port()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes[0] == nil {
		return 0
	}
	return s.nodes[s.master].Port()
}

// waitReplicaSynced returns once the node at addr is a replica whose link to its master is up.
func waitReplicaSynced(ctx context.Context, addr string) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return poll(ctx, func(ctx context.Context) error {
		info, err := redisInfo(ctx, addr, "replication")
		if err != nil {
			return err
		}
		if info["role"] != "slave" || info["master_link_status"] != "up" {
			return fmt.Errorf("%s: role:%s master_link_status:%s", addr, info["role"], info["master_link_status"])
		}
		return nil
	}, "redis replica not in sync")
}

// waitSentinelReady returns once the sentinel sees the master and a replica it could promote, both healthy.
func (s *RedisSentinel) waitSentinelReady(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return poll(ctx, func(ctx context.Context) error {
		m, err := redisCommand(ctx, s.SentinelAddr(), "SENTINEL", "MASTER", s.masterSet)
		if err != nil {
			return err
		}
		master, err := m.AsStrMap()
		if err != nil {
			return err
		}
		if master["flags"] != "master" {
			return fmt.Errorf("sentinel: master flags %q", master["flags"])
		}
		m, err = redisCommand(ctx, s.SentinelAddr(), "SENTINEL", "REPLICAS", s.masterSet)
		if err != nil {
			return err
		}
		replicas, err := m.ToArray()
		if err != nil {
			return err
		}
		for _, r := range replicas {
			if r, err := r.AsStrMap(); err == nil && r["flags"] == "slave" && r["master-link-status"] == "ok" {
				return nil
			}
		}
		return fmt.Errorf("sentinel knows no healthy replica of %s", s.masterSet)
	}, "redis sentinel not ready")
}

// redisInfo returns the fields of one INFO section of the server at addr.
func redisInfo(ctx context.Context, addr, section string) (map[string]string, error) {
	m, err := redisCommand(ctx, addr, "INFO", section)
	if err != nil {
		return nil, fmt.Errorf("%s: INFO: %w", addr, err)
	}
	text, err := m.ToString()
	if err != nil {
		return nil, fmt.Errorf("%s: INFO: %w", addr, err)
	}
	info := map[string]string{}
	// Over RESP3 the reply is a verbatim string, which rueidis returns with its format prefix.
	for line := range strings.Lines(strings.TrimPrefix(text, "txt:")) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			info[k] = v
		}
	}
	return info, nil
}

// URL returns the address of the master through the sentinel, in the form rueidis.ParseURL reads:
// redis://127.0.0.1:SENTINELPORT?master_set=NAME.
func (s *RedisSentinel) URL() string {
	return "redis://" + s.SentinelAddr() + "?master_set=" + s.masterSet
}

// MasterSet returns the name under which the sentinel monitors the master.
func (s *RedisSentinel) MasterSet() string { return s.masterSet }

// SentinelAddr returns the sentinel's host:port.
func (s *RedisSentinel) SentinelAddr() string { return s.sentinel.Addr() }

// Sentinel returns the redis-sentinel process. Killing it leaves the nodes running without failover.
func (s *RedisSentinel) Sentinel() *Redis { return s.sentinel }

// Nodes returns the two data nodes, the first started as master and the second as its replica. Which is
// master now is what Master says. A node's Restart brings it back empty, as a replica of the master the
// sentinel names; restarting the master itself before a failover leaves an empty master, which its replica
// then copies (persistence is off).
func (s *RedisSentinel) Nodes() []*Redis { return []*Redis{s.nodes[0], s.nodes[1]} }

// Dir returns the setup's directory, which holds one directory per server (redis.log, sentinel.conf).
// Stop removes it.
func (s *RedisSentinel) Dir() string { return s.dir }

// Master returns the node that the sentinel names as the master now.
func (s *RedisSentinel) Master(ctx context.Context) (*Redis, error) {
	addr, err := s.sentinelMaster(ctx)
	if err != nil {
		return nil, err
	}
	for _, n := range s.nodes {
		if n.Addr() == addr {
			return n, nil
		}
	}
	return nil, fmt.Errorf("sentinel names %s as master, which is none of its nodes", addr)
}

// sentinelMaster asks the sentinel for the master's address.
func (s *RedisSentinel) sentinelMaster(ctx context.Context) (string, error) {
	m, err := redisCommand(ctx, s.SentinelAddr(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.masterSet)
	if err != nil {
		return "", fmt.Errorf("sentinel: GET-MASTER-ADDR-BY-NAME: %w", err)
	}
	hostPort, err := m.AsStrSlice()
	if err != nil || len(hostPort) != 2 {
		return "", fmt.Errorf("sentinel: GET-MASTER-ADDR-BY-NAME answered %v: %v", hostPort, err)
	}
	return net.JoinHostPort(hostPort[0], hostPort[1]), nil
}

// Failover has the sentinel promote the replica (SENTINEL FAILOVER, as an operator would) and returns once
// the sentinel names it as master, it answers as master, and the old master, if it runs, is in sync with it.
// The sentinel itself would demote the old master only some 10 s later; Failover does it at once, so that a
// write can no longer reach it and the next Failover finds a replica to promote. Clients following the
// sentinel switch on its +switch-master message (or on their periodic check of the topology). ctx bounds the
// whole failover (one minute if it has no deadline).
func (s *RedisSentinel) Failover(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	old, err := s.Master(ctx)
	if err != nil {
		return fmt.Errorf("redis sentinel failover: %w", err)
	}
	// Refused (NOGOODSLAVE, INPROG) while the sentinel has not yet seen a replica fit to promote, or is still
	// finishing a failover: try again until it accepts, or until a failover of its own has replaced old.
	if err := poll(ctx, func(ctx context.Context) error {
		if m, err := s.Master(ctx); err == nil && m != old {
			return nil
		}
		_, err := redisCommand(ctx, s.SentinelAddr(), "SENTINEL", "FAILOVER", s.masterSet)
		return err
	}, "redis sentinel failover: SENTINEL FAILOVER"); err != nil {
		return err
	}
	return s.waitNewMaster(ctx, old, true)
}

// KillMaster kills the current master (SIGKILL), as a crash would, and returns it once the sentinel has
// noticed (after DownAfter), promoted the replica, and the replica answers as master. The killed node keeps its
// directory: its Restart brings it back as a replica of the new master. ctx bounds the wait (one minute if it
// has no deadline).
func (s *RedisSentinel) KillMaster(ctx context.Context) (*Redis, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	old, err := s.Master(ctx)
	if err != nil {
		return nil, fmt.Errorf("redis sentinel: kill master: %w", err)
	}
	if err := old.Kill(); err != nil {
		return nil, err
	}
	return old, s.waitNewMaster(ctx, old, false)
}

// waitNewMaster waits until the sentinel names another node than old as master and that node says it is
// master; then, if demote, makes old a replica of it, unless it has stopped running.
func (s *RedisSentinel) waitNewMaster(ctx context.Context, old *Redis, demote bool) error {
	var now *Redis
	if err := poll(ctx, func(ctx context.Context) error {
		m, err := s.Master(ctx)
		if err != nil {
			return err
		}
		if m == old {
			return fmt.Errorf("sentinel still names %s as master", old.Addr())
		}
		info, err := redisInfo(ctx, m.Addr(), "replication")
		if err != nil {
			return err
		}
		if info["role"] != "master" {
			return fmt.Errorf("sentinel names %s as master, which says role:%s", m.Addr(), info["role"])
		}
		now = m
		return nil
	}, "redis sentinel failover: no new master"); err != nil {
		return err
	}
	s.mu.Lock()
	for i, n := range s.nodes {
		if n == now {
			s.master = i
		}
	}
	s.mu.Unlock()
	if !demote || !old.srv.running() {
		return nil
	}
	if _, err := redisCommand(ctx, old.Addr(), "REPLICAOF", "127.0.0.1", strconv.Itoa(now.Port())); err != nil {
		return fmt.Errorf("redis sentinel failover: make the old master %s a replica: %w", old.Addr(), err)
	}
	return waitReplicaSynced(ctx, old.Addr())
}

// Stop shuts the sentinel and both nodes down and removes the setup's directory. Later calls do nothing and
// return nil.
func (s *RedisSentinel) Stop() error {
	var errs []error
	// The sentinel first, so that it does not fail over while the nodes stop.
	if s.sentinel != nil {
		errs = append(errs, s.sentinel.Stop())
	}
	for _, n := range s.nodes {
		if n != nil {
			errs = append(errs, n.Stop())
		}
	}
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, fmt.Errorf("stop redis sentinel: %w", err))
	}
	return errors.Join(errs...)
}
