package deploy_test

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/server"
)

var update = flag.Bool("update", false, "rewrite generated files (k8s/prometheusrule.yaml) instead of comparing")

const (
	k8sDir             = "k8s"
	prometheusRuleFile = "k8s/prometheusrule.yaml"
)

// decoder rejects unknown fields (strict) and knows the kinds deploy/k8s
// uses: the core, apps and policy APIs, and the Prometheus Operator's.
func decoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, monitoringv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

// objects is every object of the kustomization, decoded strictly from its
// files, and the same built by kustomize.
type objects struct {
	configMap *corev1.ConfigMap
	secret    *corev1.Secret
	deploy    *appsv1.Deployment
	services  []*corev1.Service
	pdb       *policyv1.PodDisruptionBudget
	monitor   *monitoringv1.ServiceMonitor
	rule      *monitoringv1.PrometheusRule
}

func (o *objects) add(t *testing.T, where string, obj runtime.Object) {
	t.Helper()
	switch v := obj.(type) {
	case *corev1.ConfigMap:
		o.configMap = v
	case *corev1.Secret:
		o.secret = v
	case *appsv1.Deployment:
		o.deploy = v
	case *corev1.Service:
		o.services = append(o.services, v)
	case *policyv1.PodDisruptionBudget:
		o.pdb = v
	case *monitoringv1.ServiceMonitor:
		o.monitor = v
	case *monitoringv1.PrometheusRule:
		o.rule = v
	default:
		t.Errorf("%s: unexpected %T", where, obj)
	}
}

func loadManifests(t *testing.T) (files, built *objects) {
	t.Helper()
	dec := decoder(t)
	b, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k types.Kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, built = &objects{}, &objects{}
	for _, r := range k.Resources {
		data, err := os.ReadFile(filepath.Join(k8sDir, r))
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := dec.Decode(data, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		files.add(t, r, obj)
	}
	// Every manifest in the directory is in the kustomization.
	entries, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(k.Resources)+1 {
		t.Errorf("%d YAML files in %s, %d resources in its kustomization: %v", len(entries), k8sDir, len(k.Resources), entries)
	}

	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), k8sDir)
	if err != nil {
		t.Fatalf("kustomize build: %v", err)
	}
	for _, r := range res.Resources() {
		data, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := dec.Decode(data, nil, nil)
		if err != nil {
			t.Fatalf("kustomize build, %s %s: %v", r.GetKind(), r.GetName(), err)
		}
		built.add(t, "kustomize build", obj)
	}
	for _, o := range []*objects{files, built} {
		if o.configMap == nil || o.secret == nil || o.deploy == nil || len(o.services) != 2 || o.pdb == nil || o.monitor == nil || o.rule == nil {
			t.Fatalf("missing objects: %+v", o)
		}
	}
	return files, built
}

// effective is the configuration a pod runs with: the server's defaults,
// then the ConfigMap's and the Secret's variables, read as sessiond reads
// them. Every variable must name a setting.
func effective(t *testing.T, o *objects) config.Config {
	t.Helper()
	env := map[string]string{}
	for k, v := range o.configMap.Data {
		env[k] = v
	}
	for k, v := range o.secret.StringData {
		env[k] = v
	}
	cfg := config.Default()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	asked := map[string]bool{}
	if err := config.Parse(fs, nil, func(k string) string { asked[k] = true; return env[k] }); err != nil {
		t.Fatalf("the ConfigMap and Secret do not parse: %v", err)
	}
	for k := range env {
		if !asked[k] {
			t.Errorf("variable %s names no sessiond setting", k)
		}
	}
	return cfg
}

func port(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return int32(n)
}

// The manifests decode strictly, the kustomization builds, and the probes,
// ports and grace period agree with the server's own settings.
func TestManifests(t *testing.T) {
	files, built := loadManifests(t)
	for name, o := range map[string]*objects{"files": files, "kustomize build": built} {
		t.Run(name, func(t *testing.T) { checkManifests(t, o) })
	}
	if img := built.deploy.Spec.Template.Spec.Containers[0].Image; img == "sessiond" {
		t.Errorf("kustomize did not set the image: %q", img)
	}
}

