package main

import (
	"bytes"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"
)

// TestLibJSONLogs: with GOBPS_LOG_FORMAT=json every line the C library logs
// is a JSON object with role worker and the configured rank. An init that
// cannot reach its coordinator still logs (the unauthenticated warning)
// before it fails.
func TestLibJSONLogs(t *testing.T) {
	// a port nobody listens on: one just closed
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(ln.Addr().String(), ":")
	ln.Close()
	var logs bytes.Buffer
	l := newLibrary()
	err = l.init(500*time.Millisecond, envLookup(map[string]string{
		"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "1", "DMLC_NUM_SERVER": "1", "DMLC_WORKER_ID": "0",
		"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": port,
		"GOBPS_LOG_FORMAT": "JSON", "BYTEPS_LOG_LEVEL": "debug",
	}), &logs)
	if err == nil {
		t.Fatal("init without a coordinator succeeded")
	}
	lines := strings.Split(strings.TrimRight(logs.String(), "\n"), "\n")
	if logs.Len() == 0 {
		t.Fatal("init logged nothing")
	}
	for _, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not JSON (%v): %q", err, line)
			continue
		}
		if m["role"] != "worker" || m["rank"] != float64(0) {
			t.Errorf("role %v rank %v, want worker 0: %q", m["role"], m["rank"], line)
		}
	}
}
