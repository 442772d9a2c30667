package forwardauth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

func TestHandler(t *testing.T) {
	answers := map[string]func() (*sessiondv1.ValidateSessionResponse, error){
		"good": func() (*sessiondv1.ValidateSessionResponse, error) {
			return &sessiondv1.ValidateSessionResponse{Valid: true, Session: &sessiondv1.Session{Id: "s", UserId: "u"}}, nil
		},
		"bad":  func() (*sessiondv1.ValidateSessionResponse, error) { return &sessiondv1.ValidateSessionResponse{}, nil },
		"down": func() (*sessiondv1.ValidateSessionResponse, error) { return nil, status.Error(codes.Unavailable, "pg") },
	}
	h := Handler(func(_ context.Context, token string) (*sessiondv1.ValidateSessionResponse, error) {
		return answers[token]()
	}, "sid")
	for _, tt := range []struct {
		token, path string
		code        int
	}{
		{"good", Path, http.StatusOK},
		{"bad", Path, http.StatusUnauthorized},
		{"down", Path, http.StatusServiceUnavailable},
		{"good", "/", http.StatusNotFound},
	} {
		req := httptest.NewRequest("GET", tt.path, nil)
		req.Header.Set("Cookie", "sid="+tt.token)
		req.Header.Set("X-User-Email", "spoofed@example.test")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tt.code {
			t.Errorf("%s %s: %d, want %d", tt.token, tt.path, rec.Code, tt.code)
		}
		if tt.code == http.StatusOK {
			// An empty email is still sent, so a gateway copying the header
			// replaces the client's.
			if v, ok := rec.Result().Header["X-User-Email"]; !ok || len(v) != 1 || v[0] != "" {
				t.Errorf("X-User-Email = %q (present %v), want sent empty", v, ok)
			}
		}
	}
}
