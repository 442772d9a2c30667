package bench

import "github.com/sessiond/sessiond/internal/tiers"

// CheckTokenOK reports whether sessiond's token check accepts token.
func CheckTokenOK(token string) bool { return tiers.CheckToken(token) == nil }
