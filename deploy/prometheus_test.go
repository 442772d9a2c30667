package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/sessiond/sessiond/internal/devstack/devtest"
)

const (
	alertsFile     = "prometheus/alerts.yml"
	alertsTestFile = "prometheus/alerts_test.yml"
	dashboardFile  = "grafana/sessiond.json"
)

// ruleFile is a Prometheus rule file, as far as these tests read it.
type ruleFile struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name  string `json:"name"`
	Rules []rule `json:"rules"`
}

type rule struct {
	Record      string            `json:"record,omitempty"`
	Alert       string            `json:"alert,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	return f
}

// The rules are valid, their unit tests pass, and they name only metrics
// sessiond exports (or their own recorded series, or Prometheus's up).
func TestAlertRules(t *testing.T) {
	t.Logf("promtool check rules:\n%s", devtest.Promtool(t, nil, "check", "rules", alertsFile))
	t.Logf("promtool test rules:\n%s", devtest.Promtool(t, nil, "test", "rules", alertsTestFile))

	known := exported(t)
	known["up"] = true
	f := readRules(t)
	alerts := 0
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				known[r.Record] = true
			}
		}
	}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				alerts++
				if s := r.Labels["severity"]; s != "warning" && s != "critical" {
					t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, s)
				}
			}
			names, err := metricNames(r.Expr)
			if err != nil {
				t.Errorf("rule %s%s: %v", r.Record, r.Alert, err)
			}
			for _, n := range names {
				if !known[n] {
					t.Errorf("rule %s%s names %s, which sessiond does not export", r.Record, r.Alert, n)
				}
			}
		}
	}
	// Every alert is exercised by the unit tests.
	tests, err := os.ReadFile(alertsTestFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !strings.Contains(string(tests), "alertname: "+r.Alert+"\n") {
				t.Errorf("alert %s has no unit test in %s", r.Alert, alertsTestFile)
			}
		}
	}
	if alerts < 10 {
		t.Errorf("%d alerts, want the guide's thresholds and more", alerts)
	}
}

// dashboard is a Grafana dashboard, as far as this test reads it.
type dashboard struct {
	Panels []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

var labelValues = regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)

// Every query of the dashboard parses as PromQL and names only metrics
// sessiond exports.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	known := exported(t)
	check := func(where, expr string) {
		names, err := metricNames(expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", where, expr, err)
			return
		}
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", where, expr)
		}
		for _, n := range names {
			if !known[n] {
				t.Errorf("%s: %q names %s, which sessiond does not export", where, expr, n)
			}
		}
	}
	queries := 0
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			check("panel "+p.Title, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if m := labelValues.FindStringSubmatch(v.Definition); m != nil {
			check("variable "+v.Name, m[1])
		}
	}
	if queries < 20 {
		t.Errorf("%d queries, want a dashboard of every metric group", queries)
	}
	t.Logf("%d queries checked", queries)
}
