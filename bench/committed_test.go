package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestCommittedReportsRender: the committed runs' report.md and plots are what this
// code renders from their report.json, so the README's tables and the files beside
// them cannot drift apart from the data (re-render them when the rendering changes).
func TestCommittedReportsRender(t *testing.T) {
	reports, err := filepath.Glob("results/*/report.json")
	var dirs []string
	for _, js := range reports {
		// make bench writes results/latest, and tests results/tmp: neither is committed
		// (.gitignore).
		if d := filepath.Dir(js); d != "results/latest" && d != "results/tmp" {
			dirs = append(dirs, d)
		}
	}
	if err != nil || len(dirs) < 6 {
		t.Fatalf("committed reports in %v (%v): want full, quick, admission, quick-family23, full-family23 and forwarding-family23 at least", dirs, err)
	}
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, "report.json"))
		if err != nil {
			t.Fatal(err)
		}
		var rep Report
		if err := json.Unmarshal(raw, &rep); err != nil {
			t.Fatalf("%s/report.json: %v", dir, err)
		}
		files := rep.Plots()
		files["report.md"] = rep.WriteMarkdown
		for _, name := range PlotNames {
			_, err := os.Stat(filepath.Join(dir, name))
			if _, plotted := files[name]; plotted != (err == nil) {
				t.Errorf("%s/%s: in the directory %v, a plot of the report %v (./bin/moat bench render bench/%s)", dir, name, err == nil, plotted, dir)
			}
		}
		for name, render := range files {
			var got bytes.Buffer
			if err := render(&got); err != nil {
				t.Fatalf("%s/%s: %v", dir, name, err)
			}
			want, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("%s/%s differs from what its report.json renders to (./bin/moat bench render bench/%s)", dir, name, dir)
			}
		}
	}
}
