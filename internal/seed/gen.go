package seed

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/tiers"
)

// How the data is shaped. Every time is a whole number of microseconds,
// PostgreSQL's precision, so what Load emits equals what the table returns.
//
// Sessions
//   - Owner: user floor(Users·u²) for u uniform in [0,1): the density falls
//     as 1/√index, so low-numbered users hold many sessions (user 0 about
//     Sessions/√Users) and, with 2.5 sessions per user, about one user in
//     seven holds none.
//   - last_activity_at = Now − age, age a mix chosen for a cache's view of
//     traffic: 70% exponential with mean 2 h (most sessions were active in
//     the last few hours), 30% log-uniform on [5 min, 30 d] (a long tail of
//     idle sessions). At least 1 s, at most 30 d.
//   - created_at = last_activity_at for a quarter of sessions (logged in,
//     never came back), else last_activity_at − log-uniform [1 min, 45 d].
//   - expires_at, for the ExpiredShare that are expired: uniform in
//     [last_activity_at, Now), so expired sessions are as recently active
//     as live ones and a cache cannot tell them apart by activity. For the
//     rest: last_activity_at + a lifetime uniform in [7 d, 30 d], raised to
//     at least age + 1 h so the session is still live at Now.
//   - ip_address: NULL for NullShare, else IPv6 for IPv6Share, else IPv4,
//     both from blocks that ISPs and clouds actually announce.
//   - user_agent: NULL for NullShare, else one of a dozen current browsers
//     and apps.
//
// Users
//   - deleted_at for DeletedShare: Now − log-uniform [1 min, 90 d].
//   - banned_until for BannedShare: for LapsedBanShare of them
//     Now − log-uniform [1 min, 30 d] (lapsed, so valid), else
//     Now + log-uniform [1 h, 365 d]. Deleted and banned are independent.
//   - first_name, last_name, username each NULL for NullShare. email is
//     never NULL and is unique because it ends in the user's index.
//
// Determinism: each user is drawn from its own PCG stream keyed by (Seed,
// index), so a session can recompute its owner's state instead of keeping
// every user in memory; sessions come from one sequential PCG stream and
// tokens from one ChaCha8 stream, both keyed by Seed. The same Options give
// the same rows on the same GOARCH; math.Exp and math.Log are assembly on
// some architectures, so another GOARCH may differ by a microsecond in rare
// rows.

// Stream keys, so that the streams drawn from one Seed are unrelated.
const (
	userStream    = 0x75736572_73746174 // "userstat"
	nameStream    = 0x6e616d65_73747273 // "namestrs"
	sessionStream = 0x73657373_696f6e73 // "sessions"
)

// lifetimes and ages from the comment above.
const (
	day            = 24 * time.Hour
	maxAge         = 30 * day
	minAge         = time.Second
	recentMean     = 2 * time.Hour
	recentShare    = 0.70
	singleUseShare = 0.25
	minLifetime    = 7 * day
	maxLifetime    = 30 * day
)

// mix is SplitMix64's finaliser. PCG streams seeded with nearby values are
// correlated; mixing the index first makes per-user streams independent.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

type generator struct {
	opts  Options
	now   time.Time // opts.Now in UTC, truncated to PostgreSQL's microseconds
	vocab vocab
}

func newGenerator(opts Options) *generator {
	return &generator{opts: opts, now: opts.Now.UTC().Truncate(time.Microsecond), vocab: newVocab()}
}

// stream returns the PCG stream for (Seed, kind, index).
func (g *generator) stream(kind, index uint64) *rand.Rand {
	return rand.New(rand.NewPCG(mix(uint64(g.opts.Seed)^kind), mix(index^kind)))
}

// userState is what a session's verdict needs from its user.
type userState struct {
	id          [16]byte
	deletedAt   time.Time // zero: NULL
	bannedUntil time.Time // zero: NULL
}

// user returns user i's state. Every draw is made whatever the shares, so
// changing a share changes only the columns it governs.
func (g *generator) user(i int) userState {
	r := g.stream(userStream, uint64(i))
	var u userState
	u.id = uuid(r)
	deleted, deletedAgo := r.Float64() < g.opts.DeletedShare, logUniform(r, time.Minute, 90*day)
	banned, lapsed := r.Float64() < g.opts.BannedShare, r.Float64() < LapsedBanShare
	lapsedAgo, banLeft := logUniform(r, time.Minute, 30*day), logUniform(r, time.Hour, 365*day)
	if deleted {
		u.deletedAt = g.now.Add(-deletedAgo)
	}
	switch {
	case banned && lapsed:
		u.bannedUntil = g.now.Add(-lapsedAgo)
	case banned:
		u.bannedUntil = g.now.Add(banLeft)
	}
	return u
}

