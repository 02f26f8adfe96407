package lint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// The folders of the module, top to bottom, and which folders each may
// import (non-test imports). The import graph of folders reads top to
// bottom with no arrow running back up: the programs (cmd, cgo, the test
// programs and examples), the metrics endpoint every program serves
// (metrics: it reads the engine, the server and the coordinator), the
// worker engine (core), the server
// (summation), the contracts every role shares (cluster, config, rdma,
// scheduler), and the leaves (gpu, proto). internal holds helpers below
// them all.
var allowedFolders = map[string][]string{
	"cmd":       {"cmd", "metrics", "core", "summation", "cluster", "config", "rdma", "scheduler", "gpu", "proto", "internal"},
	"cgo":       {"metrics", "core", "config", "rdma", "gpu", "proto", "internal"},
	"e2e":       {"e2e", "metrics", "core", "config", "summation", "gpu", "proto", "internal"},
	"examples":  {"examples", "metrics", "core", "config", "gpu", "proto"},
	"scripts":   {},
	"metrics":   {"metrics", "core", "summation", "cluster", "config", "rdma", "proto"},
	"core":      {"core", "summation", "cluster", "config", "rdma", "scheduler", "gpu", "proto", "internal"},
	"summation": {"summation", "rdma", "proto", "internal"},
	"cluster":   {"cluster", "proto", "internal"},
	"config":    {"config", "proto", "internal"},
	"rdma":      {"rdma", "proto", "internal"},
	"scheduler": {"scheduler", "proto"},
	"gpu":       {"gpu", "proto"},
	"proto":     {},
	"internal":  {"internal", "proto"},
}

// fakes stand in for hardware or the network in tests. Production code
// never imports them: tests and test programs inject them through options.
var fakes = []string{"gpu/fake", "rdma/memnet"}

// testPrograms are the non-test packages that exist for tests: they may
// import fakes.
var testPrograms = []string{"e2e/testjob"}

func folderOf(rel string) string {
	f, _, _ := strings.Cut(rel, "/")
	return f
}

// TestLayers checks the folder graph against allowedFolders, and that no
// production package imports a fake.
func TestLayers(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not on PATH: %v", err)
	}
	pkgs := listPackages(t, goBin, moduleRoot(t), []string{"CGO_ENABLED=1"})
	folders := map[string]bool{}
	for _, p := range pkgs {
		rel, ok := strings.CutPrefix(p.ImportPath, modulePath+"/")
		if !ok {
			continue
		}
		from := folderOf(rel)
		folders[from] = true
		allowed, known := allowedFolders[from]
		if !known {
			t.Errorf("%s is in folder %s/, which the layering does not list: add it to allowedFolders", p.ImportPath, from)
			continue
		}
		for _, imp := range p.Imports {
			irel, ok := strings.CutPrefix(imp, modulePath+"/")
			if !ok {
				continue
			}
			if to := folderOf(irel); !slices.Contains(allowed, to) {
				t.Errorf("%s imports %s: %s/ may import only %v", p.ImportPath, imp, from, allowed)
			}
			for _, f := range fakes {
				if (irel == f || strings.HasPrefix(irel, f+"/")) && !under(rel, f) && !slices.Contains(testPrograms, rel) {
					t.Errorf("%s imports the fake %s: production code must not; inject it through options in tests", p.ImportPath, imp)
				}
			}
		}
	}
	for _, want := range []string{"cmd", "core", "summation", "rdma", "proto"} {
		if !folders[want] {
			t.Fatalf("go list reported no package in %s/", want)
		}
	}
}

// TestLifecycleIsPure: the partition lifecycle imports nothing that does
// I/O, waits, locks or reads the clock: only proto, scheduler and these
// standard packages.
func TestLifecycleIsPure(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not on PATH: %v", err)
	}
	allowed := []string{"cmp", "errors", "fmt", "maps", "slices", modulePath + "/proto", modulePath + "/scheduler"}
	found := false
	for _, p := range listPackages(t, goBin, moduleRoot(t), nil) {
		if p.ImportPath != modulePath+"/core/lifecycle" {
			continue
		}
		found = true
		for _, imp := range p.Imports {
			if !slices.Contains(allowed, imp) {
				t.Errorf("core/lifecycle imports %s: it must stay a pure state machine (allowed: %v)", imp, allowed)
			}
		}
	}
	if !found {
		t.Fatal("go list did not report core/lifecycle")
	}
}

