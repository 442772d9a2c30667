package tiers

import (
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// engines runs f against a single Redis and against a 3-master Redis
// Cluster, with a client built as the server builds its own.
func engines(t *testing.T, f func(t *testing.T, r *Redis, raw rueidis.Client)) {
	for _, e := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"single", func(t *testing.T) string { return devtest.OwnRedis(t).URL() }},
		{"cluster", func(t *testing.T) string { return devtest.RedisCluster(t).URL() }},
	} {
		t.Run(e.name, func(t *testing.T) {
			url := e.url(t)
			opt, err := ClientOption(url, RedisOptions{LocalCache: true, LocalCacheBytes: 1 << 20}, nil)
			if err != nil {
				t.Fatal(err)
			}
			c, err := rueidis.NewClient(opt)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			rawOpt, _ := ClientOption(url, RedisOptions{}, nil)
			rawOpt.DisableCache = true
			raw, err := rueidis.NewClient(rawOpt)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(raw.Close)
			f(t, NewRedis(c, RedisOptions{TTL: time.Minute, LocalCache: true, NegativeTTL: time.Minute, Fence: testFenceOptions()}, discard), raw)
		})
	}
}

// Each interleaving of a fill (step 1: the user's index; step 2: the entry)
// with a user-level drop (step 1: the user's tombstone and index; step 2:
// each entry's tombstone and deletion) that the README's protocol names:
// whatever the order, data read before the drop does not survive it. Run on
// a cluster too, where every step is in its own slot.
func TestProtocolInterleavings(t *testing.T) {
	engines(t, func(t *testing.T, r *Redis, raw rueidis.Client) {
		ctx := t.Context()
		f := r.Fence()
		exists := func(key string) bool {
			n, err := raw.Do(ctx, raw.B().Exists().Key(key).Build()).AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			return n == 1
		}
		type step = func()
		for i, tt := range []struct {
			name  string
			order func(fill1, fill2, drop1, drop2 step)
		}{
			{"drop, then fill: refused at the index", func(f1, f2, d1, d2 step) { d1(); d2(); f1(); f2() }},
			{"fill, then drop: deleted", func(f1, f2, d1, d2 step) { f1(); f2(); d1(); d2() }},
			{"index, drop, entry: refused by the entry's tombstone", func(f1, f2, d1, d2 step) { f1(); d1(); d2(); f2() }},
			{"index, drop's index step, entry, drop's entry step: deleted", func(f1, f2, d1, d2 step) { f1(); d1(); f2(); d2() }},
			{"drop's index step, index, entry, drop's entry step: refused at the index", func(f1, f2, d1, d2 step) { d1(); f1(); f2(); d2() }},
		} {
			t.Run(tt.name, func(t *testing.T) {
				user := fmt.Sprintf("user-%d", i)
				key := k(fmt.Sprintf("token-%d", i))
				read := Stamp{ReadStart: time.Now().Add(-2 * time.Second)} // before the drop, past the margin
				rec := &Record{ID: "s", UserID: user, ExpiresAt: time.Now().Add(time.Hour), Email: "e"}
				c, _ := r.Client()
				w := r.newWrites(c, read)
				w.add(0, key, rec, time.Now().Add(time.Minute))
				res, errs := make([]WriteResult, 1), make([]error, 1)
				d := f.newDrop(c)
				var members []string
				tt.order(
					func() { w.step1(ctx, res, errs) },
					func() { w.step2(ctx, res, errs) },
					func() {
						var err error
						if members, err = d.users(ctx, []string{user}); err != nil {
							t.Fatal(err)
						}
					},
					func() {
						if _, err := d.keys(ctx, members, nil); err != nil {
							t.Fatal(err)
						}
					})
				if errs[0] != nil {
					t.Fatal(errs[0])
				}
				if exists(key) {
					t.Errorf("the entry survived the drop (fill result %v)", res[0])
				}
				// A fill of data read after the drop goes through.
				if res, errs := r.SetMany(ctx, []Entry{{key, rec}}, Stamp{ReadStart: time.Now().Add(2 * time.Second)}); res[0] != Written || !exists(key) {
					t.Errorf("a fill read after the drop: %v %v", res[0], errs[0])
				}
			})
		}

		t.Run("a token drop and a fill, either order", func(t *testing.T) {
			key := k("token-drop")
			rec := &Record{ID: "s", UserID: "user-td", ExpiresAt: time.Now().Add(time.Hour), Email: "e"}
			before := Stamp{ReadStart: time.Now().Add(-2 * time.Second)}
			if res, _ := r.SetMany(ctx, []Entry{{key, rec}}, before); res[0] != Written {
				t.Fatalf("fill: %v", res[0])
			}
			if _, err := f.Apply(ctx, Batch{Keys: []string{key}}); err != nil || exists(key) {
				t.Fatalf("drop after the fill: %v, exists %v", err, exists(key))
			}
			if res, _ := r.SetMany(ctx, []Entry{{key, rec}}, before); res[0] != Skipped || exists(key) {
				t.Errorf("fill after the drop, read before it: %v, exists %v", res[0], exists(key))
			}
		})

		t.Run("a new session and a negative fill, either order", func(t *testing.T) {
			key := k("new-token")
			before := Stamp{ReadStart: time.Now().Add(-2 * time.Second)}
			if res, _ := r.SetNegative(ctx, key, before); res != Written {
				t.Fatalf("negative fill: %v", res)
			}
			if n, err := f.Apply(ctx, Batch{NewKeys: []string{key}}); err != nil || n != 1 || exists(key) {
				t.Fatalf("new-key drop after the negative: %d %v, exists %v", n, err, exists(key))
			}
			if res, _ := r.SetNegative(ctx, key, before); res != Skipped || exists(key) {
				t.Errorf("negative read before the session was created: %v, exists %v", res, exists(key))
			}
		})

		t.Run("a batch of entries over every slot is two round trips, and a user drop finds them all", func(t *testing.T) {
			var entries []Entry
			for i := range 300 {
				entries = append(entries, Entry{k(fmt.Sprintf("bulk-%d", i)),
					&Record{ID: "s", UserID: fmt.Sprintf("bulk-user-%d", i%7), ExpiresAt: time.Now().Add(time.Hour), Email: "e"}})
			}
			res, errs := r.SetMany(ctx, entries, Stamp{ReadStart: time.Now()})
			for i := range res {
				if res[i] != Written {
					t.Fatalf("entry %d: %v %v", i, res[i], errs[i])
				}
			}
			var users []string
			for u := range 7 {
				users = append(users, fmt.Sprintf("bulk-user-%d", u))
			}
			n, err := f.Apply(ctx, Batch{Users: users})
			if err != nil || n != 300 {
				t.Errorf("user drop deleted %d (%v), want 300", n, err)
			}
		})
	})
}
