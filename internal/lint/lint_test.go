package lint

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// modulePath is the module whose packages the rules below talk about.
const modulePath = "github.com/gobps/gobps"

// cgoAllowed lists the packages (module-relative, e.g. "rdma/verbs") allowed
// to `import "C"`: the C shared library, the verbs shims (rdma/ibv) and the
// CUDA driver shims (gpu/cuda). The shims dlopen their libraries; nothing
// else should need cgo.
var cgoAllowed = map[string]bool{"cgo": true, "rdma/ibv": true, "gpu/cuda": true}

// pkgInfo is the part of `go list -json` output the rules look at.
type pkgInfo struct {
	ImportPath string
	Imports    []string // non-test imports only
	CgoFiles   []string
	Error      *struct{ Err string }
}

// rule forbids some imports for some packages. Packages and in-module imports
// are given module-relative ("proto"; "" is the module root); imports
// from outside the module are given as full import paths.
type rule struct {
	desc    string
	applies func(pkg string) bool
	// forbids reports whether pkg may not import imp. inModule says whether
	// imp is a gobps package (and then imp is module-relative).
	forbids func(pkg, imp string, inModule bool) bool
}

// under reports whether rel is dir or a package below it.
func under(rel, dir string) bool {
	return rel == dir || strings.HasPrefix(rel, dir+"/")
}

// is returns a predicate matching exactly the given packages.
func is(pkgs ...string) func(string) bool {
	return func(pkg string) bool { return slices.Contains(pkgs, pkg) }
}

// isStd reports whether an import path belongs to the standard library: its
// first path element has no dot.
func isStd(imp string) bool {
	first, _, _ := strings.Cut(imp, "/")
	return !strings.Contains(first, ".")
}

// onlyProtoAndOwn returns a rule body that lets the packages under dir import,
// from gobps, only proto and packages under dir itself.
func onlyProtoAndOwn(dir string) func(pkg, imp string, inModule bool) bool {
	return func(pkg, imp string, inModule bool) bool {
		return inModule && imp != "proto" && !under(imp, dir)
	}
}

var rules = []rule{
	{
		desc:    "proto is the leaf: it imports only the standard library",
		applies: is("proto"),
		forbids: func(pkg, imp string, inModule bool) bool { return inModule || !isStd(imp) },
	},
	{
		desc:    "summation/kernel imports from gobps only proto (and its own subpackages)",
		applies: func(pkg string) bool { return under(pkg, "summation/kernel") },
		forbids: onlyProtoAndOwn("summation/kernel"),
	},
	{
		desc:    "scheduler imports from gobps only proto (and its own subpackages)",
		applies: func(pkg string) bool { return under(pkg, "scheduler") },
		forbids: onlyProtoAndOwn("scheduler"),
	},
	{
		desc:    "rdma and rdma/... import from gobps only proto, rdma/... and internal/... (the shared accept loop)",
		applies: func(pkg string) bool { return under(pkg, "rdma") },
		forbids: func(pkg, imp string, inModule bool) bool {
			return onlyProtoAndOwn("rdma")(pkg, imp, inModule) && !under(imp, "internal")
		},
	},
	{
		desc:    "the contract (rdma) imports none of its implementations: they register with it",
		applies: is("rdma"),
		forbids: func(pkg, imp string, inModule bool) bool {
			return inModule && (under(imp, "rdma/tcp") || under(imp, "rdma/verbs"))
		},
	},
	{
		desc:    "cmd/internal/ring (the all-reduce baseline) imports from gobps only proto and rdma",
		applies: is("cmd/internal/ring"),
		forbids: func(pkg, imp string, inModule bool) bool {
			return inModule && imp != "proto" && !under(imp, "rdma")
		},
	},
	{
		desc:    "core/local imports from gobps only proto, summation/kernel and internal/auth",
		applies: func(pkg string) bool { return under(pkg, "core/local") },
		forbids: func(pkg, imp string, inModule bool) bool {
			return inModule && imp != "proto" && imp != "summation/kernel" && imp != "internal/auth" && !under(imp, "core/local")
		},
	},
	{
		desc:    "gpu and gpu/... import from gobps only proto (and gpu/...)",
		applies: func(pkg string) bool { return under(pkg, "gpu") },
		forbids: onlyProtoAndOwn("gpu"),
	},
	{
		desc:    "config imports from gobps only proto and internal/auth (and its own subpackages)",
		applies: func(pkg string) bool { return under(pkg, "config") },
		forbids: func(pkg, imp string, inModule bool) bool {
			return onlyProtoAndOwn("config")(pkg, imp, inModule) && imp != "internal/auth"
		},
	},
	{
		desc:    "cluster imports from gobps only proto, internal/accept and internal/auth (and its own subpackages)",
		applies: func(pkg string) bool { return under(pkg, "cluster") },
		forbids: func(pkg, imp string, inModule bool) bool {
			return onlyProtoAndOwn("cluster")(pkg, imp, inModule) && imp != "internal/accept" && imp != "internal/auth"
		},
	},
	{
		desc:    "internal/accept imports nothing of gobps",
		applies: is("internal/accept"),
		forbids: func(pkg, imp string, inModule bool) bool { return inModule },
	},
	{
		desc:    "internal/auth imports nothing of gobps",
		applies: is("internal/auth"),
		forbids: func(pkg, imp string, inModule bool) bool { return inModule },
	},
	{
		desc:    "summation (the server) is handed its transport and config: it must not import core, cluster, config or cmd/...",
		applies: is("summation"),
		forbids: func(pkg, imp string, inModule bool) bool {
			return inModule && (imp == "core" || under(imp, "cluster") ||
				under(imp, "config") || under(imp, "cmd"))
		},
	},
	{
		desc:    "core (the worker engine) must not import summation (the server; summation/kernel is fine) or cmd/...",
		applies: is("core"),
		forbids: func(pkg, imp string, inModule bool) bool {
			return inModule && (imp == "summation" || under(imp, "cmd"))
		},
	},
	{
		desc:    "only cmd/... imports packages under cmd/",
		applies: func(pkg string) bool { return !under(pkg, "cmd") },
		forbids: func(pkg, imp string, inModule bool) bool {
			return inModule && under(imp, "cmd")
		},
	},
}

