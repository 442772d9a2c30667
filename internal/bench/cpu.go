package bench

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/procfs"
)

// processCPU is the CPU time (user+sys, seconds) this process has spent.
func processCPU() (float64, error) {
	p, err := procfs.Self()
	if err != nil {
		return 0, fmt.Errorf("read own CPU time: %w", err)
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("read own CPU time: %w", err)
	}
	return st.CPUTime(), nil
}

// postgresCPU is the CPU time (user+sys, seconds) of each process of the
// Postgres server behind pool that pg_stat_activity lists (backends and
// background workers; not the postmaster, which does no query work), by
// pid; ok is false when that server does not run on this machine (it is
// reached neither through a Unix socket nor on a loopback address), or a
// pid it lists is not a postgres process here: then its CPU cannot be
// read from /proc.
func postgresCPU(ctx context.Context, pool *pgxpool.Pool) (cpu map[int]float64, ok bool, err error) {
	var addr *netip.Addr
	if err := pool.QueryRow(ctx, `SELECT inet_server_addr()`).Scan(&addr); err != nil {
		return nil, false, fmt.Errorf("postgres server address: %w", err)
	}
	if addr != nil && !addr.IsLoopback() {
		return nil, false, nil
	}
	rows, err := pool.Query(ctx, `SELECT pid FROM pg_stat_activity`)
	if err != nil {
		return nil, false, fmt.Errorf("postgres processes: %w", err)
	}
	defer rows.Close()
	cpu = map[int]float64{}
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return nil, false, fmt.Errorf("postgres processes: %w", err)
		}
		p, err := procfs.NewProc(pid)
		if err != nil {
			continue // exited since: its CPU is lost to both readings
		}
		if comm, err := p.Comm(); err != nil || comm != "postgres" {
			return nil, false, nil
		}
		st, err := p.Stat()
		if err != nil {
			continue
		}
		cpu[pid] = st.CPUTime()
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("postgres processes: %w", err)
	}
	return cpu, true, nil
}

// cpuSpent is what the processes of after spent since before: a process
// that started in between counts from 0.
func cpuSpent(before, after map[int]float64) float64 {
	var s float64
	for pid, t := range after {
		s += t - before[pid]
	}
	return s
}