// ioPackages are the standard packages whose functions do I/O or wait.
var ioPackages = []string{"os", "os/exec", "net", "syscall", "io", "bufio"}

// ioTypes are the gobps packages whose methods (on any of their types or
// interfaces) do I/O or wait: connections and transports, the local
// group's sockets and shared memory, the coordinator connection, devices.
var ioTypes = []string{"rdma", "core/local", "cluster", "gpu", "gpu/cuda", "gpu/fake"}

// unlockedOnly are engine functions that take the engine's lock themselves
// or carry out effects: calling them under it deadlocks or does I/O there.
var unlockedOnly = []string{"run", "report", "spawn", "failServer", "failAll", "flush", "waitCtx", "close", "enqueue"}

// TestNoIOUnderEngineLock type-checks package core and looks at what runs
// under Engine.mu: the bodies of functions named ...Locked, and the
// statements between X.mu.Lock() and X.mu.Unlock() (or the end of the
// block, after a deferred Unlock). No call there may reach a standard
// package that does I/O (ioPackages), time.Sleep, a method of the gobps
// types that do I/O (ioTypes), or an engine function that must run
// unlocked; and no channel send or receive may wait (outside a select
// with a default case). It sees only direct calls, not what a callee calls in turn:
// as far as a test can check it.
func TestNoIOUnderEngineLock(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go command not on PATH: %v", err)
	}
	root := moduleRoot(t)
	dir := filepath.Join(root, "core")
	fset := token.NewFileSet()
	files, err := parseDir(fset, dir)
	if err != nil {
		t.Fatal(err)
	}
	exports := exportData(t, goBin, root, modulePath+"/core")
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})
	info := &types.Info{Uses: map[*ast.Ident]types.Object{}, Selections: map[*ast.SelectorExpr]*types.Selection{},
		Types: map[ast.Expr]types.TypeAndValue{}, Defs: map[*ast.Ident]types.Object{}}
	conf := types.Config{Importer: imp, FakeImportC: true, Error: func(error) {}}
	if _, err := conf.Check(modulePath+"/core", fset, files, info); err != nil {
		t.Fatalf("type-check core: %v", err)
	}
	var regions int
	var problems []string
	var check func(fn string, stmts []ast.Stmt)
	check = func(fn string, stmts []ast.Stmt) {
		regions++
		for _, s := range stmts {
			ast.Inspect(s, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.FuncLit:
					return false // runs later, not under the lock
				case *ast.SelectStmt:
					// A send or receive in a select with a default case
					// does not wait; look only at the bodies.
					if hasDefault(n) {
						for _, cc := range n.Body.List {
							for _, st := range cc.(*ast.CommClause).Body {
								check(fn, []ast.Stmt{st})
							}
						}
						regions--
						return false
					}
				case *ast.SendStmt:
					problems = append(problems, fmt.Sprintf("%s: in %s, under Engine.mu: a channel send that may block (use a select with a default)", fset.Position(n.Pos()), fn))
				case *ast.UnaryExpr:
					if n.Op == token.ARROW {
						problems = append(problems, fmt.Sprintf("%s: in %s, under Engine.mu: a channel receive that may block", fset.Position(n.Pos()), fn))
					}
				}
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				if why := forbiddenCall(call, info); why != "" {
					problems = append(problems, fmt.Sprintf("%s: in %s, under Engine.mu: %s", fset.Position(call.Pos()), fn, why))
				}
				return true
			})
		}
	}
	for _, f := range files {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			name := fd.Name.Name
			if strings.HasSuffix(name, "Locked") && isEngineMethod(fd, info) {
				check(name, fd.Body.List)
			}
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				var list []ast.Stmt
				switch n := n.(type) {
				case *ast.BlockStmt:
					list = n.List
				case *ast.CaseClause:
					list = n.Body
				case *ast.CommClause:
					list = n.Body
				}
				for _, r := range lockedRegions(list, info) {
					check(name, r)
				}
				return true
			})
		}
	}
	if regions < 10 {
		t.Fatalf("found only %d regions under the lock: the check is not seeing the engine", regions)
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
}

