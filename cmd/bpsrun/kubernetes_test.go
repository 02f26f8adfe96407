package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gobps/gobps/config"
)

// The manifests of docs/kubernetes.md are read with yamlDocs, a parser of
// the block-style YAML subset that Kubernetes manifests are written in:
// mappings, sequences ("- " items, also holding mappings), plain and
// quoted scalars, comments and "---" between documents. It refuses
// anything else (flow collections, anchors, tags, block scalars, tabs)
// with the line, so that a manifest it cannot read fails the test rather
// than being half read. (go.mod has no YAML library of its own.)

type yamlLine struct {
	no     int // 1-based, in the block
	indent int
	text   string // without indentation and comment
}

type yamlParser struct {
	lines []yamlLine
	i     int
}

// yamlDocs parses a yaml block into its documents.
func yamlDocs(src string) ([]any, error) {
	var docs []any
	var cur []yamlLine
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		p := &yamlParser{lines: cur}
		v, err := p.node(cur[0].indent)
		if err != nil {
			return err
		}
		if p.i != len(p.lines) {
			l := p.lines[p.i]
			return fmt.Errorf("line %d: unexpected %q (indentation?)", l.no, l.text)
		}
		docs = append(docs, v)
		cur = nil
		return nil
	}
	for n, raw := range strings.Split(src, "\n") {
		if strings.TrimRight(raw, " ") == "---" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		body := strings.TrimLeft(raw, " ")
		if strings.HasPrefix(body, "\t") {
			return nil, fmt.Errorf("line %d: a tab in the indentation", n+1)
		}
		text := strings.TrimRight(stripYAMLComment(body), " ")
		if text == "" {
			continue
		}
		cur = append(cur, yamlLine{no: n + 1, indent: len(raw) - len(body), text: text})
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return docs, nil
}

// stripYAMLComment cuts a comment: "#" at the start or after a space,
// outside quotes.
func stripYAMLComment(s string) string {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else if c == '\\' && quote == '"' {
				i++
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && (i == 0 || s[i-1] == ' '):
			return s[:i]
		}
	}
	return s
}

func (p *yamlParser) node(indent int) (any, error) {
	l := p.lines[p.i]
	if l.text == "-" || strings.HasPrefix(l.text, "- ") {
		return p.seq(l.indent)
	}
	return p.mapping(indent)
}

func (p *yamlParser) seq(indent int) (any, error) {
	var out []any
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent != indent || !(l.text == "-" || strings.HasPrefix(l.text, "- ")) {
			break
		}
		rest := strings.TrimLeft(strings.TrimPrefix(l.text, "-"), " ")
		if rest == "" {
			p.i++
			if p.i >= len(p.lines) || p.lines[p.i].indent <= indent {
				out = append(out, nil)
				continue
			}
			v, err := p.node(p.lines[p.i].indent)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			continue
		}
		// "- key: value" or "- scalar": the rest is a line of its own,
		// indented past the dash.
		childIndent := l.indent + len(l.text) - len(rest)
		if _, _, isKey, err := yamlKey(rest, l.no); err != nil {
			return nil, err
		} else if !isKey && !strings.HasPrefix(rest, "- ") {
			v, err := yamlScalar(rest, l.no)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			p.i++
			continue
		}
		p.lines[p.i] = yamlLine{no: l.no, indent: childIndent, text: rest}
		v, err := p.node(childIndent)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (p *yamlParser) mapping(indent int) (any, error) {
	out := map[string]any{}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent {
			break
		}
		if l.indent > indent {
			return nil, fmt.Errorf("line %d: %q is indented more than its mapping", l.no, l.text)
		}
		if strings.HasPrefix(l.text, "- ") || l.text == "-" {
			break
		}
		key, val, isKey, err := yamlKey(l.text, l.no)
		if err != nil {
			return nil, err
		}
		if !isKey {
			return nil, fmt.Errorf("line %d: %q is not key: value", l.no, l.text)
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("line %d: key %q twice", l.no, key)
		}
		p.i++
		if val != "" {
			if out[key], err = yamlScalar(val, l.no); err != nil {
				return nil, err
			}
			continue
		}
		if p.i < len(p.lines) {
			next := p.lines[p.i]
			isSeq := next.text == "-" || strings.HasPrefix(next.text, "- ")
			if next.indent > indent || (next.indent == indent && isSeq) {
				if out[key], err = p.node(next.indent); err != nil {
					return nil, err
				}
				continue
			}
		}
		out[key] = nil
	}
	return out, nil
}

