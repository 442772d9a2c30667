package warm

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// The row scanner plans once and names the column it could not read; given
// fewer fields than destinations (rows of a query that failed), it refuses
// rows instead of panicking.
func TestRawScanner(t *testing.T) {
	types := pgtype.NewMap()
	var id string
	var n int64
	fields := []pgconn.FieldDescription{
		{Name: "id", DataTypeOID: pgtype.TextOID, Format: pgtype.TextFormatCode},
		{Name: "n", DataTypeOID: pgtype.Int8OID, Format: pgtype.TextFormatCode},
	}
	s := newRawScanner(types, fields, []any{&id, &n})
	for _, row := range []struct {
		id, n string
		want  int64
	}{{"a", "1", 1}, {"b", "22", 22}} {
		if col, err := s.row([][]byte{[]byte(row.id), []byte(row.n)}); err != nil || id != row.id || n != row.want {
			t.Errorf("row %v: %q %v, got %q %d", row, col, err, id, n)
		}
	}
	if col, err := s.row([][]byte{[]byte("c"), []byte("x")}); err == nil || col != "n" {
		t.Errorf("an unreadable n: column %q, error %v; want n and an error", col, err)
	}
	if col, err := s.row([][]byte{nil, []byte("1")}); err == nil || col != "id" {
		t.Errorf("NULL into a string: column %q, error %v; want id and an error", col, err)
	}
	none := newRawScanner(types, nil, []any{&id, &n})
	if _, err := none.row([][]byte{[]byte("a"), []byte("1")}); err == nil {
		t.Error("a scanner without fields read a row")
	}
}
