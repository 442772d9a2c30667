package bench

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/seed"
)

// Verdict is what Check made of one answer.
type Verdict uint8

const (
	// Right: the answer agrees with the truth.
	Right Verdict = iota
	// Wrong: the answer contradicts the truth (a wrong valid flag, reason or
	// session; OK for a malformed token; INVALID_ARGUMENT for a well-formed one).
	Wrong
	// Failed: no answer, an error status other than the expected one
	// (UNAVAILABLE, DEADLINE_EXCEEDED, ...). Counted by code, not as wrong.
	Failed
)

// protoReason maps the seed's reason strings to the proto's.
func protoReason(r string) (sessiondv1.Reason, bool) {
	switch r {
	case "":
		return sessiondv1.Reason_REASON_UNSPECIFIED, true
	case seed.ReasonNotFound:
		return sessiondv1.Reason_REASON_NOT_FOUND, true
	case seed.ReasonExpired:
		return sessiondv1.Reason_REASON_EXPIRED, true
	case seed.ReasonUserDeleted:
		return sessiondv1.Reason_REASON_USER_DELETED, true
	case seed.ReasonUserBanned:
		return sessiondv1.Reason_REASON_USER_BANNED, true
	}
	return 0, false
}

// Check compares the answer to c with what the seeded truth says it must be:
//   - a malformed token (KindInvalid): INVALID_ARGUMENT;
//   - an unknown token: OK, valid=false, REASON_NOT_FOUND, no session;
//   - a seeded token: OK, the truth's valid flag and reason; when valid, a
//     session with the truth's session and user ids, else no session.
//
// It returns Wrong with a description (never the token) when the answer
// contradicts that, Failed for any other error status, else Right.
func Check(c Call, resp *sessiondv1.ValidateSessionResponse, err error) (Verdict, string) {
	code := status.Code(err)
	if c.Kind == KindInvalid {
		switch code {
		case codes.InvalidArgument:
			return Right, ""
		case codes.OK:
			return Wrong, fmt.Sprintf("malformed token (%d bytes): got OK valid=%v, want INVALID_ARGUMENT", len(c.Token), resp.GetValid())
		}
		return Failed, ""
	}
	switch code {
	case codes.OK:
	case codes.InvalidArgument:
		return Wrong, fmt.Sprintf("%s token: got INVALID_ARGUMENT, want an answer", c.Kind)
	default:
		return Failed, ""
	}
	wantValid, wantReason, what := false, sessiondv1.Reason_REASON_NOT_FOUND, "unknown token"
	if c.Truth != nil {
		r, ok := protoReason(c.Truth.Reason)
		if !ok {
			return Wrong, fmt.Sprintf("session %s: truth has unknown reason %q", c.Truth.SessionID, c.Truth.Reason)
		}
		wantValid, wantReason, what = c.Truth.Valid, r, fmt.Sprintf("%s session %s", c.Kind, c.Truth.SessionID)
	}
	switch {
	case resp.GetValid() != wantValid || resp.GetReason() != wantReason:
		return Wrong, fmt.Sprintf("%s: got valid=%v %v, want valid=%v %v (source %v)",
			what, resp.GetValid(), resp.GetReason(), wantValid, wantReason, resp.GetSource())
	case !wantValid && resp.GetSession() != nil:
		return Wrong, fmt.Sprintf("%s: an invalid answer carries a session", what)
	case wantValid && (resp.GetSession().GetId() != c.Truth.SessionID || resp.GetSession().GetUserId() != c.Truth.UserID):
		return Wrong, fmt.Sprintf("%s: got session %q of user %q, want user %q",
			what, resp.GetSession().GetId(), resp.GetSession().GetUserId(), c.Truth.UserID)
	}
	return Right, ""
}