// yamlKey splits "key: value" (or "key:"); isKey is false for a line that
// is not a mapping entry.
func yamlKey(s string, no int) (key, val string, isKey bool, err error) {
	if s[0] == '"' || s[0] == '\'' {
		end := strings.IndexByte(s[1:], s[0])
		if end < 0 {
			return "", "", false, fmt.Errorf("line %d: unterminated quote in %q", no, s)
		}
		rest := s[end+2:]
		if rest != ":" && !strings.HasPrefix(rest, ": ") {
			return "", "", false, nil
		}
		return s[1 : end+1], strings.TrimSpace(rest[1:]), true, nil
	}
	if i := strings.Index(s, ": "); i > 0 {
		return s[:i], strings.TrimSpace(s[i+2:]), true, nil
	}
	if strings.HasSuffix(s, ":") && !strings.ContainsAny(s, " ") {
		return s[:len(s)-1], "", true, nil
	}
	return "", "", false, nil
}

// yamlScalar reads a scalar as the string it stands for.
func yamlScalar(s string, no int) (any, error) {
	switch s[0] {
	case '"':
		v, err := strconv.Unquote(s)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %v", no, s, err)
		}
		return v, nil
	case '\'':
		if len(s) < 2 || s[len(s)-1] != '\'' {
			return nil, fmt.Errorf("line %d: unterminated quote in %s", no, s)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	case '[', '{', '&', '*', '!', '|', '>', '%', '@', '`':
		return nil, fmt.Errorf("line %d: %q: flow collections, anchors, tags and block scalars are not read here; write it in block style", no, s)
	}
	return s, nil
}

// The helpers below walk the parsed manifests.

