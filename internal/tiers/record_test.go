package tiers

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Minute), now.Add(time.Minute)
	ptr := func(t time.Time) *time.Time { return &t }
	tests := []struct {
		name string
		rec  *Record
		want Reason
	}{
		{"valid", &Record{ExpiresAt: future}, ReasonNone},
		{"no row", nil, ReasonNotFound},
		{"expired", &Record{ExpiresAt: past}, ReasonExpired},
		{"expires exactly now", &Record{ExpiresAt: now}, ReasonExpired},
		{"user deleted", &Record{ExpiresAt: future, DeletedAt: ptr(past)}, ReasonUserDeleted},
		{"user deleted in the future is deleted", &Record{ExpiresAt: future, DeletedAt: ptr(future)}, ReasonUserDeleted},
		{"banned", &Record{ExpiresAt: future, BannedUntil: ptr(future)}, ReasonUserBanned},
		{"ban lapsed", &Record{ExpiresAt: future, BannedUntil: ptr(past)}, ReasonNone},
		{"ban ends exactly now", &Record{ExpiresAt: future, BannedUntil: ptr(now)}, ReasonNone},
		{"deleted beats banned and expired", &Record{ExpiresAt: past, DeletedAt: ptr(past), BannedUntil: ptr(future)}, ReasonUserDeleted},
		{"banned beats expired", &Record{ExpiresAt: past, BannedUntil: ptr(future)}, ReasonUserBanned},
		{"NULL columns are fine", &Record{ExpiresAt: future, IPAddress: nil, UserAgent: nil, FirstName: nil}, ReasonNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Check(tt.rec, now); got != tt.want {
				t.Errorf("Check = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCheckToken(t *testing.T) {
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"hex token", strings.Repeat("ab", 32), true},
		{"printable with space and tilde", "a b~!", true},
		{"512 bytes", strings.Repeat("x", 512), true},
		{"empty", "", false},
		{"513 bytes", strings.Repeat("x", 513), false},
		{"newline", "abc\n", false},
		{"NUL", "a\x00b", false},
		{"DEL", "a\x7fb", false},
		{"UTF-8", "café", false},
		{"invalid UTF-8", "\xff\xfe", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckToken(tt.token)
			if (err == nil) != tt.ok {
				t.Fatalf("CheckToken = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidToken) {
					t.Errorf("error %v does not wrap ErrInvalidToken", err)
				}
				if tt.token != "" && strings.Contains(err.Error(), tt.token) {
					t.Errorf("error %q repeats the token", err)
				}
			}
		})
	}
}

func TestKeys(t *testing.T) {
	// SHA-256("abc"), the FIPS 180-2 test vector.
	const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := TokenHash("abc"); got != abc {
		t.Fatalf("TokenHash(abc) = %s", got)
	}
	// The first 16 bytes of the digest in unpadded base64url, the first
	// character the hash tag.
	want := "s:{" + slotTags[0xba%64] + "}ungWv48Bz-pBQUDeXa4iIw" // the digest starts with 0xba
	for _, tt := range []struct {
		name string
		got  string
	}{
		{"presented token", Key(TokenHash("abc"))},
		{"presented token, one allocation", TokenKey("abc")},
		{"hash column", RowKey(abc, TokenStorageHash)},
		{"hash column in capitals", RowKey(strings.ToUpper(abc), TokenStorageHash)},
		{"plain column", RowKey("abc", TokenStoragePlain)},
	} {
		if tt.got != want {
			t.Errorf("%s: key %s, want %s", tt.name, tt.got, want)
		}
	}
	for _, bad := range []string{"", "abc", strings.Repeat("z", 64)} {
		if k := RowKey(bad, TokenStorageHash); k != "" {
			t.Errorf("RowKey(%q) = %q, want \"\": not a hex digest", bad, k)
		}
	}
}

func TestTTLFor(t *testing.T) {
	now := time.Now()
	for _, tt := range []struct {
		name    string
		expires time.Time
		want    time.Duration
	}{
		{"far expiry: the cache TTL", now.Add(time.Hour), 5 * time.Minute},
		{"near expiry: until expiry", now.Add(time.Minute), time.Minute},
		{"expired: the negative TTL", now.Add(-time.Second), 30 * time.Second},
	} {
		if got := ttlFor(&Record{ExpiresAt: tt.expires}, now, 5*time.Minute, 30*time.Second); got != tt.want {
			t.Errorf("%s: ttl %v, want %v", tt.name, got, tt.want)
		}
	}
}

// An entry and its tombstones share a hash tag (one slot on a cluster), and
// entries spread over 64 tags.
func TestKeySlots(t *testing.T) {
	tags := map[string]bool{}
	for i := range 5000 {
		k := TokenKey(strconv.Itoa(i))
		if hashTag(k) != hashTag(tombKey(k)) || hashTag(k) != hashTag(newTombKey(k)) || len(hashTag(k)) > maxTag {
			t.Fatalf("%s: tags %q %q %q", k, hashTag(k), hashTag(tombKey(k)), hashTag(newTombKey(k)))
		}
		tags[hashTag(k)] = true
	}
	if len(tags) != 64 {
		t.Errorf("entries over %d tags, want 64", len(tags))
	}
	if got := hashTag(GenKey); got != "fence" || hashTag(NodesKey) != got || hashTag(CoveredKey) != got {
		t.Errorf("the fence's keys are not in one slot")
	}
}

// Each of the 64 tags lies in its own 256-slot stretch of Redis Cluster's
// 16,384 (CRC16/XMODEM, as Redis computes it).
func TestSlotTags(t *testing.T) {
	crc16 := func(s string) uint16 {
		var crc uint16
		for i := 0; i < len(s); i++ {
			crc ^= uint16(s[i]) << 8
			for range 8 {
				if crc&0x8000 != 0 {
					crc = crc<<1 ^ 0x1021
				} else {
					crc <<= 1
				}
			}
		}
		return crc
	}
	if crc16("123456789") != 0x31c3 {
		t.Fatal("crc16 is not XMODEM")
	}
	for i, tag := range slotTags {
		if slot := crc16(tag) % 16384; int(slot)/256 != i {
			t.Errorf("tag %d %q is in slot %d, stretch %d", i, tag, slot, slot/256)
		}
	}
}
