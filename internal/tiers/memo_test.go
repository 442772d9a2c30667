package tiers

import (
	"errors"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

func TestMemoRefusesValuesReadBeforeAnInvalidation(t *testing.T) {
	m := newMemo(4096)
	now := time.Now().UnixNano()
	e := m.epoch("k")
	m.invalidate([]string{"k"}) // arrives while the value is being read
	m.put("k", e, memoValue{num: 1, expires: now + int64(time.Hour)})
	if _, ok := m.get("k", now); ok {
		t.Error("a value read before an invalidation of its key was kept")
	}
	e = m.epoch("k")
	m.put("k", e, memoValue{num: 2, expires: now + int64(time.Hour)})
	if v, ok := m.get("k", now); !ok || v.num != 2 {
		t.Errorf("a value read after: %+v %v", v, ok)
	}
	if _, ok := m.get("k", now+int64(2*time.Hour)); ok {
		t.Error("an expired value was returned")
	}
	m.invalidate(nil)
	if _, ok := m.get("k", now); ok {
		t.Error("a flush left a value")
	}
}

// An instance serves a hot session from its memo, and follows another
// instance's writes and drops as soon as Redis tells it: the memo is never
// staler than rueidis's own client-side cache.
func TestMemoFollowsRedis(t *testing.T) {
	url := devtest.RedisURL(t)
	a, b := connectFenced(t, url), connectFenced(t, url)
	waitTrusted(t, a.Fence(), true)
	waitTrusted(t, b.Fence(), true)
	ctx := t.Context()
	key := k("memo")
	write := func(email string) {
		t.Helper()
		g, err := b.Gen(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rec := &Record{ID: "s", UserID: "u-memo", ExpiresAt: time.Now().Add(time.Hour), Email: email}
		if res, errs := b.SetMany(ctx, []Entry{{key, rec}}, Stamp{ReadStart: time.Now(), Gen: g}); res[0] != Written {
			t.Fatal(errs[0])
		}
	}
	seen := func(want string) {
		t.Helper()
		devtest.Eventually(t, 5*time.Second, func() error {
			l, err := a.Get(ctx, key, time.Second)
			switch {
			case err != nil:
				return err
			case want == "" && l.Record == nil:
				return nil
			case want != "" && l.Record != nil && l.Record.Email == want && l.Local:
				return nil
			}
			return errors.New("not seen yet")
		})
	}
	write("first")
	seen("first")
	if _, ok := a.fromMemo(key); !ok {
		t.Fatal("a hot session is not answered from the memo")
	}
	write("second") // Redis invalidates a's copy
	seen("second")
	if _, err := b.Fence().Apply(ctx, Batch{Keys: []string{key}}); err != nil {
		t.Fatal(err)
	}
	seen("")
}
