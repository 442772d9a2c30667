package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/server"
)

// instance is one sessiond of a fleet, run as in production.
type instance struct {
	srv  *server.Server
	addr string
	stop context.CancelFunc
	done chan error
	once sync.Once
}

func startInstance(t *testing.T, cfg config.Config) *instance {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		stop()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		stop()
		t.Fatal(err)
	}
	in := &instance{srv: srv, addr: lis.Addr().String(), stop: stop, done: make(chan error, 1)}
	go func() { in.done <- srv.Run(ctx, lis) }()
	t.Cleanup(func() { in.shutdown(t) })
	select {
	case <-srv.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("instance not SERVING within 20s")
	}
	return in
}

// shutdown stops the instance as SIGTERM would and waits for it.
func (in *instance) shutdown(t *testing.T) {
	in.once.Do(func() {
		in.stop()
		select {
		case err := <-in.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("instance did not stop within 30s")
		}
	})
}

func addresses(ins ...*instance) resolver.State {
	var s resolver.State
	for _, in := range ins {
		s.Addresses = append(s.Addresses, resolver.Address{Addr: in.addr})
	}
	return s
}

// A rolling restart of two instances behind a client-side round_robin
// target, under steady load, fails no call: each old instance turns
// NOT_SERVING (which health-checking clients act on at once), keeps serving
// through its shutdown delay, then drains; its replacement is ready first,
// as with a Deployment's maxUnavailable 0.
func TestRollingRestart(t *testing.T) {
	h := prepare(t, devtest.Database(t), devtest.RedisURL(t), func(c *config.Config) {
		c.ShutdownDelay = time.Second
		c.ShutdownTimeout = 10 * time.Second
	})
	u := h.addUser(user{})
	var tokens []string
	for range 20 {
		tokens = append(tokens, h.addSession(u, session{}).token)
	}
	fleet := []*instance{startInstance(t, h.cfg), startInstance(t, h.cfg)}

	r := manual.NewBuilderWithScheme("rolling")
	r.InitialState(addresses(fleet...))
	conn, err := grpc.NewClient(r.Scheme()+":///sessiond", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}],
			"healthCheckConfig": {"serviceName": "`+server.ServiceName+`"}}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := sessiondv1.NewSessionServiceClient(conn)

	// Steady load: four callers, each call with its own deadline, until the
	// restarts are over (bounded by the test's own timeouts).
	var calls, failures atomic.Int64
	var firstErr atomic.Value
	stopLoad := make(chan struct{})
	var load sync.WaitGroup
	for c := range 4 {
		load.Go(func() {
			for i := c; ; i++ {
				select {
				case <-stopLoad:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := client.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: tokens[i%len(tokens)]})
				cancel()
				calls.Add(1)
				if err == nil && !resp.GetValid() {
					err = errInvalid
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	waitCalls := func(n int64) {
		t.Helper()
		target := calls.Load() + n
		eventually(t, 30*time.Second, func() error {
			if calls.Load() < target {
				return errNotYet
			}
			return nil
		})
	}
	waitCalls(200)

	for i := range fleet {
		// The replacement is up and ready before the old one goes.
		repl := startInstance(t, h.cfg)
		r.UpdateState(addresses(append(append([]*instance{}, fleet...), repl)...))
		old := fleet[i]
		fleet[i] = repl
		waitCalls(100)
		old.shutdown(t) // SIGTERM: NOT_SERVING, serve on for the delay, drain
		r.UpdateState(addresses(fleet...))
		waitCalls(100)
	}
	waitCalls(200)
	close(stopLoad)
	load.Wait()

	t.Logf("%d calls, %d failed, through two restarts", calls.Load(), failures.Load())
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d calls failed during the rolling restart; first: %v", n, calls.Load(), firstErr.Load())
	}
	for i, in := range fleet {
		c := in.srv.ReadThrough().Counters()
		if served := c.LocalHits.Load() + c.RedisHits.Load() + c.Misses.Load(); served == 0 {
			t.Errorf("replacement %d answered no call: the load did not move to it", i)
		}
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const (
	errInvalid testError = "a valid session was answered invalid"
	errNotYet  testError = "not enough calls yet"
)
