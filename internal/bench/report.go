package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

func fmtPG(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", *v)
}

func fmtWrong(r Result) string {
	if !r.Checked {
		return "not checked"
	}
	return fmt.Sprint(r.Wrong)
}

func counts(m map[string]int) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// WriteResult writes one run as a markdown table.
func WriteResult(w io.Writer, r Result) {
	fmt.Fprintf(w, "| metric | value |\n| --- | --- |\n")
	row := func(k, format string, a ...any) { fmt.Fprintf(w, "| %s | %s |\n", k, fmt.Sprintf(format, a...)) }
	row("mode", "%s for %.1f s", r.Mode, r.Seconds)
	row("calls", "%d", r.Calls)
	row("throughput", "%.0f calls/s", r.Throughput)
	row("latency p50 / p90 / p99 / p99.9 / max", "%.3f / %.3f / %.3f / %.3f / %.3f ms", r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.P999, r.Latency.Max)
	row("answers by source", "%s", counts(r.Sources))
	row("hit rate (local+redis of OK answers)", "%.2f %%", r.HitRate)
	row("calls by gRPC code", "%s", counts(r.Codes))
	row("calls by token kind", "%s", counts(r.Kinds))
	row("postgres answers per 1,000 calls", "%s", fmtPG(r.PostgresPer1000))
	row("wrong answers", "%s", fmtWrong(r))
	for _, e := range r.WrongExamples {
		row("wrong", "%s", e)
	}
	if len(r.Series) > 0 {
		fmt.Fprintf(w, "\n| second | calls | hit rate %% | p99 ms |\n| ---: | ---: | ---: | ---: |\n")
		for _, s := range r.Series {
			fmt.Fprintf(w, "| %d | %d | %.2f | %.3f |\n", s.T, s.Calls, s.HitRate, s.P99)
		}
	}
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// WriteCompare writes the comparison as a markdown table: each scenario and
// mode (the medians of its runs), with its throughput and p50 as multiples
// of the no-op server's, the ideal cache's and the direct-Postgres
// baseline's in the same mode; then, with several runs, each run's
// throughput and p50, so that the spread behind each median shows.
func WriteCompare(w io.Writer, rep CompareReport) {
	if rep.Command != "" {
		fmt.Fprintf(w, "command: `%s`\n\n", rep.Command)
	}
	meds := rep.Medians
	if meds == nil {
		meds = Medians(rep.Results)
	}
	runs := max(rep.Runs, 1)
	fmt.Fprintf(w, "seeded: %s\nmix: %s\n", summaryLine(rep.Seed), rep.Mix)
	if runs > 1 {
		fmt.Fprintf(w, "runs: %d, interleaved; every figure below is the median of the runs (wrong answers: their sum)\n", runs)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | mode | calls/s | p50 ms | p99 ms | p99.9 ms | hit rate | pg/1k calls | wrong | calls/s vs no-op | p50 vs no-op | calls/s vs ideal | p50 vs ideal | calls/s vs direct pg | p50 vs direct pg |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	find := func(scenario, mode string) *Result {
		for i := range meds {
			if meds[i].Scenario == scenario && meds[i].Mode == mode {
				return &meds[i]
			}
		}
		return nil
	}
	for _, r := range meds {
		vs := func(name string) (string, string) {
			b := find(name, r.Mode)
			if b == nil {
				return "n/a", "n/a"
			}
			return ratio(r.Throughput, b.Throughput), ratio(r.Latency.P50, b.Latency.P50)
		}
		tn, pn := vs(ScenarioNoop)
		ti, pi := vs(ScenarioIdeal)
		td, pd := vs(ScenarioDirectPostgres)
		fmt.Fprintf(w, "| %s | %s | %.0f | %.3f | %.3f | %.3f | %.1f %% | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Scenario, r.Mode, r.Throughput, r.Latency.P50, r.Latency.P99, r.Latency.P999, r.HitRate,
			fmtPG(r.PostgresPer1000), fmtWrong(r), tn, pn, ti, pi, td, pd)
	}
	// What tracing costs: the traced sessiond against the plain one, mode by mode.
	traced := false
	for _, r := range meds {
		b := find(ScenarioSessiond, r.Mode)
		if r.Scenario != ScenarioSessiondTraced || b == nil || b.Throughput == 0 {
			continue
		}
		if !traced {
			fmt.Fprintln(w)
			traced = true
		}
		fmt.Fprintf(w, "tracing cost, %s: %+.1f %% calls/s, p50 %+.0f µs, p99 %+.0f µs\n", r.Mode,
			100*(r.Throughput/b.Throughput-1), 1000*(r.Latency.P50-b.Latency.P50), 1000*(r.Latency.P99-b.Latency.P99))
	}
	if runs < 2 {
		return
	}
	fmt.Fprintf(w, "\neach run (calls/s; p50 ms):\n\n| scenario | mode |")
	for i := 1; i <= runs; i++ {
		fmt.Fprintf(w, " run %d |", i)
	}
	fmt.Fprintf(w, "\n| --- | --- |%s\n", strings.Repeat(" ---: |", runs))
	for _, m := range meds {
		fmt.Fprintf(w, "| %s | %s |", m.Scenario, m.Mode)
		for i := 1; i <= runs; i++ {
			cell := "–"
			for _, r := range rep.Results {
				if r.Scenario == m.Scenario && r.Mode == m.Mode && r.Run == i {
					cell = fmt.Sprintf("%.0f; %.3f", r.Throughput, r.Latency.P50)
				}
			}
			fmt.Fprintf(w, " %s |", cell)
		}
		fmt.Fprintln(w)
	}
}
