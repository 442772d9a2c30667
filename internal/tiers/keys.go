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
// touches at once shares a slot in a Redis Cluster; what must change in
// order across slots is checked on read instead (see Redis.Get and
// Fence.Apply, and the README's protocol section):
//
//	s:{T}                   the entry of the token whose SHA-256 is T (an entry: see entry.go)
//	t:{T}                   when the token was last invalidated (Unix ms of the invalidating instance)
//	n:{T}                   when a session was last created with the token
//	ut:{U}                  when user U was last invalidated (Unix ms): every read of an entry of U
//	                        read from Postgres before it disbelieves it
//	sessiond:{fence}:gen     the cache generation
//	sessiond:{fence}:nodes   the run_id of every Redis master whose dataset was verified
//	sessiond:{fence}:covered the shared coverage (see Fence.AdvanceCoverage)
//
// T is the digest in unpadded base64url (43 characters, not the 64 of hex:
// keys are a good part of the memory), U the user id as
// Postgres gives it. An earlier sessiond's keys (session:<hex>, hashes) are
// never read: the layouts do not share a key.
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

// digestKey is the entry key of a SHA-256 digest.
func digestKey(sum [sha256.Size]byte) string {
	var buf [len(KeyPrefix) + 2 + 43]byte
	copy(buf[:], KeyPrefix+"{")
	base64.RawURLEncoding.Encode(buf[len(KeyPrefix)+1:], sum[:])
	buf[len(buf)-1] = '}'
	return string(buf[:])
}

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
	sum := sha256.Sum256([]byte(token))
	return digestKey(sum)
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

// tagOf is the hash tag part of an entry key, "{T}".
func tagOf(entryKey string) string { return strings.TrimPrefix(entryKey, KeyPrefix) }

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
