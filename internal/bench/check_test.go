package bench

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/seed"
)

func TestCheck(t *testing.T) {
	valid := &seed.Truth{Token: "v", SessionID: "s1", UserID: "u1", Valid: true}
	banned := &seed.Truth{Token: "b", SessionID: "s2", UserID: "u2", Reason: seed.ReasonUserBanned}
	ok := func(valid bool, r sessiondv1.Reason, s *sessiondv1.Session) *sessiondv1.ValidateSessionResponse {
		return &sessiondv1.ValidateSessionResponse{Valid: valid, Reason: r, Session: s, Source: sessiondv1.Source_SOURCE_LOCAL}
	}
	sess := &sessiondv1.Session{Id: "s1", UserId: "u1"}
	invalidArg := status.Error(codes.InvalidArgument, "invalid token")
	unavailable := status.Error(codes.Unavailable, "down")
	for _, c := range []struct {
		name string
		call Call
		resp *sessiondv1.ValidateSessionResponse
		err  error
		want Verdict
	}{
		{"valid right", Call{Kind: KindHot, Truth: valid}, ok(true, 0, sess), nil, Right},
		{"valid said invalid", Call{Kind: KindHot, Truth: valid}, ok(false, sessiondv1.Reason_REASON_EXPIRED, nil), nil, Wrong},
		{"valid without session", Call{Kind: KindHot, Truth: valid}, ok(true, 0, nil), nil, Wrong},
		{"valid, another user's session", Call{Kind: KindHot, Truth: valid}, ok(true, 0, &sessiondv1.Session{Id: "s1", UserId: "u9"}), nil, Wrong},
		{"banned right", Call{Kind: KindRanked, Truth: banned}, ok(false, sessiondv1.Reason_REASON_USER_BANNED, nil), nil, Right},
		{"banned said valid", Call{Kind: KindRanked, Truth: banned}, ok(true, 0, sess), nil, Wrong},
		{"banned, wrong reason", Call{Kind: KindRanked, Truth: banned}, ok(false, sessiondv1.Reason_REASON_EXPIRED, nil), nil, Wrong},
		{"banned with a session", Call{Kind: KindRanked, Truth: banned}, ok(false, sessiondv1.Reason_REASON_USER_BANNED, sess), nil, Wrong},
		{"unknown right", Call{Kind: KindUnknown}, ok(false, sessiondv1.Reason_REASON_NOT_FOUND, nil), nil, Right},
		{"unknown said valid", Call{Kind: KindUnknown}, ok(true, 0, sess), nil, Wrong},
		{"unknown said expired", Call{Kind: KindUnknown}, ok(false, sessiondv1.Reason_REASON_EXPIRED, nil), nil, Wrong},
		{"malformed refused", Call{Kind: KindInvalid, Token: ""}, nil, invalidArg, Right},
		{"malformed answered", Call{Kind: KindInvalid, Token: ""}, ok(false, sessiondv1.Reason_REASON_NOT_FOUND, nil), nil, Wrong},
		{"well-formed refused", Call{Kind: KindHot, Truth: valid}, nil, invalidArg, Wrong},
		{"unavailable is a failure", Call{Kind: KindHot, Truth: valid}, nil, unavailable, Failed},
		{"malformed, unavailable", Call{Kind: KindInvalid}, nil, unavailable, Failed},
		{"plain error", Call{Kind: KindUnknown}, nil, errors.New("boom"), Failed},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, why := Check(c.call, c.resp, c.err)
			if got != c.want {
				t.Errorf("Check = %v (%q), want %v", got, why, c.want)
			}
			if (got == Wrong) != (why != "") {
				t.Errorf("verdict %v with explanation %q", got, why)
			}
			if c.call.Token != "" && strings.Contains(why, c.call.Token) {
				t.Errorf("explanation %q repeats the token", why)
			}
		})
	}
}
