// Package redact keeps the secrets of connection URLs (passwords) out of
// everything sessiond prints: log records, errors, command output.
package redact

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
)

// Mask replaces a secret, as net/url's URL.Redacted does.
const Mask = "xxxxx"

// URL returns raw with its secrets masked (the userinfo password, and query
// parameters such as password= or sslpassword=), keeping scheme, user,
// hosts, port, database and other options, so that the text still says
// where sessiond connects. setting names where raw came from ("--redis-url"):
// a value that does not parse as a URL is shown as "(unparsable --redis-url)",
// never as itself.
func URL(setting, raw string) string {
	u, ok := parse(raw)
	if !ok {
		return "(unparsable " + setting + ")"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), Mask)
	}
	q, masked := u.Query(), false
	for k := range q {
		if secretParam(k) {
			q[k], masked = []string{Mask}, true
		}
	}
	if masked {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// Check returns nil when raw is a URL that net/url reads unambiguously,
// else an error naming setting and saying nothing of raw. A value that fails
// this check is never shown, since a parser's message may quote a piece of a
// password that was not percent-encoded: redis://u:12/pw@h reads as host u,
// port 12, path /pw@h.
func Check(setting, raw string) error {
	if _, ok := parse(raw); !ok {
		return fmt.Errorf("%s is not a valid URL (want scheme://[user:password@]host[:port][/path][?options], "+
			"with special characters in the password percent-encoded)", setting)
	}
	return nil
}

// ParseError returns what may be printed of err, the error a driver gave for
// the URL raw (from setting): Check's error when raw fails it, else err with
// raw's secrets masked. nil stays nil.
func ParseError(setting, raw string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := Check(setting, raw); cerr != nil {
		return cerr
	}
	return New(raw).Error(err)
}

// parse reads raw as a URL, and says whether it is one without ambiguity:
// it parses, and every '@' in it is the userinfo's.
func parse(raw string) (*url.URL, bool) {
	u, err := url.Parse(raw)
	if err != nil || !strings.Contains(raw, "://") {
		return nil, false
	}
	ats := 0
	if u.User != nil {
		ats = 1
	}
	return u, strings.Count(raw, "@") == ats
}

// Secrets masks the secrets of a few URLs wherever they appear in a text.
// Its zero value masks nothing. It is safe for concurrent use.
type Secrets struct {
	r *strings.Replacer // nil when there is nothing to mask
}

// New collects the secrets of urls (empty ones are ignored): each URL's
// password, as written and percent-decoded, the values of its secret query
// parameters, and the whole URL itself (replaced by its URL form); of a
// keyword/value string ("host=h password=p"), the secret values. A URL
// that does not parse is masked whole, and so is what looks like its
// password (the text between the first ':' after "//" and the last '@').
//
// A password is masked wherever it appears, even inside an unrelated word:
// a password that is a common word ("postgres") makes some log lines odd,
// never leaky.
func New(urls ...string) Secrets {
	var pairs []string
	add := func(secret, with string) {
		if secret != "" && secret != with {
			pairs = append(pairs, secret, with)
		}
	}
	for _, raw := range urls {
		if raw == "" {
			continue
		}
		if !strings.Contains(raw, "://") {
			// A keyword/value connection string (pgx takes
			// "host=h user=u password=p" too).
			for _, f := range strings.Fields(raw) {
				if k, v, ok := strings.Cut(f, "="); ok && secretParam(k) {
					add(strings.Trim(v, "'"), Mask)
				}
			}
			continue
		}
		u, ok := parse(raw)
		if !ok {
			add(raw, "(unparsable url)")
			if pw := looseUserinfoPassword(raw); pw != "" {
				add(pw, Mask)
				if dec, err := url.PathUnescape(pw); err == nil {
					add(dec, Mask)
				}
			}
			continue
		}
		add(raw, URL("", raw))
		if pw, ok := u.User.Password(); ok {
			add(pw, Mask)
			// As written, and as net/url escapes it again.
			add(looseUserinfoPassword(raw), Mask)
			_, escaped, _ := strings.Cut(u.User.String(), ":")
			add(escaped, Mask)
		}
		for k, vs := range u.Query() {
			if secretParam(k) {
				for _, v := range vs {
					add(v, Mask)
					add(url.QueryEscape(v), Mask)
				}
			}
		}
	}
	if len(pairs) == 0 {
		return Secrets{}
	}
	// strings.Replacer tries the pairs in argument order at each position:
	// longest first, so a whole URL wins over the password inside it.
	type pair struct{ old, new string }
	ps := make([]pair, 0, len(pairs)/2)
	for i := 0; i < len(pairs); i += 2 {
		ps = append(ps, pair{pairs[i], pairs[i+1]})
	}
	slices.SortStableFunc(ps, func(a, b pair) int { return len(b.old) - len(a.old) })
	flat := make([]string, 0, len(pairs))
	for _, p := range ps {
		flat = append(flat, p.old, p.new)
	}
	return Secrets{r: strings.NewReplacer(flat...)}
}

// String returns s with every secret masked.
func (s Secrets) String(text string) string {
	if s.r == nil {
		return text
	}
	return s.r.Replace(text)
}

// Error returns err with its message masked; errors.Is and errors.As still
// see the original chain. It returns err itself when nothing needed masking,
// and nil for nil.
func (s Secrets) Error(err error) error {
	if err == nil || s.r == nil {
		return err
	}
	msg := err.Error()
	if masked := s.r.Replace(msg); masked != msg {
		return maskedError{msg: masked, err: err}
	}
	return err
}

type maskedError struct {
	msg string
	err error
}

func (e maskedError) Error() string { return e.msg }
func (e maskedError) Unwrap() error { return e.err }

// Handler returns a slog handler that masks the secrets in each record's
// message and in its string, error and fmt.Stringer attributes (groups
// included) before passing it to h. With nothing to mask it returns h.
func (s Secrets) Handler(h slog.Handler) slog.Handler {
	if s.r == nil {
		return h
	}
	return handler{h: h, s: s}
}

type handler struct {
	h slog.Handler
	s Secrets
}

func (h handler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, h.s.String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.s.attr(a))
		return true
	})
	return h.h.Handle(ctx, out)
}

func (h handler) WithAttrs(as []slog.Attr) slog.Handler {
	masked := make([]slog.Attr, len(as))
	for i, a := range as {
		masked[i] = h.s.attr(a)
	}
	return handler{h: h.h.WithAttrs(masked), s: h.s}
}

func (h handler) WithGroup(name string) slog.Handler {
	return handler{h: h.h.WithGroup(name), s: h.s}
}

func (s Secrets) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, s.String(v.String()))
	case slog.KindGroup:
		g := v.Group()
		masked := make([]slog.Attr, len(g))
		for i, ga := range g {
			masked[i] = s.attr(ga)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(masked...)}
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			// The built-in handlers print an error as its message anyway.
			return slog.String(a.Key, s.String(x.Error()))
		case fmt.Stringer:
			return slog.String(a.Key, s.String(x.String()))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

// secretParam says whether a URL query parameter holds a secret (pgx reads
// password= and sslpassword=; other drivers use similar names).
func secretParam(name string) bool {
	n := strings.ToLower(name)
	return strings.Contains(n, "password") || strings.Contains(n, "secret") || strings.Contains(n, "token")
}

// looseUserinfoPassword finds the password of scheme://user:password@host
// in a string that may not parse as a URL: the text between the first ':'
// of the userinfo and the last '@'. When a later part holds an '@' too, it
// takes more than the password: masking too much is safe.
func looseUserinfoPassword(raw string) string {
	rest := raw
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(rest[:at], ":")
	return pw
}