// userRow fills row (in userColumns order) for user i with state u.
func (g *generator) userRow(i int, u userState, row []any) {
	r := g.stream(nameStream, uint64(i))
	v := &g.vocab
	first, last := v.first[r.IntN(len(v.first))], v.last[r.IntN(len(v.last))]
	domain := v.domains[r.IntN(len(v.domains))]
	var email, username string
	switch r.IntN(3) {
	case 0:
		email = fmt.Sprintf("%s.%s%d@%s", first.slug, last.slug, i, domain)
	case 1:
		email = fmt.Sprintf("%s%s%d@%s", first.slug, last.slug, i, domain)
	default:
		email = fmt.Sprintf("%c%s%d@%s", first.slug[0], last.slug, i, domain)
	}
	switch r.IntN(3) {
	case 0:
		username = fmt.Sprintf("%s_%s", first.slug, last.slug)
	case 1:
		username = fmt.Sprintf("%s%d", first.slug, r.IntN(10000))
	default:
		username = fmt.Sprintf("%c%s%02d", first.slug[0], last.slug, r.IntN(100))
	}
	row[0] = u.id
	row[1] = email
	row[2] = g.orNull(r, first.name)
	row[3] = g.orNull(r, last.name)
	row[4] = g.orNull(r, username)
	row[5] = timeOrNull(u.deletedAt)
	row[6] = timeOrNull(u.bannedUntil)
}

// orNull returns v, or nil for NullShare of calls. It always draws, so
// NullShare does not shift later columns.
func (g *generator) orNull(r *rand.Rand, v any) any {
	if r.Float64() < g.opts.NullShare {
		return nil
	}
	return v
}

func timeOrNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// sessionGen draws sessions in order.
type sessionGen struct {
	g      *generator
	r      *rand.Rand
	tokens *rand.ChaCha8
	raw    [32]byte
}

func (g *generator) sessions() *sessionGen {
	// Tokens get their own stream so that they depend only on Seed and the
	// session's position, not on how the other columns are drawn.
	key := sha256.Sum256(binary.BigEndian.AppendUint64([]byte("sessiond/seed tokens "), uint64(g.opts.Seed)))
	return &sessionGen{
		g:      g,
		r:      g.stream(sessionStream, 0),
		tokens: rand.NewChaCha8(key),
	}
}

// next fills row (in sessionColumns order) with the next session and returns
// its truth.
func (s *sessionGen) next(row []any) Truth {
	g, r, o := s.g, s.r, &s.g.opts

	_, _ = s.tokens.Read(s.raw[:]) // ChaCha8.Read never fails
	token := hex.EncodeToString(s.raw[:])
	sum := sha256.Sum256([]byte(token))

	id := uuid(r)
	u := r.Float64()
	owner := min(int(float64(o.Users)*u*u), o.Users-1)
	user := g.user(owner)

	age := activityAge(r)
	last := g.now.Add(-age)
	var created time.Time
	if r.Float64() < singleUseShare {
		created = last
		_ = logUniform(r, time.Minute, 45*day) // keep the stream aligned
	} else {
		created = last.Add(-logUniform(r, time.Minute, 45*day))
	}
	expired := r.Float64() < o.ExpiredShare
	var expires time.Time
	if expired {
		// In [last, now): r.Int64N(age) < age.
		expires = last.Add(time.Duration(r.Int64N(int64(age/time.Microsecond))) * time.Microsecond)
	} else {
		lo := max(minLifetime, age+time.Hour)
		hi := max(maxLifetime, lo+time.Hour)
		expires = last.Add(uniform(r, lo, hi))
	}
	ip := g.ip(r)
	ua := g.orNull(r, g.vocab.agents[r.IntN(len(g.vocab.agents))])

	row[0] = id
	row[1] = user.id
	row[2] = hex.EncodeToString(sum[:])
	row[3] = expires
	row[4] = last
	row[5] = ip
	row[6] = ua
	row[7] = created

	valid, reason := verdict(user, expires, g.now)
	return Truth{
		Token:          token,
		SessionID:      uuidString(id),
		UserID:         uuidString(user.id),
		Valid:          valid,
		Reason:         reason,
		LastActivityAt: last,
	}
}

// verdict is the service's own rule (tiers.Check), so the truth a load
// checks against cannot drift from what sessiond answers.
func verdict(u userState, expiresAt, now time.Time) (bool, string) {
	rec := &tiers.Record{ExpiresAt: expiresAt}
	if !u.deletedAt.IsZero() {
		rec.DeletedAt = &u.deletedAt
	}
	if !u.bannedUntil.IsZero() {
		rec.BannedUntil = &u.bannedUntil
	}
	if r := tiers.Check(rec, now); r != tiers.ReasonNone {
		return false, r.String()
	}
	return true, ""
}

// activityAge draws the time since a session's last activity (see the
// comment at the top of this file).
func activityAge(r *rand.Rand) time.Duration {
	recent, e, tail := r.Float64() < recentShare, r.ExpFloat64(), logUniform(r, 5*time.Minute, maxAge)
	age := tail
	if recent {
		age = time.Duration(e * float64(recentMean)).Truncate(time.Microsecond)
	}
	return min(max(age, minAge), maxAge)
}

