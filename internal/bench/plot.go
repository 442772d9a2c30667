package bench

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// PlotLine is one run's per-second series, named for the legend.
type PlotLine struct {
	Name   string
	Series []Second
}

// WritePlot draws two panels into a PNG at path: hit rate (%) per second
// above, p99 latency (ms) per second below, one line per PlotLine.
func WritePlot(path string, lines []PlotLine) error {
	hit := plot.New()
	hit.Title.Text = "hit rate per second (local + redis, % of OK answers)"
	hit.X.Label.Text = "seconds"
	hit.Y.Label.Text = "%"
	hit.Y.Min, hit.Y.Max = 0, 100
	p99 := plot.New()
	p99.Title.Text = "p99 latency per second"
	p99.X.Label.Text = "seconds"
	p99.Y.Label.Text = "ms"
	for i, l := range lines {
		hx, px := make(plotter.XYs, len(l.Series)), make(plotter.XYs, len(l.Series))
		for j, s := range l.Series {
			hx[j] = plotter.XY{X: float64(s.T), Y: s.HitRate}
			px[j] = plotter.XY{X: float64(s.T), Y: s.P99}
		}
		c := plotutil.Color(i)
		for _, p := range []struct {
			pl  *plot.Plot
			xys plotter.XYs
		}{{hit, hx}, {p99, px}} {
			ln, err := plotter.NewLine(p.xys)
			if err != nil {
				return fmt.Errorf("plot %s: %w", l.Name, err)
			}
			ln.Color = c
			ln.Width = vg.Points(1.5)
			ln.Dashes = plotutil.Dashes(i)
			p.pl.Add(ln)
			p.pl.Legend.Add(l.Name, ln)
		}
	}
	hit.Legend.Left = true // bottom left: hit rates sit near the top
	p99.Legend.Top = true
	hit.Add(plotter.NewGrid())
	p99.Add(plotter.NewGrid())

	img := vgimg.NewWith(vgimg.UseWH(vg.Points(900), vg.Points(700)), vgimg.UseBackgroundColor(color.White))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter * 3, PadY: vg.Millimeter * 3, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	plots := [][]*plot.Plot{{hit}, {p99}}
	canvases := plot.Align(plots, tiles, dc)
	hit.Draw(canvases[0][0])
	p99.Draw(canvases[1][0])

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
