// Package extauthz answers Envoy's external authorization API
// (envoy.service.auth.v3.Authorization/Check), as Envoy, Istio and Envoy
// Gateway call it, from sessiond's own ValidateSession.
//
// A valid session lets the request through with x-user-id, x-session-id and
// x-user-email set on it (overwriting whatever the client sent); an invalid
// one is denied with HTTP 401 and a WWW-Authenticate header; when sessiond
// cannot tell, the request is denied with 503 (fail closed). An invalid
// session is an answer, never a gRPC error: Envoy treats an error as a
// failure of the authorization service, and with failure_mode_allow would let
// the request through.
package extauthz

import (
	"context"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"

	"github.com/sessiond/sessiond/internal/authn"
)

// CheckMethod is the full gRPC method name of Check.
const CheckMethod = authv3.Authorization_Check_FullMethodName

// Server implements authv3.AuthorizationServer.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	validate authn.Validate
	cookie   string
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// New returns the Check handler asking validate (the service's
// ValidateSession, so the same token checks, timeouts and counters apply),
// reading the token from `authorization: Bearer` or the named cookie.
func New(validate authn.Validate, cookie string) *Server {
	return &Server{validate: validate, cookie: cookie}
}

// Check decides one request. It returns a gRPC error only when ctx ends
// (Envoy gave up or went away); every decision is a CheckResponse.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	authz, cookies := credentials(req.GetAttributes().GetRequest().GetHttp())
	d := authn.Check(ctx, s.validate, authn.Token(authz, cookies, s.cookie))
	if d.Outcome == authn.Unknown && ctx.Err() != nil {
		return nil, status.FromContextError(ctx.Err()).Err() // nobody is listening for the answer
	}
	switch d.Outcome {
	case authn.Allow:
		return allowed(d), nil
	case authn.Deny:
		return denied(code.Code_UNAUTHENTICATED, typev3.StatusCode_Unauthorized, d.Why,
			header("www-authenticate", `Bearer realm="sessiond", error="invalid_token"`)), nil
	}
	return denied(code.Code_UNAVAILABLE, typev3.StatusCode_ServiceUnavailable, d.Why, header("retry-after", "1")), nil
}

// credentials reads the authorization header and the cookie headers. Header
// names arrive lowercase: in the headers map (duplicates joined by Envoy), or,
// when Envoy sets encode_raw_headers, in header_map with the value in
// raw_value. Both are read.
func credentials(h *authv3.AttributeContext_HttpRequest) (authz string, cookies []string) {
	for k, v := range h.GetHeaders() {
		switch strings.ToLower(k) {
		case "authorization":
			authz = v
		case "cookie":
			cookies = append(cookies, v)
		}
	}
	for _, hv := range h.GetHeaderMap().GetHeaders() {
		v := hv.GetValue()
		if raw := hv.GetRawValue(); len(raw) > 0 {
			v = string(raw)
		}
		switch strings.ToLower(hv.GetKey()) {
		case "authorization":
			if authz == "" {
				authz = v
			}
		case "cookie":
			cookies = append(cookies, v)
		}
	}
	// Envoy joins repeated headers with ","; cookie pairs are separated by
	// ";" and a cookie value cannot hold a "," (RFC 6265), so a comma here
	// only ever separates two headers.
	for i, c := range cookies {
		cookies[i] = strings.ReplaceAll(c, ",", ";")
	}
	return authz, cookies
}

func allowed(d authn.Decision) *authv3.CheckResponse {
	ok := &authv3.OkHttpResponse{}
	for _, h := range authn.Identity(d.Session) {
		name := strings.ToLower(h.Name)
		if h.Value == "" {
			// Envoy drops a header set to "", which would leave the
			// client's copy in place.
			ok.HeadersToRemove = append(ok.HeadersToRemove, name)
			continue
		}
		ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: name, Value: h.Value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(code.Code_OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
	}
}

func denied(c code.Code, httpCode typev3.StatusCode, why string, extra *corev3.HeaderValueOption) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(c), Message: why},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: httpCode},
			Headers: []*corev3.HeaderValueOption{extra, header("cache-control", "no-store"), header("content-type", "text/plain; charset=utf-8")},
			Body:    why + "\n",
		}},
	}
}

func header(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}
