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
func engines(t *testing.T, f func(t *testing.T, r, other *Redis, raw rueidis.Client)) {
	for _, e := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"single", func(t *testing.T) string { return devtest.OwnRedis(t).URL() }},
		{"cluster", func(t *testing.T) string { return devtest.RedisCluster(t).URL() }},
	} {
		t.Run(e.name, func(t *testing.T) {
			url := e.url(t)
			instance := func() *Redis {
				opt, err := ClientOption(url, RedisOptions{LocalCache: true, LocalCacheBytes: 1 << 20}, nil)
				if err != nil {
					t.Fatal(err)
				}
				c, err := rueidis.NewClient(opt)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(c.Close)
				return NewRedis(c, RedisOptions{TTL: time.Minute, LocalCache: true, NegativeTTL: time.Minute, Fence: testFenceOptions()}, discard)
			}
			rawOpt, _ := ClientOption(url, RedisOptions{}, nil)
			rawOpt.DisableCache = true
			raw, err := rueidis.NewClient(rawOpt)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(raw.Close)
			f(t, instance(), instance(), raw)
		})
	}
}

// The orders of a fill (a write in the entry's slot) and a user-level drop
// (a tombstone in the user's slot) that the README's protocol names: either
// way, data read before the drop is not believed after it, on the instance
// that dropped (at once) and on another that had it cached locally (as soon
// as Redis tells it, milliseconds). Run on a cluster too, where the two are
// in different slots.
func TestProtocolInterleavings(t *testing.T) {
	engines(t, func(t *testing.T, r *Redis, other *Redis, raw rueidis.Client) {
		ctx := t.Context()
		f := r.Fence()
		exists := func(key string) bool {
			n, err := raw.Do(ctx, raw.B().Exists().Key(key).Build()).AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			return n == 1
		}
		believedBy := func(rr *Redis, key string) bool {
			l, err := rr.Get(ctx, key, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			return l.Record != nil
		}
		for i, tt := range []struct {
			name        string
			fillFirst   bool
			cachedFirst bool // the other instance read the entry (and the user's tombstone's absence) before the drop
		}{
			{"fill, then drop", true, false},
			{"fill, cached elsewhere, then drop", true, true},
			{"drop, then fill of data read before it", false, false},
		} {
			t.Run(tt.name, func(t *testing.T) {
				user := fmt.Sprintf("user-%d", i)
				key := k(fmt.Sprintf("token-%d", i))
				read := Stamp{ReadStart: time.Now().Add(-2 * time.Second)} // before the drop, past the margin
				rec := &Record{ID: "s", UserID: user, ExpiresAt: time.Now().Add(time.Hour), Email: "e"}
				fill := func() {
					if res, errs := r.SetMany(ctx, []Entry{{key, rec}}, read); res[0] != Written {
						t.Fatalf("fill: %v %v", res[0], errs[0])
					}
				}
				if tt.fillFirst {
					fill()
					if tt.cachedFirst {
						devtest.Eventually(t, 5*time.Second, func() error {
							if l, err := other.Get(ctx, key, time.Second); err != nil || !l.Local {
								return fmt.Errorf("not cached locally elsewhere yet: %+v %v", l, err)
							}
							return nil
						})
					}
				}
				if _, err := f.Apply(ctx, Batch{Users: []string{user}}); err != nil {
					t.Fatal(err)
				}
				if !tt.fillFirst {
					fill()
				}
				if !exists(key) {
					t.Fatal("the entry is not in redis: the test proves nothing")
				}
				if believedBy(r, key) {
					t.Error("the dropping instance believes data read before the drop")
				}
				devtest.Eventually(t, 5*time.Second, func() error {
					if believedBy(other, key) {
						return fmt.Errorf("another instance still believes data read before the drop")
					}
					return nil
				})
				// Data read after the drop is believed again (once Redis has
				// told this instance its local copy is old).
				if res, errs := r.SetMany(ctx, []Entry{{key, rec}}, Stamp{ReadStart: time.Now().Add(2 * time.Second)}); res[0] != Written {
					t.Fatalf("a fill read after the drop: %v %v", res[0], errs[0])
				}
				devtest.Eventually(t, 5*time.Second, func() error {
					if !believedBy(r, key) {
						return fmt.Errorf("data read after the drop is not believed")
					}
					return nil
				})
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

		t.Run("a batch of entries over every slot is one round trip, and a user drop reaches them all", func(t *testing.T) {
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
			if n, err := f.Apply(ctx, Batch{Users: users}); err != nil || n != 7 {
				t.Errorf("user drop: %d %v, want 7 users", n, err)
			}
			for _, e := range entries {
				if believedBy(r, e.Key) {
					t.Fatalf("%s still believed", e.Key)
				}
			}
		})
	})
}
