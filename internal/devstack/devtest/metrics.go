package devtest

import dto "github.com/prometheus/client_model/go"

// MetricValue is the value of the series of name, among mfs, whose labels
// include the label pairs kv ("k1", "v1", ...): a counter's or gauge's value,
// a histogram's sample count. It is -1 when there is no such series.
func MetricValue(mfs map[string]*dto.MetricFamily, name string, kv ...string) float64 {
	mf := mfs[name]
	if mf == nil {
		return -1
	}
series:
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if got[kv[i]] != kv[i+1] {
				continue series
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}