// logUniform draws from [lo, hi] with a uniform logarithm: as many values
// between 1 and 10 minutes as between 1 and 10 hours.
func logUniform(r *rand.Rand, lo, hi time.Duration) time.Duration {
	l, h := math.Log(float64(lo)), math.Log(float64(hi))
	d := time.Duration(math.Exp(l + r.Float64()*(h-l)))
	return min(max(d, lo), hi).Truncate(time.Microsecond)
}

// uniform draws a whole number of microseconds from [lo, hi).
func uniform(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64((hi-lo)/time.Microsecond)))*time.Microsecond
}

// uuid draws a random (version 4) UUID.
func uuid(r *rand.Rand) [16]byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], r.Uint64())
	binary.BigEndian.PutUint64(b[8:], r.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return b
}

func uuidString(b [16]byte) string {
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// ip draws an ip_address value: nil (NULL), or an IPv4 or IPv6 address from
// a block that is announced on the internet, so addresses look like traffic.
func (g *generator) ip(r *rand.Rand) any {
	null, v6, x := r.Float64() < g.opts.NullShare, r.Float64() < g.opts.IPv6Share, r.Uint64()
	if null {
		return nil
	}
	if v6 {
		var a [16]byte
		p := g.vocab.v6[x%uint64(len(g.vocab.v6))]
		binary.BigEndian.PutUint16(a[0:], p)
		binary.BigEndian.PutUint16(a[2:], uint16(x>>16))
		// Host part: the upper half of a /64 is the subnet, the lower the
		// interface id, which privacy extensions make random.
		binary.BigEndian.PutUint32(a[4:], uint32(x>>32)&0x0000ffff)
		binary.BigEndian.PutUint64(a[8:], r.Uint64())
		return netip.AddrFrom16(a)
	}
	first := g.vocab.v4[x%uint64(len(g.vocab.v4))]
	return netip.AddrFrom4([4]byte{first, byte(x >> 16), byte(x >> 24), 1 + byte(x>>32)%254})
}

type name struct{ name, slug string }

// vocab holds the word lists rows are drawn from; built once per Load.
type vocab struct {
	first, last []name
	domains     []string
	agents      []string
	v4          []byte   // first octets of widely announced IPv4 /8s
	v6          []uint16 // first 16 bits of announced IPv6 space (RIR allocations)
}

func newVocab() vocab {
	return vocab{
		first:   names("Olivia Liam Emma Noah Amelia Oliver Sophia Elijah Mia Lucas Ava Mateo Isabella Levi Chloé José Zoë Søren Aaliyah Mohammed Fatima Yusuf Priya Arjun Wei Mei Hiroshi Yuki Ji-woo Min-jun Olga Dmitri Ana João Lucía Sofía Kwame Amara Chidi Ngozi Lars Ingrid Björn Łukasz Agnieszka Zeynep Emre Aisha Omar Grace"),
		last:    names("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Nguyen Kim Park Chen Wang Li Zhang Patel Singh Kumar Müller Schmidt Schneider Rossi Russo Dubois Lefèvre Silva Santos Kowalski Nowak Ivanov Petrov Yilmaz Kaya Okafor Mensah Andersson Johansson O'Brien"),
		domains: []string{"gmail.com", "gmail.com", "gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me", "hotmail.com", "gmx.de", "example.com", "acme.io", "fastmail.com"},
		agents: []string{
			"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
			"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
			"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
			"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
			"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
			"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
			"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
			"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
			"Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
			"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
			"Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
			"okhttp/4.12.0",
			"MyApp/3.14.2 (iPhone15,2; iOS 17.4.1) CFNetwork/1494.0.7 Darwin/23.4.0",
		},
		v4: []byte{24, 31, 37, 46, 49, 62, 73, 77, 78, 82, 86, 89, 91, 94, 98, 104, 109, 114, 151, 176, 178, 185, 188, 203, 212, 217},
		v6: []uint16{0x2003, 0x2400, 0x2405, 0x2409, 0x2600, 0x2601, 0x2603, 0x2604, 0x2607, 0x2800, 0x2804, 0x2a00, 0x2a01, 0x2a02, 0x2a03, 0x2c0f},
	}
}

// names turns "José Zoë" into names with ASCII slugs for emails and usernames.
func names(list string) []name {
	fold := strings.NewReplacer("é", "e", "è", "e", "ë", "e", "ü", "u", "ø", "o", "ö", "o", "í", "i", "ã", "a", "á", "a", "Ł", "l", "ł", "l", "'", "", "-", "")
	var out []name
	for _, n := range strings.Fields(list) {
		out = append(out, name{name: n, slug: strings.ToLower(fold.Replace(n))})
	}
	return out
}
