package tiers

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

// connectFenced connects to url as the server does (the fence hears every
// dial and flush) and runs the fence until the test ends.
func connectFenced(t *testing.T, url string) *Redis {
	t.Helper()
	o := RedisOptions{TTL: time.Minute, LocalCache: true, LocalCacheBytes: 1 << 20, Fence: testFenceOptions()}
	o.Fence.VerifyInterval = time.Hour // only what the test causes
	r, err := ConnectRedis(t.Context(), url, o, discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	runFence(t, r)
	return r
}

func waitTrusted(t *testing.T, f *Fence, want bool) {
	t.Helper()
	devtest.Eventually(t, 10*time.Second, func() error {
		if f.Trusted() != want {
			return errors.New("fence trust has not changed yet")
		}
		return nil
	})
}

func rawClient(t *testing.T, url string) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{strings.TrimPrefix(url, "redis://")}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// neverBelieved reads key through r until the fence trusts Redis again, and
// fails if any read believed an entry.
func neverBelieved(t *testing.T, r *Redis, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := r.Get(t.Context(), key, time.Second)
		if err == nil && l.Found() {
			t.Fatalf("a resurrected entry was believed: %+v", l.Record)
		}
		if err == nil && !l.Distrusted && r.Fence().Trusted() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the fence did not trust redis again")
		}
		time.Sleep(time.Millisecond)
	}
}

// Whatever Redis loses (a restart from a snapshot taken before a drop, an
// empty restart, a flush), no entry that a drop deleted is believed again,
// and the generation never goes backwards; a mere reconnection to the same
// dataset costs no bump.
func TestFenceDetectsRedisDataLoss(t *testing.T) {
	srv := devtest.OwnRedis(t)
	r := connectFenced(t, srv.URL())
	f := r.Fence()
	raw := rawClient(t, srv.URL())
	ctx := t.Context()
	waitTrusted(t, f, true)

	gen0, resyncs0 := f.Floor(), f.Resyncs()
	cache := func(key, user string) {
		t.Helper()
		var g int64
		// The first call on a connection Redis dropped fails (reads are not
		// retried: a miss goes to Postgres at once); try again.
		devtest.Eventually(t, 5*time.Second, func() error {
			var err error
			g, err = r.Gen(ctx)
			return err
		})
		rec := &Record{ID: "s-" + key, UserID: user, ExpiresAt: time.Now().Add(time.Hour), Email: "e"}
		if _, err := r.Set(ctx, key, rec, Stamp{ReadStart: time.Now(), Gen: g}); err != nil {
			t.Fatal(err)
		}
		devtest.Eventually(t, 5*time.Second, func() error {
			if l, err := r.Get(ctx, key, time.Second); err != nil || l.Record == nil {
				return errors.New("not cached yet")
			}
			return nil
		})
	}

	t.Run("a reconnection to the same dataset is verified without a bump", func(t *testing.T) {
		cache(k("r1"), "u-r1")
		if err := raw.Do(ctx, raw.B().ClientKill().TypeNormal().SkipmeYes().Build()).Error(); err != nil {
			t.Fatal(err)
		}
		devtest.Eventually(t, 10*time.Second, func() error {
			if l, err := r.Get(ctx, k("r1"), time.Second); err != nil || l.Record == nil {
				return errors.New("entry not believed again yet")
			}
			return nil
		})
		if f.Resyncs() != resyncs0 || f.Floor() != gen0 {
			t.Errorf("a reconnection bumped: resyncs %d → %d, generation %d → %d", resyncs0, f.Resyncs(), gen0, f.Floor())
		}
	})

	t.Run("restart from a snapshot taken before a drop", func(t *testing.T) {
		cache(k("s1"), "u-s1")
		if err := raw.Do(ctx, raw.B().Save().Build()).Error(); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Apply(ctx, Batch{Users: []string{"u-s1"}}); err != nil {
			t.Fatal(err)
		}
		before := f.Floor()
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		devtest.Eventually(t, 10*time.Second, func() error {
			return raw.Do(ctx, raw.B().Ping().Build()).Error()
		})
		if n, _ := raw.Do(ctx, raw.B().Exists().Key(k("s1")).Build()).AsInt64(); n != 1 {
			t.Fatal("the snapshot did not bring the dropped entry back: the test proves nothing")
		}
		neverBelieved(t, r, k("s1"))
		if f.Floor() <= before {
			t.Errorf("generation %d after the restore, want past %d", f.Floor(), before)
		}
	})

	t.Run("empty restart: the generation does not go backwards", func(t *testing.T) {
		cache(k("e1"), "u-e1")
		before := f.Floor()
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(srv.Dir(), "dump.rdb")); err != nil {
			t.Fatal(err)
		}
		if err := srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		neverBelieved(t, r, k("e1"))
		g, err := raw.Do(ctx, raw.B().Get().Key(GenKey).Build()).AsInt64()
		if err != nil || g <= before {
			t.Errorf("generation in redis after an empty restart: %d (%v), want past %d", g, err, before)
		}
	})

	t.Run("FLUSHALL", func(t *testing.T) {
		// A flush revokes nothing, so a local copy believed in the moment
		// before Redis's flush message arrives is still true; what a flush
		// loses is bookkeeping (indexes, tombstones), so it must bump.
		cache(k("f1"), "u-f1")
		before := f.Resyncs()
		if err := raw.Do(ctx, raw.B().Flushall().Build()).Error(); err != nil {
			t.Fatal(err)
		}
		devtest.Eventually(t, 10*time.Second, func() error {
			if f.Resyncs() <= before {
				return errors.New("the flush was not treated as data loss")
			}
			return nil
		})
		neverBelieved(t, r, k("f1"))
	})

	t.Run("a redis that may evict bookkeeping is not believed", func(t *testing.T) {
		cache(k("m1"), "u-m1")
		setPolicy := func(maxmemory, policy string) {
			for _, kv := range [][2]string{{"maxmemory", maxmemory}, {"maxmemory-policy", policy}} {
				if err := raw.Do(ctx, raw.B().ConfigSet().ParameterValue().ParameterValue(kv[0], kv[1]).Build()).Error(); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Verify(ctx); err != nil {
				t.Fatal(err)
			}
		}
		setPolicy("1gb", "allkeys-lru")
		if !f.Evictable() || f.Trusted() {
			t.Errorf("evictable=%v trusted=%v with allkeys-lru, want true/false", f.Evictable(), f.Trusted())
		}
		if l, err := r.Get(ctx, k("m1"), time.Second); err != nil || l.Found() || !l.Distrusted {
			t.Errorf("read under an evicting policy: %+v %v", l, err)
		}
		setPolicy("1gb", "noeviction")
		if f.Evictable() || !f.Trusted() {
			t.Errorf("evictable=%v trusted=%v with noeviction, want false/true", f.Evictable(), f.Trusted())
		}
		setPolicy("0", "allkeys-lru") // no limit: nothing is evicted
		if f.Evictable() {
			t.Error("maxmemory 0 reported evictable")
		}
	})
}

