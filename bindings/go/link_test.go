package maze

import (
	"os"
	"strings"
	"testing"
)

// The default build links libmaze.a; -tags maze_dynamic (or maze_pkgconfig) links libmaze.so.
func TestLinkage(t *testing.T) {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skip("no /proc/self/maps on this system")
	}
	dynamic := strings.Contains(string(maps), "libmaze.so")
	if dynamic != linkedDynamically {
		t.Errorf("libmaze.so mapped: %v, build expects dynamic linking: %v", dynamic, linkedDynamically)
	}
	if Version() == "" {
		t.Error("no version")
	}
}
