package roles

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMemoryBudget resolves the server's budget on fake file system roots:
// a configured value wins; otherwise a quarter of the tightest of MemTotal and
// the process's cgroup limit, v2 or v1, where one is set.
func TestMemoryBudget(t *testing.T) {
	const meminfo = "MemTotal:       16384 kB\nMemFree:         1000 kB\n"
	for _, tc := range []struct {
		name       string
		configured int
		files      map[string]string
		want       int64
		from       string
	}{
		{"configured", 12345, map[string]string{"proc/meminfo": meminfo}, 12345, "GOBPS_SERVER_MEMORY_BYTES"},
		{"no cgroup", 0, map[string]string{"proc/meminfo": meminfo}, 4 << 20, "MemTotal"},
		{"v2 limit", 0, map[string]string{
			"proc/meminfo":                       meminfo,
			"proc/self/cgroup":                   "0::/job/a\n",
			"sys/fs/cgroup/job/a/memory.max":     "4194304\n",
			"sys/fs/cgroup/job/a/memory.high":    "1\n",
			"sys/fs/cgroup/unrelated/memory.max": "1\n",
		}, 1 << 20, "/sys/fs/cgroup/job/a/memory.max"},
		{"v2 no limit", 0, map[string]string{
			"proc/meminfo":                   meminfo,
			"proc/self/cgroup":               "0::/job/a\n",
			"sys/fs/cgroup/job/a/memory.max": "max\n",
		}, 4 << 20, "MemTotal"},
		{"v2 in a namespace", 0, map[string]string{
			"proc/meminfo":             meminfo,
			"proc/self/cgroup":         "0::/\n",
			"sys/fs/cgroup/memory.max": "2097152\n",
		}, 512 << 10, "/sys/fs/cgroup/memory.max"},
		{"v1 limit, hybrid", 0, map[string]string{
			"proc/meminfo":     meminfo,
			"proc/self/cgroup": "4:memory:/docker/x\n2:cpu,cpuacct:/docker/x\n0::/\n",
			"sys/fs/cgroup/memory/docker/x/memory.limit_in_bytes": "6291456\n",
		}, 3 << 19, "/sys/fs/cgroup/memory/docker/x/memory.limit_in_bytes"},
		{"v1 unlimited", 0, map[string]string{
			"proc/meminfo":     meminfo,
			"proc/self/cgroup": "4:memory:/x\n",
			"sys/fs/cgroup/memory/x/memory.limit_in_bytes": "9223372036854771712\n",
		}, 4 << 20, "MemTotal"},
		{"limit above the machine", 0, map[string]string{
			"proc/meminfo":               meminfo,
			"proc/self/cgroup":           "0::/a\n",
			"sys/fs/cgroup/a/memory.max": "1073741824\n",
		}, 4 << 20, "MemTotal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, body := range tc.files {
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, why, err := MemoryBudget(tc.configured, root)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || !strings.Contains(why, tc.from) {
				t.Fatalf("budget %d (%s), want %d from %s", got, why, tc.want, tc.from)
			}
			t.Logf("%d bytes: %s", got, why)
		})
	}
	if _, _, err := MemoryBudget(0, t.TempDir()); err == nil || !strings.Contains(err.Error(), "GOBPS_SERVER_MEMORY_BYTES") {
		t.Fatalf("no meminfo: %v", err)
	}
	// This machine: a positive budget, whatever it is.
	got, why, err := MemoryBudget(0, "/")
	if err != nil || got <= 0 {
		t.Fatalf("this machine: %d (%s), %v", got, why, err)
	}
	t.Logf("this machine: %d bytes: %s", got, why)
}
