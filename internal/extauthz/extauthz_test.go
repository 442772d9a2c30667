package extauthz

import (
	"context"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
)

func TestCredentials(t *testing.T) {
	for _, tt := range []struct {
		name    string
		http    *authv3.AttributeContext_HttpRequest
		authz   string
		cookies []string
	}{
		{"headers map", &authv3.AttributeContext_HttpRequest{Headers: map[string]string{"authorization": "Bearer a", "cookie": "session=b"}},
			"Bearer a", []string{"session=b"}},
		{"header_map, raw_value", &authv3.AttributeContext_HttpRequest{HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: "authorization", RawValue: []byte("Bearer a")}, {Key: "cookie", RawValue: []byte("session=b")},
		}}}, "Bearer a", []string{"session=b"}},
		{"header_map, value", &authv3.AttributeContext_HttpRequest{HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: "cookie", Value: "a=1"}, {Key: "cookie", Value: "session=b"},
		}}}, "", []string{"a=1", "session=b"}},
		{"joined cookies", &authv3.AttributeContext_HttpRequest{Headers: map[string]string{"cookie": "a=1,session=b"}},
			"", []string{"a=1;session=b"}},
		{"nothing", &authv3.AttributeContext_HttpRequest{}, "", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			authz, cookies := credentials(tt.http)
			if authz != tt.authz || len(cookies) != len(tt.cookies) {
				t.Fatalf("got %q %q, want %q %q", authz, cookies, tt.authz, tt.cookies)
			}
			for i := range cookies {
				if cookies[i] != tt.cookies[i] {
					t.Errorf("cookie %d = %q, want %q", i, cookies[i], tt.cookies[i])
				}
			}
		})
	}
}

// Check never answers a decision with a gRPC error: only a caller who left.
func TestCheckErrors(t *testing.T) {
	down := New(func(context.Context, string) (*sessiondv1.ValidateSessionResponse, error) {
		return nil, status.Error(codes.Unavailable, "postgres down")
	}, "session")
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Headers: map[string]string{"cookie": "session=t"}}}}}

	resp, err := down.Check(t.Context(), req)
	if err != nil || resp.GetStatus().GetCode() != int32(code.Code_UNAVAILABLE) ||
		resp.GetDeniedResponse().GetStatus().GetCode() != typev3.StatusCode_ServiceUnavailable {
		t.Fatalf("unknown answer: %v, %v; want a denied 503", resp, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := down.Check(ctx, req); status.Code(err) != codes.Canceled {
		t.Errorf("caller gone: %v, want Canceled", err)
	}
}
