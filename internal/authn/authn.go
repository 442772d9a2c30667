// Package authn is what every caller-facing front of sessiond shares: the Go
// client's middleware, Envoy ext_authz and HTTP forward-auth. It finds the
// session token in a request's headers and turns the ValidateSession answer
// into one of three outcomes: allow, deny, or cannot tell.
//
// The validity rule is not here: each front asks ValidateSession (the
// service in process, or sessiond over gRPC) and only classifies its answer,
// so every front gives the answer the gRPC API gives.
package authn

import (
	"context"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

// DefaultCookie is the cookie that carries the session token unless told
// otherwise.
const DefaultCookie = "session"

// Headers that carry the identity of an allowed request to the upstream.
// Gateways copy them from the answer; each front overwrites (or removes)
// whatever the client sent under these names.
const (
	HeaderUserID    = "X-User-Id"
	HeaderSessionID = "X-Session-Id"
	HeaderUserEmail = "X-User-Email"
)

// Token returns the session token of a request: the credentials of an
// `Authorization: Bearer` header when there is one (the credential the client
// chose for this request), else the value of the named cookie; "" when there
// is neither. cookies are the request's Cookie header values, each
// "a=1; b=2". Malformed cookies of other names are skipped, as browsers and
// net/http do.
func Token(authorization string, cookies []string, cookieName string) string {
	if scheme, cred, ok := strings.Cut(strings.TrimSpace(authorization), " "); ok && strings.EqualFold(scheme, "bearer") {
		if cred = strings.TrimSpace(cred); cred != "" {
			return cred
		}
	}
	if len(cookies) == 0 {
		return ""
	}
	// net/http's own lenient cookie reader, not a hand-written parser.
	r := http.Request{Header: http.Header{"Cookie": cookies}}
	c, err := r.Cookie(cookieName)
	if err != nil {
		return ""
	}
	return c.Value
}

// Outcome is what a front does with a request.
type Outcome int

const (
	// Unknown: sessiond cannot answer now (Postgres down and the session not
	// cached, a deadline passed, sessiond unreachable). Fronts fail closed:
	// 503 / UNAVAILABLE.
	Unknown Outcome = iota
	// Allow: the token names a valid session.
	Allow
	// Deny: no token, or one that names no valid session (unknown, expired,
	// user banned or deleted, or bytes that cannot be a token): 401 /
	// UNAUTHENTICATED.
	Deny
)

// Decision is an Outcome with what explains it.
type Decision struct {
	Outcome Outcome
	// Session is set when Outcome is Allow.
	Session *sessiondv1.Session
	// Why is a short explanation for a denied or unknown answer, fit to
	// show the client: it never holds the token.
	Why string
}

// Validate is ValidateSession for one token, in process or over gRPC. Errors
// are gRPC status errors, as the service returns them.
type Validate func(ctx context.Context, token string) (*sessiondv1.ValidateSessionResponse, error)

// Check decides for token ("" when the request carried none, which is denied
// without asking).
func Check(ctx context.Context, validate Validate, token string) Decision {
	if token == "" {
		return Decision{Outcome: Deny, Why: "no session token"}
	}
	return Classify(validate(ctx, token))
}

// Classify turns a ValidateSession answer into a Decision. A token the
// service refuses as malformed (INVALID_ARGUMENT) is a bad credential, so
// Deny; every other error means the answer is not known, so Unknown.
func Classify(resp *sessiondv1.ValidateSessionResponse, err error) Decision {
	switch {
	case err == nil && resp.GetValid() && resp.GetSession() != nil:
		return Decision{Outcome: Allow, Session: resp.GetSession()}
	case err == nil:
		return Decision{Outcome: Deny, Why: denyReason(resp.GetReason())}
	case status.Code(err) == codes.InvalidArgument:
		return Decision{Outcome: Deny, Why: "malformed session token"}
	}
	return Decision{Outcome: Unknown, Why: "session store unavailable"}
}

func denyReason(r sessiondv1.Reason) string {
	switch r {
	case sessiondv1.Reason_REASON_EXPIRED:
		return "session expired"
	case sessiondv1.Reason_REASON_USER_BANNED, sessiondv1.Reason_REASON_USER_DELETED:
		return "session revoked"
	}
	return "no such session"
}

// Header is one identity header.
type Header struct{ Name, Value string }

// Identity is the identity headers of an allowed session, in the order of
// the constants above. A value may be empty (a user without an email): a
// front must then remove the header rather than pass on a client's copy.
func Identity(s *sessiondv1.Session) [3]Header {
	return [3]Header{
		{HeaderUserID, s.GetUserId()},
		{HeaderSessionID, s.GetId()},
		{HeaderUserEmail, s.GetEmail()},
	}
}