func yget(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func ystr(v any, path ...string) string {
	s, _ := yget(v, path...).(string)
	return s
}

func ylist(v any, path ...string) []any {
	l, _ := yget(v, path...).([]any)
	return l
}

type k8sRole struct {
	set       map[string]any // the StatefulSet
	container any
	env       map[string]any // name: the env entry
	replicas  int
}

func TestKubernetesManifests(t *testing.T) {
	const doc = "../../docs/kubernetes.md"
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?ms)^```yaml\n(.*?)^```\n").FindAllStringSubmatch(string(b), -1)
	if len(blocks) != 3 {
		t.Fatalf("%s has %d yaml blocks, want 3 (coordinator, servers, workers)", doc, len(blocks))
	}
	var objs []any
	for i, m := range blocks {
		docs, err := yamlDocs(m[1])
		if err != nil {
			t.Fatalf("yaml block %d: %v", i+1, err)
		}
		objs = append(objs, docs...)
	}

	services := map[string]any{}
	var sets []map[string]any
	for _, o := range objs {
		kind, name := ystr(o, "kind"), ystr(o, "metadata", "name")
		switch {
		case kind == "Service" && ystr(o, "apiVersion") == "v1":
			services[name] = o
			if ystr(o, "spec", "clusterIP") != "None" {
				t.Errorf("Service %s is not headless (spec.clusterIP: None)", name)
			}
		case kind == "StatefulSet" && ystr(o, "apiVersion") == "apps/v1":
			sets = append(sets, o.(map[string]any))
		default:
			t.Errorf("unexpected object %s %s (%s)", kind, name, ystr(o, "apiVersion"))
		}
	}
	if len(services) != 3 || len(sets) != 3 {
		t.Fatalf("%d Services and %d StatefulSets, want 3 of each", len(services), len(sets))
	}

	roles := map[config.Role]*k8sRole{}
	for _, s := range sets {
		name := ystr(s, "metadata", "name")
		labels, _ := yget(s, "spec", "template", "metadata", "labels").(map[string]any)
		match, _ := yget(s, "spec", "selector", "matchLabels").(map[string]any)
		for k, v := range match {
			if labels[k] != v {
				t.Errorf("StatefulSet %s: selector %s=%v does not match its pods' labels %v", name, k, v, labels)
			}
		}
		svc := services[ystr(s, "spec", "serviceName")]
		if svc == nil {
			t.Errorf("StatefulSet %s: serviceName %q is no Service of the page", name, ystr(s, "spec", "serviceName"))
		} else if sel, _ := yget(svc, "spec", "selector").(map[string]any); len(sel) == 0 {
			t.Errorf("Service %s selects nothing", ystr(svc, "metadata", "name"))
		} else {
			for k, v := range sel {
				if labels[k] != v {
					t.Errorf("Service %s: selector %s=%v does not select StatefulSet %s's pods %v", ystr(svc, "metadata", "name"), k, v, name, labels)
				}
			}
		}
		if p := ystr(s, "spec", "podManagementPolicy"); p != "Parallel" {
			t.Errorf("StatefulSet %s: podManagementPolicy %q, want Parallel (the job needs all its pods at once)", name, p)
		}
		replicas, err := strconv.Atoi(ystr(s, "spec", "replicas"))
		if err != nil || replicas < 1 {
			t.Errorf("StatefulSet %s: replicas %q", name, ystr(s, "spec", "replicas"))
		}
		pod := yget(s, "spec", "template", "spec")
		if yget(pod, "securityContext", "fsGroup") != nil {
			t.Errorf("StatefulSet %s sets fsGroup: the secret file would be group-readable, which gobps refuses", name)
		}
		containers := ylist(pod, "containers")
		if len(containers) != 1 {
			t.Fatalf("StatefulSet %s: %d containers, want 1", name, len(containers))
		}
		c := containers[0]
		env := map[string]any{}
		for _, e := range ylist(c, "env") {
			n := ystr(e, "name")
			if _, dup := env[n]; dup {
				t.Errorf("StatefulSet %s: %s twice in env", name, n)
			}
			if (yget(e, "value") == nil) == (yget(e, "valueFrom") == nil) {
				t.Errorf("StatefulSet %s: env %s needs exactly one of value and valueFrom", name, n)
			}
			env[n] = e
		}
		role := config.Role(ystr(env["DMLC_ROLE"], "value"))
		if roles[role] != nil {
			t.Fatalf("two StatefulSets run DMLC_ROLE=%q", role)
		}
		roles[role] = &k8sRole{set: s, container: c, env: env, replicas: replicas}

		cmd := ylist(c, "command")
		var words []string
		for _, w := range cmd {
			words = append(words, fmt.Sprint(w))
		}
		if !strings.Contains(strings.Join(words, " "), "bpsrun") {
			t.Errorf("StatefulSet %s's command %q does not run bpsrun", name, words)
		}

		// The secret: GOBPS_SECRET_FILE in a read-only mount of a Secret
		// volume of mode 0400; never GOBPS_SECRET itself.
		if _, ok := env["GOBPS_SECRET"]; ok {
			t.Errorf("StatefulSet %s sets GOBPS_SECRET: use GOBPS_SECRET_FILE from a Secret", name)
		}
		path := ystr(env["GOBPS_SECRET_FILE"], "value")
		found := false
		for _, m := range ylist(c, "volumeMounts") {
			mount := ystr(m, "mountPath")
			if path == "" || !strings.HasPrefix(path, strings.TrimSuffix(mount, "/")+"/") {
				continue
			}
			found = true
			if ystr(m, "readOnly") != "true" {
				t.Errorf("StatefulSet %s: the secret's mount %s is not readOnly", name, mount)
			}
			for _, v := range ylist(pod, "volumes") {
				if ystr(v, "name") != ystr(m, "name") {
					continue
				}
				if ystr(v, "secret", "secretName") == "" {
					t.Errorf("StatefulSet %s: volume %s is not a Secret", name, ystr(v, "name"))
				}
				if mode := ystr(v, "secret", "defaultMode"); mode != "0400" && mode != "256" {
					t.Errorf("StatefulSet %s: the Secret is mounted with mode %q, want 0400", name, mode)
				}
			}
		}
		if !found {
			t.Errorf("StatefulSet %s: GOBPS_SECRET_FILE=%q is not in a mounted volume", name, path)
		}
		// Every role advertises its pod IP.
		if f := ystr(env["DMLC_NODE_HOST"], "valueFrom", "fieldRef", "fieldPath"); f != "status.podIP" {
			t.Errorf("StatefulSet %s: DMLC_NODE_HOST from %q, want the downward API's status.podIP", name, f)
		}
	}

	for _, role := range []config.Role{config.Scheduler, config.Server, config.Worker} {
		if roles[role] == nil {
			t.Fatalf("no StatefulSet runs DMLC_ROLE=%s", role)
		}
	}
	for _, v := range config.Variables() {
		if !v.Required {
			continue
		}
		for _, role := range v.Roles {
			if _, ok := roles[role].env[v.Name]; !ok {
				t.Errorf("the %s's container does not set %s, which it requires", role, v.Name)
			}
		}
	}

	// The numbers and the coordinator's address agree everywhere.
	value := func(role config.Role, name string) string { return ystr(roles[role].env[name], "value") }
	for _, name := range []string{"DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DMLC_PS_ROOT_PORT", "BYTEPS_LOCAL_SIZE", "GOBPS_SECRET_FILE"} {
		vals := []string{value(config.Scheduler, name), value(config.Server, name), value(config.Worker, name)}
		if name == "BYTEPS_LOCAL_SIZE" {
			for i := range vals {
				if vals[i] == "" {
					vals[i] = "1"
				}
			}
		}
		if vals[0] != vals[1] || vals[1] != vals[2] {
			t.Errorf("%s differs between coordinator, servers and workers: %q", name, vals)
		}
	}
	if n := roles[config.Scheduler].replicas; n != 1 {
		t.Errorf("%d coordinator replicas, want 1", n)
	}
	if got, want := value(config.Worker, "DMLC_NUM_WORKER"), strconv.Itoa(roles[config.Worker].replicas); got != want {
		t.Errorf("DMLC_NUM_WORKER=%s, but the worker StatefulSet has %s replicas (one worker machine each)", got, want)
	}
	if v := value(config.Worker, "BYTEPS_LOCAL_SIZE"); v != "" && v != "1" {
		t.Errorf("BYTEPS_LOCAL_SIZE=%s: environment mode runs one worker process per pod", v)
	}
	if got, want := value(config.Server, "DMLC_NUM_SERVER"), strconv.Itoa(roles[config.Server].replicas); got != want {
		t.Errorf("DMLC_NUM_SERVER=%s, but the server StatefulSet has %s replicas", got, want)
	}
	coordSvc := ystr(roles[config.Scheduler].set, "spec", "serviceName")
	for _, role := range []config.Role{config.Server, config.Worker} {
		if uri := value(role, "DMLC_PS_ROOT_URI"); uri != coordSvc && !strings.HasPrefix(uri, coordSvc+".") {
			t.Errorf("the %s's DMLC_PS_ROOT_URI is %q, want the coordinator's Service %q", role, uri, coordSvc)
		}
	}
	if f := ystr(roles[config.Scheduler].env["DMLC_PS_ROOT_URI"], "valueFrom", "fieldRef", "fieldPath"); f != "status.podIP" {
		t.Errorf("the coordinator's DMLC_PS_ROOT_URI comes from %q, want status.podIP (the address it listens on)", f)
	}
	port := value(config.Scheduler, "DMLC_PS_ROOT_PORT")
	var svcPorts, containerPorts []string
	for _, p := range ylist(services[coordSvc], "spec", "ports") {
		svcPorts = append(svcPorts, ystr(p, "port"))
	}
	for _, p := range ylist(roles[config.Scheduler].container, "ports") {
		containerPorts = append(containerPorts, ystr(p, "containerPort"))
	}
	if !slices.Contains(svcPorts, port) || !slices.Contains(containerPorts, port) {
		t.Errorf("DMLC_PS_ROOT_PORT=%s is not the coordinator Service's port %v and its container's %v", port, svcPorts, containerPorts)
	}
	if sp := value(config.Server, "GOBPS_SERVER_PORT"); sp != "" {
		var ports []string
		for _, p := range ylist(roles[config.Server].container, "ports") {
			ports = append(ports, ystr(p, "containerPort"))
		}
		if !slices.Contains(ports, sp) {
			t.Errorf("GOBPS_SERVER_PORT=%s is not among the server container's ports %v", sp, ports)
		}
	}

	// Each role's environment, with the downward API's values filled in
	// and the secret file made here, is one config.Parse accepts.
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("kubernetes test secret\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	for role, r := range roles {
		env := map[string]string{}
		for name, e := range r.env {
			switch {
			case name == "GOBPS_SECRET_FILE":
				env[name] = secret
			case yget(e, "valueFrom") != nil:
				env[name] = "10.0.0.7" // status.podIP
			default:
				env[name] = ystr(e, "value")
			}
		}
		if _, err := config.Parse(mapLookup(env)); err != nil {
			t.Errorf("the %s's environment: %v", role, err)
		}
	}
}

