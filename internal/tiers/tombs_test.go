package tiers

import (
	"strconv"
	"testing"
	"time"
)

func TestLocalTombs(t *testing.T) {
	rec := &Record{ID: "s1", UserID: "u1"}
	key := k("abc")
	tests := []struct {
		name string
		mark string
		l    Lookup
		want bool
	}{
		{"nothing marked", "", Lookup{Record: rec}, false},
		{"token", "k:" + key, Lookup{Record: rec}, true},
		{"user: see userActive", "u:u1", Lookup{Record: rec}, false},
		{"new session with the token: a negative is distrusted", "n:" + key, Lookup{Negative: true}, true},
		{"new session with the token: the session itself is not", "n:" + key, Lookup{Record: rec}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := newLocalTombs(time.Hour)
			if tt.mark != "" {
				tb.mark(tt.mark)
			}
			if got := tb.active(key, tt.l); got != tt.want {
				t.Errorf("active = %v, want %v", got, tt.want)
			}
		})
	}

	t.Run("users", func(t *testing.T) {
		tb := newLocalTombs(time.Hour)
		tb.mark("u:u1")
		if !tb.userActive("u1") || tb.userActive("u2") {
			t.Errorf("userActive: u1 %v (want true), u2 %v (want false)", tb.userActive("u1"), tb.userActive("u2"))
		}
	})

	t.Run("expired tombstones are not live and are swept", func(t *testing.T) {
		tb := newLocalTombs(time.Nanosecond)
		for i := range 10_000 {
			tb.mark("u:" + strconv.Itoa(i))
		}
		time.Sleep(time.Millisecond) // past the 1 ns TTL: waiting for the clock
		if tb.userActive("9999") {
			t.Error("an expired tombstone is live")
		}
		tb.mark("u:last")
		if n := len(tb.until); n > 2*minPruneAt {
			t.Errorf("%d tombstones held after a sweep, want expired ones gone", n)
		}
	})
}
