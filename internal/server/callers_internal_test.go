package server

import (
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"

	sessiondv1 "github.com/sessiond/sessiond/gen/sessiond/v1"
	"github.com/sessiond/sessiond/internal/extauthz"
)

// Which calls skip the finish log and which need the admin credential,
// decided from the call's service and method without building its name.
func TestCallClasses(t *testing.T) {
	for _, tt := range []struct {
		full       string
		hot, admin bool
	}{
		{sessiondv1.SessionService_ValidateSession_FullMethodName, true, false},
		{extauthz.CheckMethod, true, false},
		{sessiondv1.SessionService_WarmCache_FullMethodName, false, true},
		{sessiondv1.SessionService_GetStats_FullMethodName, false, true},
		{sessiondv1.SessionService_InvalidateSessions_FullMethodName, false, true},
		{"/" + ServiceName + "/SomethingAddedLater", false, true},
		{"/grpc.health.v1.Health/Check", false, false},
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", false, false},
		{"/" + ServiceName + "x/ValidateSession", false, false},
		{"/" + ServiceName + "/ValidateSessionX", false, true},
	} {
		c := interceptors.NewServerCallMeta(tt.full, nil, nil)
		if got := isHotPath(c); got != tt.hot {
			t.Errorf("isHotPath(%s) = %v, want %v", tt.full, got, tt.hot)
		}
		if got := isAdminMethod(c); got != tt.admin {
			t.Errorf("isAdminMethod(%s) = %v, want %v", tt.full, got, tt.admin)
		}
	}
}
