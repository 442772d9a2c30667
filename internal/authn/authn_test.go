package authn

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

func TestToken(t *testing.T) {
	for _, tt := range []struct {
		name    string
		auth    string
		cookies []string
		cookie  string
		want    string
	}{
		{"nothing", "", nil, "session", ""},
		{"bearer", "Bearer abc", nil, "session", "abc"},
		{"bearer, any case, padded", "  bEaReR   abc  ", nil, "session", "abc"},
		{"bearer wins over the cookie", "Bearer abc", []string{"session=def"}, "session", "abc"},
		{"empty bearer falls back to the cookie", "Bearer ", []string{"session=def"}, "session", "def"},
		{"basic is not ours", "Basic dXNlcjpwYXNz", []string{"session=def"}, "session", "def"},
		{"basic alone", "Basic dXNlcjpwYXNz", nil, "session", ""},
		{"cookie among others", "", []string{"a=1; session=def; b=2"}, "session", "def"},
		{"cookie in a second header (HTTP/2 splits them)", "", []string{"a=1", "session=def"}, "session", "def"},
		{"configured cookie name", "", []string{"session=def; sid=ghi"}, "sid", "ghi"},
		{"quoted value", "", []string{`session="def"`}, "session", "def"},
		{"a malformed neighbour is skipped", "", []string{"b@d=\x7f; session=def"}, "session", "def"},
		{"no such cookie", "", []string{"a=1"}, "session", ""},
		{"name is case-sensitive", "", []string{"Session=def"}, "session", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Token(tt.auth, tt.cookies, tt.cookie); got != tt.want {
				t.Errorf("Token(%q, %q, %q) = %q, want %q", tt.auth, tt.cookies, tt.cookie, got, tt.want)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	sess := &sessiondv1.Session{Id: "s1", UserId: "u1", Email: "a@example.test"}
	answer := func(resp *sessiondv1.ValidateSessionResponse, err error) Validate {
		return func(context.Context, string) (*sessiondv1.ValidateSessionResponse, error) { return resp, err }
	}
	for _, tt := range []struct {
		name  string
		token string
		v     Validate
		want  Outcome
		why   string
	}{
		{"valid", "t", answer(&sessiondv1.ValidateSessionResponse{Valid: true, Session: sess}, nil), Allow, ""},
		{"no token: not asked", "", func(context.Context, string) (*sessiondv1.ValidateSessionResponse, error) {
			panic("asked for an empty token")
		}, Deny, "no session token"},
		{"unknown", "t", answer(&sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_NOT_FOUND}, nil), Deny, "no such session"},
		{"expired", "t", answer(&sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_EXPIRED}, nil), Deny, "session expired"},
		{"banned", "t", answer(&sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_USER_BANNED}, nil), Deny, "session revoked"},
		{"deleted", "t", answer(&sessiondv1.ValidateSessionResponse{Reason: sessiondv1.Reason_REASON_USER_DELETED}, nil), Deny, "session revoked"},
		{"valid without a session is not trusted", "t", answer(&sessiondv1.ValidateSessionResponse{Valid: true}, nil), Deny, "no such session"},
		{"malformed token", "t", answer(nil, status.Error(codes.InvalidArgument, "bad")), Deny, "malformed session token"},
		{"unavailable", "t", answer(nil, status.Error(codes.Unavailable, "pg down")), Unknown, "session store unavailable"},
		{"deadline", "t", answer(nil, status.Error(codes.DeadlineExceeded, "slow")), Unknown, "session store unavailable"},
		{"internal", "t", answer(nil, status.Error(codes.Internal, "bug")), Unknown, "session store unavailable"},
		{"not a status", "t", answer(nil, errors.New("dial: refused")), Unknown, "session store unavailable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := Check(t.Context(), tt.v, tt.token)
			if d.Outcome != tt.want || d.Why != tt.why {
				t.Fatalf("got %v %q, want %v %q", d.Outcome, d.Why, tt.want, tt.why)
			}
			if (d.Session != nil) != (tt.want == Allow) {
				t.Errorf("session %v with outcome %v", d.Session, d.Outcome)
			}
		})
	}
}