// hasDefault reports whether a select has a default case.
func hasDefault(s *ast.SelectStmt) bool {
	for _, cc := range s.Body.List {
		if cc.(*ast.CommClause).Comm == nil {
			return true
		}
	}
	return false
}

// parseDir parses the non-test Go files of one package directory.
func parseDir(fset *token.FileSet, dir string) ([]*ast.File, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	var files []*ast.File
	for _, n := range names {
		if strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, n, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// exportData builds pkg's dependencies and returns their export data
// files by import path (go list -export).
func exportData(t *testing.T, goBin, root, pkg string) map[string]string {
	t.Helper()
	cmd := exec.Command(goBin, "list", "-e", "-export", "-deps", "-json=ImportPath,Export", pkg)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -export: %v\n%s", err, stderr.Bytes())
	}
	m := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct{ ImportPath, Export string }
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Export != "" {
			m[p.ImportPath] = p.Export
		}
	}
	return m
}

// isEngine reports whether t is *Engine of package core.
func isEngine(t types.Type) bool {
	p, ok := t.(*types.Pointer)
	if !ok {
		return false
	}
	n, ok := p.Elem().(*types.Named)
	return ok && n.Obj().Name() == "Engine" && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == modulePath+"/core"
}

// isEngineMethod reports whether fd is a method of *Engine.
func isEngineMethod(fd *ast.FuncDecl, info *types.Info) bool {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return false
	}
	return isEngine(info.TypeOf(fd.Recv.List[0].Type))
}

// isMuCall reports whether s is the statement X.mu.<method>() (Lock or
// Unlock) on an *Engine X, possibly deferred.
func isMuCall(s ast.Stmt, method string, info *types.Info) (deferred, ok bool) {
	var call *ast.CallExpr
	switch s := s.(type) {
	case *ast.ExprStmt:
		call, _ = s.X.(*ast.CallExpr)
	case *ast.DeferStmt:
		call, deferred = s.Call, true
	}
	if call == nil || len(call.Args) != 0 {
		return false, false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != method {
		return false, false
	}
	inner, ok := sel.X.(*ast.SelectorExpr)
	return deferred, ok && inner.Sel.Name == "mu" && isEngine(info.TypeOf(inner.X))
}

// lockedRegions returns the runs of statements of one block that execute
// under X.mu: from a Lock to the matching Unlock, or to the end of the
// block when the Unlock is deferred.
func lockedRegions(stmts []ast.Stmt, info *types.Info) [][]ast.Stmt {
	var out [][]ast.Stmt
	for i := 0; i < len(stmts); i++ {
		if d, ok := isMuCall(stmts[i], "Lock", info); !ok || d {
			continue
		}
		j := i + 1
		for ; j < len(stmts); j++ {
			if d, ok := isMuCall(stmts[j], "Unlock", info); ok && !d {
				break
			}
		}
		out = append(out, stmts[i+1:j])
		i = j
	}
	return out
}

// forbiddenCall says why call may not run under the engine's lock, or "".
func forbiddenCall(call *ast.CallExpr, info *types.Info) string {
	var obj types.Object
	switch fun := call.Fun.(type) {
	case *ast.Ident:
		obj = info.Uses[fun]
	case *ast.SelectorExpr:
		if sel := info.Selections[fun]; sel != nil {
			obj = sel.Obj()
		} else {
			obj = info.Uses[fun.Sel]
		}
	}
	fn, ok := obj.(*types.Func)
	if !ok || fn.Pkg() == nil {
		return ""
	}
	path := fn.Pkg().Path()
	rel, inModule := strings.CutPrefix(path, modulePath+"/")
	sig := fn.Type().(*types.Signature)
	switch {
	case slices.Contains(ioPackages, path):
		return fmt.Sprintf("calls %s.%s, which does I/O", path, fn.Name())
	case path == "time" && fn.Name() == "Sleep":
		return "sleeps"
	case inModule && slices.Contains(ioTypes, rel) && sig.Recv() != nil:
		return fmt.Sprintf("calls %s, a method of %s, which does I/O", fn.FullName(), rel)
	case inModule && rel == "core" && slices.Contains(unlockedOnly, fn.Name()):
		return fmt.Sprintf("calls %s, which must run without the lock", fn.FullName())
	}
	return ""
}