// moduleRoot walks up from the working directory to the directory holding
// go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod found above the working directory")
		}
		dir = parent
	}
}

// listPackages runs `go list -e -json ./...` in the module root, with the
// environment variables env (and any more arguments to go list).
func listPackages(t *testing.T, goBin, root string, env []string, args ...string) []pkgInfo {
	t.Helper()
	cmd := exec.Command(goBin, append(append([]string{"list", "-e", "-json"}, args...), "./...")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	var pkgs []pkgInfo
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkgInfo
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestForbiddenImports enforces the import direction of DESIGN.md §5 on every
// package's non-test imports, and allows `import "C"` only in cgoAllowed.
func TestForbiddenImports(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not on PATH: %v", err)
	}
	// With CGO_ENABLED=0 (the default where no C compiler is found), files
	// that import "C" are left out of CgoFiles; force it on so the cgo rule
	// sees them.
	pkgs := listPackages(t, goBin, moduleRoot(t), []string{"CGO_ENABLED=1"})

	// Guard against passing vacuously, e.g. because go list ran somewhere
	// else or the module was renamed.
	seen := map[string]bool{}
	for _, p := range pkgs {
		seen[p.ImportPath] = true
	}
	for _, want := range []string{"proto", "core", "summation"} {
		if !seen[modulePath+"/"+want] {
			t.Fatalf("go list did not report %s/%s; found %d packages", modulePath, want, len(pkgs))
		}
	}

	rel := func(path string) (string, bool) {
		if path == modulePath {
			return "", true
		}
		r, ok := strings.CutPrefix(path, modulePath+"/")
		return r, ok
	}

	for _, p := range pkgs {
		if p.Error != nil {
			t.Errorf("%s: go list: %s", p.ImportPath, p.Error.Err)
		}
		pkg, ok := rel(p.ImportPath)
		if !ok {
			continue
		}
		if (len(p.CgoFiles) > 0 || slices.Contains(p.Imports, "C")) && !cgoAllowed[pkg] {
			t.Errorf("%s uses cgo (%s) but is not in cgoAllowed", p.ImportPath, strings.Join(p.CgoFiles, ", "))
		}
		for _, r := range rules {
			if !r.applies(pkg) {
				continue
			}
			for _, imp := range p.Imports {
				if imp == "C" {
					continue // the cgo rule above covers it
				}
				relImp, inModule := rel(imp)
				if !inModule {
					relImp = imp
				}
				if r.forbids(pkg, relImp, inModule) {
					t.Errorf("%s imports %s: forbidden (%s)", p.ImportPath, imp, r.desc)
				}
			}
		}
	}
}

// TestEveryBuildHasItsFiles lists every package, with its dependencies,
// for the builds other than the development machine's: without cgo (the
// default when cross-compiling, or with no C compiler), on arm64, and with
// the noasm tag. A package that some build leaves without files (gpu/nvml
// was cgo-only, which broke every CGO_ENABLED=0 build of the commands) or
// an import that does not resolve fails it. It does not compile them:
// `make test-noasm` does that for noasm.
func TestEveryBuildHasItsFiles(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not on PATH: %v", err)
	}
	root := moduleRoot(t)
	for _, b := range []struct {
		env  []string
		args []string
	}{
		{env: []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}},
		{env: []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64"}},
		{env: []string{"CGO_ENABLED=1", "GOOS=linux", "GOARCH=amd64"}, args: []string{"-tags", "noasm"}},
	} {
		for _, p := range listPackages(t, goBin, root, b.env, append(b.args, "-deps")...) {
			if p.Error != nil {
				t.Errorf("%s %s: %s: %s", strings.Join(b.env, " "), strings.Join(b.args, " "), p.ImportPath, p.Error.Err)
			}
		}
	}
}
