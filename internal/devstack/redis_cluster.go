package devstack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

const (
	// clusterMasters is the number of masters of a RedisCluster: the fewest `redis-cli --cluster create` accepts.
	clusterMasters = 3
	// clusterSlots is the number of hash slots of every Redis Cluster.
	clusterSlots = 16384
	// clusterNodeTimeout is how long a node may not answer before the others mark it failing (Redis's default is
	// 15 s). With no replicas nobody takes its slots over: the cluster refuses commands until it is back.
	clusterNodeTimeout = 5000 // milliseconds
)

// RedisClusterOptions configures StartRedisCluster. The zero value is ready to use.
type RedisClusterOptions struct {
	// Dir is the directory in which the cluster's temporary directory is created; "" means os.TempDir().
	Dir string
}

// RedisCluster is a throwaway Redis Cluster of three masters and no replicas, started by StartRedisCluster.
// Its methods are safe for concurrent use.
type RedisCluster struct {
	dir   string
	nodes []*Redis
}

// StartRedisCluster starts three redis-server nodes with cluster mode on, each as StartRedis starts a server
// (free port, persistence off, its own directory) and with its cluster bus on another free port, joins them
// with `redis-cli --cluster create` (the slots split in three, no replicas), and returns once every node says
// cluster_state:ok with all 16384 slots assigned. A node that does not answer for 5 s is marked failing, and
// the cluster then refuses commands until it is back (no replica can take its slots over).
//
// ctx bounds the start (one minute per step if it has no deadline); the nodes live until Stop, or the exit of
// this process. An error wraps ErrNotInstalled when redis-server or redis-cli is missing, and includes the
// output of the step that failed.
func StartRedisCluster(ctx context.Context, opts RedisClusterOptions) (_ *RedisCluster, err error) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("%w: redis-cli is not in PATH; "+
			"install it with `apt-get install redis-tools` (or run `make deps`)", ErrNotInstalled)
	}
	dir, err := newDir(opts.Dir, "devstack-redis-cluster-")
	if err != nil {
		return nil, fmt.Errorf("start redis cluster: %w", err)
	}
	c := &RedisCluster{dir: dir}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	for i := range clusterMasters {
		// The bus port is a second free port, not Redis's default port+10000, which may be taken or past 65535.
		// It is picked again whenever the node's port is (a retry after a taken port) and kept across Restart,
		// since the other nodes reach the node there.
		var port, busPort int
		node, err := runRedis(ctx, redisSpec{
			parent:  dir,
			pattern: "node" + strconv.Itoa(i+1) + "-",
			args: func(dir string, p int) []string {
				if p != port {
					port, busPort = p, mustFreePort()
				}
				return append(redisArgs(dir, p),
					"--cluster-enabled", "yes",
					"--cluster-port", strconv.Itoa(busPort),
					"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
					"--cluster-node-timeout", strconv.Itoa(clusterNodeTimeout),
				)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("start redis cluster: %w", err)
		}
		c.nodes = append(c.nodes, node)
	}
	if err := c.create(ctx, cli); err != nil {
		return nil, err
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// mustFreePort is freePort for the cluster bus. If no port can be had (no free port on loopback), 0 gives Redis's
// default, port+10000, which will most likely do.
func mustFreePort() int {
	p, _ := freePort()
	return p
}

// create joins the nodes into one cluster with redis-cli, which assigns the slots, sets distinct config epochs,
// introduces the nodes to each other and waits until they agree on the slots.
func (c *RedisCluster) create(ctx context.Context, cli string) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.Env = append(os.Environ(), "TERM=dumb") // no colour codes in the output we may quote in an error
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start redis cluster: redis-cli --cluster create: %w:\n%s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// WaitHealthy returns once every node says cluster_state:ok, knows all three nodes and sees all 16384 slots
// assigned, or fails when ctx ends (one minute if it has no deadline), with what the last node answered.
func (c *RedisCluster) WaitHealthy(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return poll(ctx, func(ctx context.Context) error {
		for _, n := range c.nodes {
			if err := clusterNodeHealthy(ctx, n.Addr()); err != nil {
				return err
			}
		}
		return nil
	}, "redis cluster not healthy")
}

// clusterNodeHealthy checks CLUSTER INFO of the node at addr.
func clusterNodeHealthy(ctx context.Context, addr string) error {
	m, err := redisCommand(ctx, addr, "CLUSTER", "INFO")
	if err != nil {
		return fmt.Errorf("%s: CLUSTER INFO: %w", addr, err)
	}
	text, err := m.ToString()
	if err != nil {
		return fmt.Errorf("%s: CLUSTER INFO: %w", addr, err)
	}
	info := map[string]string{}
	// Over RESP3 the reply is a verbatim string, which rueidis returns with its format prefix.
	for line := range strings.Lines(strings.TrimPrefix(text, "txt:")) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			info[k] = v
		}
	}
	want := map[string]string{
		"cluster_state":          "ok",
		"cluster_slots_assigned": strconv.Itoa(clusterSlots),
		"cluster_slots_ok":       strconv.Itoa(clusterSlots),
		"cluster_known_nodes":    strconv.Itoa(clusterMasters),
		"cluster_size":           strconv.Itoa(clusterMasters),
	}
	for k, v := range want {
		if info[k] != v {
			return fmt.Errorf("%s: CLUSTER INFO says %s:%s, want %s", addr, k, info[k], v)
		}
	}
	return nil
}

// URL returns the cluster's address in the form rueidis.ParseURL reads, all three nodes named:
// redis://127.0.0.1:P1?addr=127.0.0.1:P2&addr=127.0.0.1:P3. It stays the same across node restarts.
func (c *RedisCluster) URL() string {
	addrs := c.Addrs()
	return "redis://" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr=")
}

// Addrs returns the nodes' host:port, in the order of Nodes.
func (c *RedisCluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Nodes returns the three masters, which own slots 0-5460, 5461-10922 and 10923-16383 in this order.
// Kill one to take its slots away (the cluster marks it failing after 5 s and then refuses every command);
// bring it back with RestartNode. A node's Restart and Stop work too, but leave waiting for the cluster to
// the caller, and a stopped node cannot come back.
func (c *RedisCluster) Nodes() []*Redis { return slices.Clone(c.nodes) }

// Dir returns the cluster's directory, which holds one directory per node (redis.log, nodes.conf).
// Stop removes it.
func (c *RedisCluster) Dir() string { return c.dir }

// RestartNode restarts node i (0, 1 or 2, as in Nodes) on its port, empty but with its slots (its cluster
// configuration survives in its directory), if it runs shutting it down first, and returns once the whole
// cluster is healthy again (see WaitHealthy). A master that comes back waits about 2 s before it serves.
func (c *RedisCluster) RestartNode(ctx context.Context, i int) error {
	if i < 0 || i >= len(c.nodes) {
		return fmt.Errorf("restart redis cluster node %d: there are nodes 0 to %d", i, len(c.nodes)-1)
	}
	if err := c.nodes[i].Restart(ctx); err != nil {
		return err
	}
	return c.WaitHealthy(ctx)
}

// Stop shuts every node down and removes the cluster's directory. Later calls do nothing and return nil.
func (c *RedisCluster) Stop() error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.Stop())
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("stop redis cluster: %w", err))
	}
	return errors.Join(errs...)
}
