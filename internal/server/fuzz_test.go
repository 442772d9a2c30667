package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/devstack/devtest"
	"github.com/sessiond/sessiond/internal/tiers"
)

// FuzzValidateSession feeds token bytes of any kind to the ValidateSession
// handler of a real server (real Redis and Postgres), in process so that
// bytes no gRPC client could send (invalid UTF-8) reach it too. Whatever the
// bytes: no panic; valid=true only for the one token that is in Postgres;
// a malformed token is refused with INVALID_ARGUMENT and writes nothing to
// Redis. `make fuzz` runs it (FUZZTIME=5m by default); plain `go test` runs
// the seeds and the committed corpus in testdata/fuzz/FuzzValidateSession.
func FuzzValidateSession(f *testing.F) {
	h := start(f, devtest.Database(f), devtest.RedisURL(f))
	u := h.addUser(user{})
	known := h.addSession(u, session{})
	// The insert's notification leaves a tombstone in Redis; let it land
	// before counting keys.
	tomb := tiers.NewSessionTombKey(tiers.TokenKey(known.token))
	deadline := time.Now().Add(10 * time.Second)
	for n, _ := h.redis.Do(f.Context(), h.redis.B().Exists().Key(tomb).Build()).AsInt64(); n == 0; n, _ = h.redis.Do(f.Context(), h.redis.B().Exists().Key(tomb).Build()).AsInt64() {
		if time.Now().After(deadline) {
			f.Fatal("the insert notification never arrived")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, seed := range []string{known.token, known.token + " ", known.token[:63], "", "\x00", "tok\nen", "\xff\xfe"} {
		f.Add([]byte(seed))
	}
	svc := h.srv.Service()
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		token := string(b)
		h.filled() // earlier inputs' fills land after their answers
		before, err := keyCount(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := svc.ValidateSession(ctx, &sessiondv1.ValidateSessionRequest{Token: token})
		if tiers.CheckToken(token) != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("malformed token %q: %v, want InvalidArgument", b, err)
			}
			// Entries of earlier inputs may expire meanwhile (negative
			// ones live 30 s), so the count may fall, never rise.
			after, err := keyCount(ctx, h)
			if err != nil || after > before {
				t.Fatalf("malformed token %q: redis went from %d to %d keys (%v)", b, before, after, err)
			}
			key := tiers.Key(tiers.TokenHash(token))
			if n, err := h.redis.Do(ctx, h.redis.B().Exists().Key(key).Build()).AsInt64(); err != nil || n != 0 {
				t.Fatalf("malformed token %q: an entry exists under its key (%v)", b, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("well-formed token %q: %v", b, err)
		}
		if resp.GetValid() != (token == known.token) {
			t.Fatalf("token %q: valid=%v", b, resp.GetValid())
		}
	})
}

func keyCount(ctx context.Context, h *harness) (int64, error) {
	var total int64
	for _, n := range h.redis.Nodes() {
		size, err := n.Do(ctx, n.B().Dbsize().Build()).AsInt64()
		if err != nil {
			return 0, err
		}
		total += size
	}
	return total, nil
}