func checkManifests(t *testing.T, o *objects) {
	cfg := effective(t, o)
	pod := o.deploy.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["grpc"] != port(t, cfg.GRPCAddr) || ports["metrics"] != port(t, cfg.MetricsAddr) {
		t.Errorf("container ports %v; the server listens on %s (gRPC) and %s (ops)", ports, cfg.GRPCAddr, cfg.MetricsAddr)
	}
	httpProbe := func(name string, p *corev1.Probe, path string) {
		t.Helper()
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", name, path)
			return
		}
		if p.HTTPGet.Path != path || ports[p.HTTPGet.Port.String()] != port(t, cfg.MetricsAddr) {
			t.Errorf("%s probe GETs %s on port %s, want %s on the ops port %s", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), path, cfg.MetricsAddr)
		}
	}
	httpProbe("readiness", c.ReadinessProbe, server.ReadyzPath)
	httpProbe("liveness", c.LivenessProbe, server.HealthzPath)
	httpProbe("startup", c.StartupProbe, server.ReadyzPath)
	within := func(p *corev1.Probe) time.Duration {
		return time.Duration(p.PeriodSeconds*p.FailureThreshold) * time.Second
	}
	if c.StartupProbe != nil && within(c.StartupProbe) <= cfg.WarmTimeout {
		t.Errorf("the startup probe gives up after %v, before a warm may end (--warm-timeout %v)", within(c.StartupProbe), cfg.WarmTimeout)
	}
	if c.ReadinessProbe != nil && within(c.ReadinessProbe) > cfg.ShutdownDelay {
		t.Errorf("readiness notices NOT_SERVING within %v, after the %v shutdown delay has ended", within(c.ReadinessProbe), cfg.ShutdownDelay)
	}
	var preStop time.Duration
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Error("no preStop sleep")
	} else {
		preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if need := preStop + cfg.ShutdownDelay + cfg.ShutdownTimeout; grace <= need {
		t.Errorf("terminationGracePeriodSeconds %v, want above preStop %v + --shutdown-delay %v + --shutdown-timeout %v", grace, preStop, cfg.ShutdownDelay, cfg.ShutdownTimeout)
	}
	sc := pod.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Error("the pod may run as root")
	}
	if csc := c.SecurityContext; csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		t.Error("the container may escalate privileges or write its root filesystem")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Error("no CPU or memory request")
	}
	var fromConfigMap, fromSecret bool
	for _, e := range c.EnvFrom {
		fromConfigMap = fromConfigMap || (e.ConfigMapRef != nil && e.ConfigMapRef.Name == o.configMap.Name)
		fromSecret = fromSecret || (e.SecretRef != nil && e.SecretRef.Name == o.secret.Name)
	}
	if !fromConfigMap || !fromSecret {
		t.Error("the container does not read the ConfigMap and the Secret")
	}
	for _, secret := range []string{"DATABASE_URL", "REDIS_URL", "SESSIOND_ADMIN_TOKEN"} {
		if _, ok := o.secret.StringData[secret]; !ok {
			t.Errorf("the Secret lacks %s", secret)
		}
		if _, ok := o.configMap.Data[secret]; ok {
			t.Errorf("%s is in the ConfigMap; it belongs in the Secret", secret)
		}
	}

	podLabels := labels.Set(o.deploy.Spec.Template.Labels)
	selects := func(what string, sel map[string]string) {
		t.Helper()
		if len(sel) == 0 || !labels.SelectorFromSet(sel).Matches(podLabels) {
			t.Errorf("%s selector %v does not select the pods (%v)", what, sel, podLabels)
		}
	}
	sel, err := metav1.LabelSelectorAsSelector(o.deploy.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("the Deployment's selector does not select its pods: %v", err)
	}
	var headless, clusterIP *corev1.Service
	for _, s := range o.services {
		selects("Service "+s.Name, s.Spec.Selector)
		for _, p := range s.Spec.Ports {
			if p.TargetPort.Type != intstr.String || ports[p.TargetPort.StrVal] == 0 {
				t.Errorf("Service %s port %s targets %s, not a named container port", s.Name, p.Name, p.TargetPort.String())
			}
		}
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			headless = s
		} else {
			clusterIP = s
		}
	}
	if headless == nil || clusterIP == nil {
		t.Fatal("want a headless Service (client-side round_robin) and a ClusterIP one")
	}
	pdbSel, err := metav1.LabelSelectorAsSelector(o.pdb.Spec.Selector)
	if err != nil || !pdbSel.Matches(podLabels) {
		t.Errorf("the PodDisruptionBudget does not select the pods: %v", err)
	}
	if replicas := o.deploy.Spec.Replicas; replicas == nil || *replicas < 2 || o.pdb.Spec.MaxUnavailable == nil {
		t.Error("want at least 2 replicas and a PodDisruptionBudget's maxUnavailable")
	}

	// The ServiceMonitor scrapes /metrics of exactly one Service.
	monSel, err := metav1.LabelSelectorAsSelector(&o.monitor.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	var scraped []*corev1.Service
	for _, s := range o.services {
		if monSel.Matches(labels.Set(s.Labels)) {
			scraped = append(scraped, s)
		}
	}
	if len(scraped) != 1 {
		t.Fatalf("the ServiceMonitor selects %d Services, want 1 (or every pod is scraped twice)", len(scraped))
	}
	for _, ep := range o.monitor.Spec.Endpoints {
		found := false
		for _, p := range scraped[0].Spec.Ports {
			found = found || (p.Name == ep.Port && ports[p.TargetPort.StrVal] == port(t, cfg.MetricsAddr))
		}
		if !found || ep.Path != server.MetricsPath {
			t.Errorf("the ServiceMonitor scrapes port %q path %q, want the ops port's %s", ep.Port, ep.Path, server.MetricsPath)
		}
	}
}

// k8s/prometheusrule.yaml is alerts.yml as a PrometheusRule.
func TestPrometheusRule(t *testing.T) {
	f := readRules(t)
	pr := monitoringv1.PrometheusRule{
		TypeMeta:   metav1.TypeMeta{APIVersion: monitoringv1.SchemeGroupVersion.String(), Kind: monitoringv1.PrometheusRuleKind},
		ObjectMeta: metav1.ObjectMeta{Name: "sessiond"},
	}
	for _, g := range f.Groups {
		rg := monitoringv1.RuleGroup{Name: g.Name}
		for _, r := range g.Rules {
			mr := monitoringv1.Rule{Record: r.Record, Alert: r.Alert, Expr: intstr.FromString(r.Expr), Labels: r.Labels, Annotations: r.Annotations}
			if r.For != "" {
				d := monitoringv1.Duration(r.For)
				mr.For = &d
			}
			rg.Rules = append(rg.Rules, mr)
		}
		pr.Spec.Groups = append(pr.Spec.Groups, rg)
	}
	body, err := yaml.Marshal(pr)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(fmt.Sprintf("# Generated from deploy/prometheus/%s by go test ./deploy -run TestPrometheusRule -update.\n# Do not edit: edit alerts.yml.\n", filepath.Base(alertsFile))), body...)
	if *update {
		if err := os.WriteFile(prometheusRuleFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not what %s generates: go test ./deploy -run TestPrometheusRule -update", prometheusRuleFile, alertsFile)
	}
}
