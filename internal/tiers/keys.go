package tiers

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"

	"github.com/redis/rueidis"
)

// The Redis layout. Every key carries a hash tag, so that what one script
// touches at once shares a slot in a Redis Cluster; what would need to
// change in order across slots is checked on read instead (see Redis.Get and
// Fence.Apply, and the README's protocol section):
//
//	s:{c}R                  the entry of the token whose SHA-256 starts with R (an entry: see entry.go)
//	t:{c}R                  when the token was last invalidated (Unix ms of the invalidating instance)
//	n:{c}R                  when a session was last created with the token
//	ut:{U}                  when user U was last invalidated (Unix ms): every read of an entry of U
//	                        read from Postgres before it disbelieves it
//	sessiond:{fence}:gen     the cache generation
//	sessiond:{fence}:nodes   the run_id of every Redis master whose dataset was verified
//	sessiond:{fence}:covered the shared coverage (see Fence.AdvanceCoverage)
//
// R is the first 16 bytes of the digest in unpadded base64url (22
// characters: keys are a good part of the memory, and 128 bits leave no
// room for a collision); c is one of 64 short hash tags, chosen by the
// digest's first byte, whose slots are spread evenly over the 16,384 (see
// slotTags), so the entries fall in 64 slots shared fairly by the masters,
// and a warming batch of 1,000 is about 64 script calls of 16 entries on a
// cluster, not 1,000 of one. U is the user id as Postgres gives it. An earlier sessiond's keys
// (session:<hex>, hashes) are never read: the layouts do not share a key.
const (
	// KeyPrefix starts every entry key.
	KeyPrefix     = "s:"
	tombPrefix    = "t:"
	newTombPrefix = "n:"
	userTomb      = "ut:"

	GenKey     = "sessiond:{fence}:gen"
	NodesKey   = "sessiond:{fence}:nodes"
	CoveredKey = "sessiond:{fence}:covered"
)

// keyDigest is how much of the digest names an entry.
const keyDigest = 16

// digestKey is the entry key of a SHA-256 digest.
func digestKey(sum [sha256.Size]byte) string {
	var buf [len(KeyPrefix) + 2 + maxTag + 22]byte
	n := copy(buf[:], KeyPrefix+"{")
	n += copy(buf[n:], slotTags[sum[0]%64])
	buf[n] = '}'
	n++
	base64.RawURLEncoding.Encode(buf[n:], sum[:keyDigest])
	return string(buf[:n+22])
}

// slotTags are 64 hash tags whose slots lie one in each 256-slot stretch
// of the 16,384: Redis Cluster gives each master contiguous stretches, so
// every master holds its fair share of entries (tags read from the digest
// itself would fall where CRC16 puts them: 14 on one master, 25 on another).
// Each is the first string of [0-9a-z] (shortest first) in its stretch;
// TestSlotTags checks them against CRC16, and the cluster tests against
// Redis's own CLUSTER KEYSLOT.
var slotTags = [64]string{
	"10", "18", "6h", "03", "29", "21", "3", "4s", "0j", "0b", "1a", "0s", "b", "j", "s", "2d",
	"11", "19", "6i", "02", "28", "20", "2", "4r", "0k", "0c", "0z", "0r", "c", "k", "r", "z",
	"12", "6s", "09", "01", "4h", "23", "1", "9", "0h", "0d", "0y", "0q", "d", "h", "q", "y",
	"13", "6r", "08", "00", "4i", "22", "0", "8", "0i", "0a", "0x", "0p", "a", "i", "p", "x",
}

// maxTag is the longest of slotTags.
const maxTag = 2

// Key is the entry key of the token whose hex SHA-256 is hash (any case);
// "" when hash is not one.
func Key(hash string) string {
	var sum [sha256.Size]byte
	if len(hash) != 2*sha256.Size {
		return ""
	}
	if _, err := hex.Decode(sum[:], []byte(hash)); err != nil {
		return ""
	}
	return digestKey(sum)
}

// TokenKey is Key(TokenHash(token)), without the hex: it is on the hot path.
func TokenKey(token string) string {
	return digestKey(sha256.Sum256([]byte(token)))
}

// RowKey is the entry key for a session row whose token column holds
// stored: the same key that TokenKey gives for the raw token a client
// presents, so an entry warmed from the database is found by the next
// lookup. With hash storage the column is the hex digest; a value that is
// not one can never match a token, and gives "".
func RowKey(stored string, storage TokenStorage) string {
	if storage == TokenStoragePlain {
		return TokenKey(stored)
	}
	return Key(stored)
}

// tagOf is an entry key less its prefix, "{c}R": what its tombstones
// append to theirs.
func tagOf(entryKey string) string { return strings.TrimPrefix(entryKey, KeyPrefix) }

// hashTag is the hash tag of a key (what decides its slot): what is between
// its first "{" and the next "}", or the key itself without one.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

func tombKey(entryKey string) string { return tombPrefix + tagOf(entryKey) }

// NewSessionTombKey is the key that records when a session was last created
// with the token of entryKey (tests wait for it).
func NewSessionTombKey(entryKey string) string { return newTombKey(entryKey) }
func newTombKey(entryKey string) string        { return newTombPrefix + tagOf(entryKey) }
func userTombKey(userID string) string         { return userTomb + "{" + userID + "}" }

// script is a Lua script run many times in one round trip, one call per
// slot (rueidis's ExecMulti loads the script on every node before each
// batch: a round trip too many on the write path).
type script struct {
	lua  *rueidis.Lua
	src  string
	sha1 string
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{lua: rueidis.NewLuaScript(src), src: src, sha1: hex.EncodeToString(sum[:])}
}

// exec runs one call.
func (s *script) exec(ctx context.Context, c rueidis.Client, keys, args []string) rueidis.RedisResult {
	return s.lua.Exec(ctx, c, keys, args)
}

// execMulti runs the calls with EVALSHA in one DoMulti (rueidis sends each
// to its slot's node), and those a node did not know the script for again
// with EVAL, which loads it.
func (s *script) execMulti(ctx context.Context, c rueidis.Client, calls []rueidis.LuaExec) []rueidis.RedisResult {
	cmds := make(rueidis.Commands, len(calls))
	for i, m := range calls {
		cmds[i] = c.B().Evalsha().Sha1(s.sha1).Numkeys(int64(len(m.Keys))).Key(m.Keys...).Arg(m.Args...).Build()
	}
	res := c.DoMulti(ctx, cmds...)
	var retry []int
	for i, r := range res {
		if err, ok := rueidis.IsRedisErr(r.Error()); ok && err.IsNoScript() {
			retry = append(retry, i)
		}
	}
	if len(retry) > 0 {
		cmds = cmds[:0]
		for _, i := range retry {
			m := calls[i]
			cmds = append(cmds, c.B().Eval().Script(s.src).Numkeys(int64(len(m.Keys))).Key(m.Keys...).Arg(m.Args...).Build())
		}
		for j, r := range c.DoMulti(ctx, cmds...) {
			res[retry[j]] = r
		}
	}
	return res
}
