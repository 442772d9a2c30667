package client_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/client"
	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/server/servertest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func dial(t *testing.T, target string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.Dial(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestValidate(t *testing.T) {
	env := servertest.New(t)
	in := env.Start()
	s := env.AddSession()
	c := dial(t, in.Addr, client.WithInsecure())

	resp, err := c.Validate(t.Context(), s.Token)
	if err != nil || !resp.GetValid() || resp.GetSession().GetUserId() != s.UserID {
		t.Fatalf("valid session: %v, %v", resp, err)
	}
	resp, err = c.Validate(t.Context(), "no-such-token")
	if err != nil || resp.GetValid() || resp.GetReason() != sessiondv1.Reason_REASON_NOT_FOUND {
		t.Fatalf("unknown token: %v, %v; want valid=false NOT_FOUND", resp, err)
	}
	if _, err := c.Validate(t.Context(), ""); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty token: %v, want InvalidArgument", err)
	}
	env.BanUser(s)
	devtest.Eventually(t, 2*time.Second, func() error {
		resp, err := c.Validate(t.Context(), s.Token)
		if err != nil {
			return err
		}
		if resp.GetValid() {
			return status.Error(codes.FailedPrecondition, "still valid after the ban")
		}
		return nil
	})
}

// answered counts the validations an instance answered.
func answered(in *servertest.Instance) int64 {
	c := in.Server.ReadThrough().Counters()
	return c.LocalHits.Load() + c.RedisHits.Load() + c.NegativeHits.Load() + c.Misses.Load()
}

// Two instances behind one target; one is stopped (as a rolling restart
// does) in the middle of the load: every call is still answered, and
// answered right, by round robin and the retry policy.
func TestTwoInstancesOneStoppedMidLoad(t *testing.T) {
	env := servertest.New(t)
	a, b := env.Start(), env.Start()
	sessions := make([]servertest.Session, 20)
	for i := range sessions {
		sessions[i] = env.AddSession()
	}
	r := manual.NewBuilderWithScheme("sessiond-test")
	r.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: a.Addr}, {Addr: b.Addr}}})
	c := dial(t, "sessiond-test:///sessiond", client.WithInsecure(), client.WithDialOptions(grpc.WithResolvers(r)))

	const callers, perCaller = 8, 400
	var (
		done    atomic.Int64
		stopped = make(chan struct{})
		wg      sync.WaitGroup
		beforeA int64
		beforeB int64
	)
	// Both instances answer before the stop, then b stops once a third of
	// the calls are done.
	go func() {
		devtest.Eventually(t, 30*time.Second, func() error {
			if done.Load() < callers*perCaller/3 {
				return status.Error(codes.Unavailable, "load not yet a third through")
			}
			return nil
		})
		beforeA, beforeB = answered(a), answered(b)
		b.Stop()
		close(stopped)
	}()
	errs := make(chan error, callers*perCaller)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perCaller {
				s := sessions[i%len(sessions)]
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := c.Validate(ctx, s.Token)
				cancel()
				switch {
				case err != nil:
					errs <- err
				case !resp.GetValid() || resp.GetSession().GetId() != s.ID:
					errs <- status.Errorf(codes.Internal, "wrong answer %v", resp)
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	<-stopped
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 5 {
			t.Errorf("call failed: %v", err)
		}
	}
	if n > 0 {
		t.Fatalf("%d of %d calls failed", n, callers*perCaller)
	}
	if beforeA == 0 || beforeB == 0 {
		t.Errorf("before the stop, a answered %d and b %d: want both (round robin)", beforeA, beforeB)
	}
	if after := answered(a) - beforeA; after < callers*perCaller/2 {
		t.Errorf("after the stop a answered only %d calls", after)
	}
	t.Logf("%d calls: a answered %d, b %d (stopped after %d calls in all)", callers*perCaller, answered(a), answered(b), beforeA+beforeB)
}

func TestTLSClientCertificateAndBearer(t *testing.T) {
	env := servertest.New(t)
	pki := devtest.NewPKI(t)
	in := env.Start(func(c *config.Config) {
		c.TLSCert, c.TLSKey, c.TLSClientCA = pki.ServerCert, pki.ServerKey, pki.CAFile
		c.AdminToken = "admin-secret"
	})
	s := env.AddSession()

	c := dial(t, in.Addr, client.WithTLS(pki.CAPool), client.WithClientCertificate(pki.Client), client.WithBearerToken("admin-secret"))
	if resp, err := c.Validate(t.Context(), s.Token); err != nil || !resp.GetValid() {
		t.Fatalf("over mutual TLS: %v, %v", resp, err)
	}
	// The bearer token goes with every call: the admin RPCs accept it.
	if _, err := sessiondv1.NewSessionServiceClient(c.Conn()).GetStats(t.Context(), &sessiondv1.GetStatsRequest{}); err != nil {
		t.Errorf("GetStats with the bearer token: %v", err)
	}

	noCert := dial(t, in.Addr, client.WithTLS(pki.CAPool), client.WithTimeout(2*time.Second))
	if _, err := noCert.Validate(t.Context(), s.Token); status.Code(err) != codes.Unavailable {
		t.Errorf("without a client certificate: %v, want Unavailable", err)
	}
	full := dial(t, in.Addr, client.WithTLSConfig(&tls.Config{RootCAs: pki.CAPool, Certificates: []tls.Certificate{pki.Client}, ServerName: "localhost"}))
	if _, err := full.Validate(t.Context(), s.Token); err != nil {
		t.Errorf("WithTLSConfig: %v", err)
	}
}

func TestDialRefusesUnsafeCombinations(t *testing.T) {
	for name, opts := range map[string][]client.Option{
		"plaintext with a bearer token": {client.WithInsecure(), client.WithBearerToken("x")},
		"plaintext and TLS":             {client.WithInsecure(), client.WithTLS(nil)},
	} {
		if _, err := client.Dial("localhost:50051", opts...); err == nil {
			t.Errorf("%s: Dial succeeded", name)
		}
	}
}

// Without a transport option the client speaks TLS: against a plaintext
// sessiond the call fails rather than sending a token in clear.
func TestDefaultIsTLS(t *testing.T) {
	env := servertest.New(t)
	in := env.Start()
	c := dial(t, in.Addr, client.WithTimeout(2*time.Second))
	if _, err := c.Validate(t.Context(), "a-token"); status.Code(err) != codes.Unavailable {
		t.Fatalf("TLS client against a plaintext server: %v, want Unavailable", err)
	}
}

// A call whose context has no deadline gets the client's: a server that
// accepts the connection and never answers does not hang the caller.
func TestDefaultDeadline(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			defer conn.Close() // held open, silent
		}
	}()
	c := dial(t, lis.Addr().String(), client.WithInsecure(), client.WithTimeout(300*time.Millisecond))
	start := time.Now()
	_, err = c.Validate(context.Background(), "a-token")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v with a 300ms default deadline", took)
	}
}
