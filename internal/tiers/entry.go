package tiers

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"golang.org/x/net/http2/hpack"
)

// An entry is one Redis string per token: a compact binary record, read
// through the client-side cache in one GET. Its layout (all integers
// varints; version 1):
//
//	byte     version<<4 | kind       kind 0: a session, 1: "no such session"
//	uvarint  generation              believed only while it is the current one
//	uvarint  read start              Unix ms before the data was read from Postgres:
//	                                 believed only while no invalidation of its user is younger
//	-- a session only --
//	id       session id              see appendID
//	id       user id
//	time ×3  expires_at, last_activity_at, created_at    see appendTime
//	time ×2  deleted_at, banned_until
//	str ×6   email, ip_address, user_agent, first_name, last_name, username    see appendStr
//
// Strings that HPACK's Huffman code (the one HTTP/2 uses for header values
// such as User-Agent) makes shorter are stored so: a typical user agent
// shrinks by a third, and the value's size decides the allocation class
// Redis keeps it in.
//
// The version is in every value and the key prefix is new to this layout
// (see Key), so entries of another layout are never misread: an older
// sessiond's hashes live under other keys, and a value of another version
// is a miss.
const entryVersion = 1

const (
	kindSession  = 0
	kindNegative = 1
)

// errEntry is wrapped by every decoding error.
var errEntry = errors.New("malformed cache entry")

// encodeEntry appends the entry of rec (nil: a negative entry) read at
// readStart and written in generation gen.
func encodeEntry(dst []byte, gen int64, readStart time.Time, rec *Record) []byte {
	kind := byte(kindSession)
	if rec == nil {
		kind = kindNegative
	}
	dst = append(dst, entryVersion<<4|kind)
	dst = binary.AppendUvarint(dst, uint64(gen))
	dst = binary.AppendUvarint(dst, uint64(max(readStart.UnixMilli(), 0)))
	if rec == nil {
		return dst
	}
	dst = appendID(dst, rec.ID)
	dst = appendID(dst, rec.UserID)
	dst = appendTime(dst, rec.ExpiresAt)
	dst = appendTime(dst, rec.LastActivityAt)
	dst = appendTime(dst, rec.CreatedAt)
	dst = appendOptTime(dst, rec.DeletedAt)
	dst = appendOptTime(dst, rec.BannedUntil)
	dst = appendStr(dst, &rec.Email)
	for _, s := range [...]*string{rec.IPAddress, rec.UserAgent, rec.FirstName, rec.LastName, rec.Username} {
		dst = appendStr(dst, s)
	}
	return dst
}

// entryHead is what every entry starts with.
type entryHead struct {
	gen       int64
	readStart int64 // Unix ms
}

// decodeEntry reads an entry: its head, and the record (nil for a negative
// entry).
func decodeEntry(b []byte) (h entryHead, rec *Record, err error) {
	d := decoder{b: b}
	head := d.byte()
	if d.err == nil && head>>4 != entryVersion {
		return h, nil, fmt.Errorf("%w: version %d", errEntry, head>>4)
	}
	h.gen = int64(d.uvarint())
	h.readStart = int64(d.uvarint())
	if d.err != nil {
		return entryHead{}, nil, d.err
	}
	switch head & 0x0f {
	case kindNegative:
		if len(d.b) != 0 {
			return entryHead{}, nil, fmt.Errorf("%w: %d bytes left over", errEntry, len(d.b))
		}
		return h, nil, nil
	case kindSession:
	default:
		return entryHead{}, nil, fmt.Errorf("%w: kind %d", errEntry, head&0x0f)
	}
	r := &Record{ID: d.id(), UserID: d.id()}
	r.ExpiresAt = d.time()
	r.LastActivityAt = d.time()
	r.CreatedAt = d.time()
	r.DeletedAt = d.optTime()
	r.BannedUntil = d.optTime()
	if e := d.str(); e != nil {
		r.Email = *e
	}
	r.IPAddress, r.UserAgent, r.FirstName, r.LastName, r.Username = d.str(), d.str(), d.str(), d.str(), d.str()
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d bytes left over", errEntry, len(d.b))
	}
	if d.err == nil && (r.ID == "" || r.UserID == "") {
		d.err = fmt.Errorf("%w: no session or user id", errEntry)
	}
	if d.err != nil {
		return entryHead{}, nil, d.err
	}
	return h, r, nil
}

// EntryRecord decodes an entry's bytes as Redis holds them (for tools and
// tests): the record, or nil and negative=true for "no such session".
func EntryRecord(b []byte) (rec *Record, negative bool, err error) {
	_, rec, err = decodeEntry(b)
	return rec, err == nil && rec == nil, err
}

