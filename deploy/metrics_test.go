// Package deploy_test checks what deploy/ and the Dockerfile hold against the
// server they deploy: the alert rules (promtool), the dashboard's queries, the
// Kubernetes manifests (strictly decoded), and the static binary the image
// ships.
package deploy_test

import (
	"log/slog"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/sessiond/sessiond/internal/server/servertest"
)

// exported returns the series names a sessiond's /metrics can hold: every
// family its registry gathers (a server built on unreachable backends
// registers them all), with a histogram's _bucket, _sum and _count and a
// summary's _sum and _count.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	srv, stop := servertest.Offline(t, slog.New(slog.DiscardHandler))
	mfs, err := srv.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	stop()
	names := map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		names[n] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	for _, want := range []string{"sessiond_validations_total", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket"} {
		if !names[want] {
			t.Fatalf("the registry lacks %s: %v", want, sorted(names))
		}
	}
	return names
}

// grafanaVars stand in for Grafana's built-in variables, so that a
// dashboard query parses as PromQL.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// metricNames parses expr as PromQL and returns the metric names it selects.
func metricNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		names = append(names, name)
		return nil
	})
	return names, nil
}

func sorted(m map[string]bool) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}