// A loss recorded while a bump is under way is not cleared by that bump:
// the next one clears it.
func TestFenceLossDuringBumpIsNotCleared(t *testing.T) {
	url := devtest.RedisURL(t)
	c, err := rueidis.NewClient(rueidis.MustParseURL(url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var f *Fence
	lossDuringBump := true
	f = newFence(func() (rueidis.Client, error) {
		if lossDuringBump {
			lossDuringBump = false
			f.NoteLoss() // after the bump read how far it may clear, before it lands
		}
		return c, nil
	}, testFenceOptions(), discard)
	f.NoteLoss()
	if f.Trusted() {
		t.Fatal("trusted with a loss pending")
	}
	if err := f.Resync(t.Context(), "test"); err != nil {
		t.Fatal(err)
	}
	if f.Trusted() {
		t.Fatal("a bump cleared a loss that came during it")
	}
	if err := f.Resync(t.Context(), "test"); err != nil {
		t.Fatal(err)
	}
	if !f.Trusted() {
		t.Fatal("the next bump did not clear it")
	}
}

// What the listener reports decides trust.
func TestFenceListenerStates(t *testing.T) {
	f := newFence(func() (rueidis.Client, error) { return nil, ErrRedisNotConnected }, FenceOptions{Listening: true}, discard)
	if f.Trusted() {
		t.Error("trusted before the listener covered")
	}
	for _, tt := range []struct {
		s    ListenerState
		want bool
	}{
		{ListenerCovering, true},
		{ListenerLost, false},
		{ListenerPostgresDown, true}, // nothing can be revoked
		{ListenerOff, true},
	} {
		seq := f.Seq()
		f.SetListener(tt.s)
		if got := f.Trusted(); got != tt.want {
			t.Errorf("%v: trusted %v, want %v", tt.s, got, tt.want)
		}
		if f.Seq() == seq {
			t.Errorf("%v: a listener change did not move Seq", tt.s)
		}
	}
	if newFence(nil, FenceOptions{}, discard).Listener() != ListenerOff {
		t.Error("a fence without a listener is not ListenerOff")
	}
}

// The shared coverage only moves forward, and only an instance that covers
// and trusts Redis may move it.
func TestFenceCoverage(t *testing.T) {
	url := devtest.RedisURL(t)
	r := connectFenced(t, url)
	f := r.Fence()
	ctx := t.Context()
	waitTrusted(t, f, true) // no listener: ListenerOff
	if ok, err := f.AdvanceCoverage(ctx, 100); ok || err != nil {
		t.Errorf("advanced while not covering: %v %v", ok, err)
	}
	f.SetListener(ListenerCovering)
	for _, at := range []int64{200, 150} {
		// A connection rueidis opens meanwhile is not trusted until it is
		// verified (a moment): only then may coverage move.
		devtest.Eventually(t, 5*time.Second, func() error {
			if ok, err := f.AdvanceCoverage(ctx, at); !ok || err != nil {
				return fmt.Errorf("AdvanceCoverage(%d): %v %v", at, ok, err)
			}
			return nil
		})
	}
	if c, err := f.Coverage(ctx); c != 200 || err != nil {
		t.Errorf("coverage %d (%v), want 200: it went backwards or did not move", c, err)
	}
	f.NoteLoss()
	if ok, _ := f.AdvanceCoverage(ctx, 300); ok {
		t.Error("advanced with a loss pending")
	}
}