// isNegativeEntry tells a negative entry by its first byte, as the drop
// script does in Lua.
func isNegativeEntry(b []byte) bool { return len(b) > 0 && b[0] == entryVersion<<4|kindNegative }

// An id is 16 bytes when it is a UUID in its canonical lowercase form (what
// Postgres's uuid::text gives), else its text.
const (
	idText = 0
	idUUID = 1
)

func appendID(dst []byte, id string) []byte {
	if u, ok := parseUUID(id); ok {
		return append(append(dst, idUUID), u[:]...)
	}
	dst = append(dst, idText)
	return appendStr(dst, &id)
}

func parseUUID(s string) ([16]byte, bool) {
	var u [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, false
	}
	// Hex pairs straight into u, without building the 32 hex digits first:
	// every warmed session parses two ids.
	j := 0
	for i := 0; i < len(s); i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
		}
		hi, ok1 := lowerHex(s[i])
		lo, ok2 := lowerHex(s[i+1])
		if !ok1 || !ok2 {
			return u, false // capitals would not come back the same
		}
		u[j] = hi<<4 | lo
		j++
	}
	return u, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func formatUUID(u []byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], u[10:16])
	return string(b[:])
}

// A time is a tag byte, then for timeNormal the zigzag varint of Unix
// microseconds, for timeFar the varints of Unix seconds and microseconds
// (years past 294,246, which microseconds in an int64 cannot hold).
const (
	timeNull = iota
	timeNormal
	timeInf
	timeNegInf
	timeFar
)

func appendTime(dst []byte, t time.Time) []byte {
	switch {
	case t.IsZero():
		return append(dst, timeNull)
	case t.Equal(Infinity):
		return append(dst, timeInf)
	case t.Equal(NegInfinity):
		return append(dst, timeNegInf)
	case t.Before(minMicro) || t.After(maxMicro):
		dst = binary.AppendVarint(append(dst, timeFar), t.Unix())
		return binary.AppendUvarint(dst, uint64(t.Nanosecond()/1000))
	}
	return binary.AppendVarint(append(dst, timeNormal), t.UnixMicro())
}

func appendOptTime(dst []byte, t *time.Time) []byte {
	if t == nil {
		return append(dst, timeNull)
	}
	return appendTime(dst, *t)
}

// The range of times that Unix microseconds in an int64 can hold.
var (
	minMicro = time.UnixMicro(math.MinInt64).UTC()
	maxMicro = time.UnixMicro(math.MaxInt64).UTC()
)

// A string is uvarint(2·length+huffman+1) and its bytes, length being that
// of the bytes stored; 0 is NULL.
func appendStr(dst []byte, s *string) []byte {
	if s == nil {
		return append(dst, 0)
	}
	if n := hpack.HuffmanEncodeLength(*s); n < uint64(len(*s)) {
		dst = binary.AppendUvarint(dst, 2*n+1+1)
		return hpack.AppendHuffmanString(dst, *s)
	}
	dst = binary.AppendUvarint(dst, 2*uint64(len(*s))+1)
	return append(dst, *s...)
}

// decoder reads an entry; the first error sticks and every later read
// returns a zero value.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated %s", errEntry, what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) == 0 {
		d.fail("byte")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n int) []byte {
	if n < 0 || len(d.b) < n {
		d.fail("bytes")
		return nil
	}
	b := d.b[:n:n]
	d.b = d.b[n:]
	return b
}

func (d *decoder) id() string {
	switch d.byte() {
	case idUUID:
		if b := d.bytes(16); b != nil {
			return formatUUID(b)
		}
	case idText:
		if s := d.str(); s != nil {
			return *s
		}
	default:
		d.fail("id")
	}
	return ""
}

func (d *decoder) str() *string {
	n := d.uvarint()
	if n == 0 || d.err != nil {
		return nil
	}
	n--
	huffman, size := n&1 == 1, n>>1
	if size > uint64(len(d.b)) {
		d.fail("string")
		return nil
	}
	b := d.bytes(int(size))
	if !huffman {
		s := string(b)
		return &s
	}
	s, err := hpack.HuffmanDecodeToString(b)
	if err != nil {
		d.fail("huffman string")
		return nil
	}
	return &s
}

func (d *decoder) time() time.Time {
	switch d.byte() {
	case timeNull:
		return time.Time{}
	case timeNormal:
		return time.UnixMicro(d.varint()).UTC()
	case timeInf:
		return Infinity
	case timeNegInf:
		return NegInfinity
	case timeFar:
		s, us := d.varint(), d.uvarint()
		if us >= 1e6 {
			d.fail("time")
			return time.Time{}
		}
		return time.Unix(s, int64(us)*1000).UTC()
	}
	d.fail("time")
	return time.Time{}
}

func (d *decoder) optTime() *time.Time {
	t := d.time()
	if t.IsZero() {
		return nil
	}
	return &t
}