func TestYAMLSubset(t *testing.T) {
	docs, err := yamlDocs(`
# a comment
a: 1
b:
  c: "x # not a comment"   # a comment
  d:
    - e
    - f: g
      h: 'it''s'
  i:
  - j
---
k: [x]
`)
	if err == nil {
		t.Fatalf("a flow sequence was accepted: %v", docs)
	}
	docs, err = yamlDocs(`
a: 1
b:
  c: "x # not a comment"   # a comment
  d:
    - e
    - f: g
      h: 'it''s'
    -
      - nested
  i:
  - j
---
k: v
`)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint([]any{
		map[string]any{"a": "1", "b": map[string]any{"c": "x # not a comment",
			"d": []any{"e", map[string]any{"f": "g", "h": "it's"}, []any{"nested"}}, "i": []any{"j"}}},
		map[string]any{"k": "v"},
	})
	if got := fmt.Sprint(docs); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for _, bad := range []string{"a: 1\n  b: 2\n", "a: 1\na: 2\n", "a:\n\t- b\n", "a: &x 1\n", "a: |\n  text\n", "- a\nb: c\n"} {
		if docs, err := yamlDocs(bad); err == nil {
			t.Errorf("yamlDocs(%q) = %v, want an error", bad, docs)
		}
	}
}
