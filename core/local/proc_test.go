package local

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobps/gobps/proto"
)

// checkOwners checks that the children of one group saw no error and that
// every key has exactly one owner, with every rank owning some.
func checkOwners(t *testing.T, res []childResult, keys []keySpec) map[proto.Key]int {
	t.Helper()
	owner := make(map[proto.Key]int)
	for r, cr := range res {
		if cr.Err != "" {
			t.Errorf("local rank %d: %s", r, cr.Err)
		}
		if len(cr.Owned) == 0 && len(keys) >= len(res) {
			t.Errorf("local rank %d owns no key of %d", r, len(keys))
		}
		for _, k := range cr.Owned {
			if o, dup := owner[k]; dup {
				t.Errorf("key %s owned by local ranks %d and %d", k, o, r)
			}
			owner[k] = r
		}
	}
	for _, k := range keys {
		if _, ok := owner[k.Key]; !ok {
			t.Errorf("key %s has no owner", k.Key)
		}
	}
	return owner
}

// TestProcesses runs groups of 2 and 4 processes over keys of every dtype
// and several sizes for several rounds: each owner multiplies the local sum
// by 3 (standing for 3 identical machines) and publishes, and every rank
// checks the local sum (owner) and the result (all) exactly.
func TestProcesses(t *testing.T) {
	for _, size := range []int{2, 4} {
		t.Run(fmt.Sprintf("size%d", size), func(t *testing.T) {
			dir := t.TempDir()
			sp := childSpec{Dir: dir, Group: "procs", Size: size, Machines: 1, Keys: mixedKeys, Rounds: 4, Factor: 3, Victim: -1}
			start := time.Now()
			res := runGroup(t, sp)
			checkOwners(t, res, mixedKeys)
			t.Logf("%d processes × %d keys × %d rounds in %v", size, len(mixedKeys), sp.Rounds, time.Since(start).Round(time.Millisecond))
			if left := groupFiles(t, dir, sp.Group); len(left) > 0 {
				t.Errorf("files left in %s: %v", dir, left)
			}
		})
	}
}

// TestTwoMachines emulates 2 machines as 2 groups of 2 processes in the same
// directory, with a fake server that sums one push per machine: the server
// must receive exactly one push per machine per key and round, from that
// key's owner, and every process must get the exact sum over all 4.
func TestTwoMachines(t *testing.T) {
	const machines, size, rounds = 2, 2, 4
	dir := t.TempDir()
	srv := startServer(t, machines)
	var groups [machines][]*child
	for m := range machines {
		for r := range size {
			sp := childSpec{Dir: dir, Group: fmt.Sprintf("job-127.0.0.1:9000/worker-%d", m), Size: size, Rank: r,
				Machine: m, Machines: machines, Keys: mixedKeys, Rounds: rounds, Server: srv.addr(), Victim: -1}
			groups[m] = append(groups[m], startChild(t, sp))
		}
	}
	owners := make([]map[proto.Key]int, machines)
	for m, cs := range groups {
		var res []childResult
		for _, c := range cs {
			res = append(res, c.wait(t, 60*time.Second))
		}
		owners[m] = checkOwners(t, res, mixedKeys)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, err := range srv.errs {
		t.Error("server:", err)
	}
	if want := len(mixedKeys) * rounds * machines; len(srv.pushes) != want {
		t.Errorf("server saw pushes for %d (key, round, machine) triples, want %d", len(srv.pushes), want)
	}
	for _, k := range mixedKeys {
		for r := range uint64(rounds) {
			for m := range machines {
				got := srv.pushes[pushID{key: k.Key, round: r, machine: m}]
				if want := []int{owners[m][k.Key]}; !slices.Equal(got, want) {
					t.Errorf("key %s round %d machine %d: pushes from local ranks %v, want one from the owner %v", k.Key, r, m, got, want)
				}
			}
		}
	}
	for m := range machines {
		if left := groupFiles(t, dir, fmt.Sprintf("job-127.0.0.1:9000/worker-%d", m)); len(left) > 0 {
			t.Errorf("files left in %s: %v", dir, left)
		}
	}
}

// TestKilledRank kills one local rank (SIGKILL, by pid) in the middle of a
// round: the others must fail within a bounded time with an error naming
// it, the survivors must leave no file behind, and a new job of the same
// group in the same directory must work.
func TestKilledRank(t *testing.T) {
	for _, tc := range []struct {
		desc              string
		victim, hangRound int
	}{
		{"rank 2 during round 0 (files still named)", 2, 0},
		{"rank 0, the rendezvous host, during round 1", 0, 1},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			dir := t.TempDir()
			const size = 3
			sp := childSpec{Dir: dir, Group: "killed", Size: size, Machines: 1, Keys: mixedKeys[:6], Rounds: tc.hangRound + 3,
				Factor: 1, Victim: tc.victim, HangRound: tc.hangRound}
			var cs []*child
			for r := range size {
				sp.Rank = r
				cs = append(cs, startChild(t, sp))
			}
			v := cs[tc.victim]
			select {
			case <-v.ready:
			case <-v.exited:
				t.Fatalf("victim exited early; stderr:\n%s", v.stderr.String())
			case <-time.After(30 * time.Second):
				t.Fatalf("victim never got ready; stderr:\n%s", v.stderr.String())
			}
			pid := v.cmd.Process.Pid
			killed := time.Now()
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-v.exited
			name := fmt.Sprintf("local rank %d (pid %d)", tc.victim, pid)
			for r, c := range cs {
				if r == tc.victim {
					continue
				}
				res := c.wait(t, 20*time.Second)
				after := time.Duration(res.ErrAt - killed.UnixNano())
				switch {
				case !strings.Contains(res.Err, name):
					t.Errorf("local rank %d: error %q does not name %s", r, res.Err, name)
				case after > 5*time.Second:
					t.Errorf("local rank %d failed %v after the kill", r, after)
				default:
					t.Logf("local rank %d failed %v after the kill: %s", r, after.Round(time.Millisecond), res.Err)
				}
			}
			if left := groupFiles(t, dir, sp.Group); len(left) > 0 {
				t.Errorf("files left in %s after the survivors closed: %v", dir, left)
			}
			res := runGroup(t, childSpec{Dir: dir, Group: "killed", Size: 2, Machines: 1, Keys: mixedKeys[:3], Rounds: 2, Factor: 2, Victim: -1})
			checkOwners(t, res, mixedKeys[:3])
		})
	}
}

// TestDevShm runs a group of 2 processes in the default directory,
// /dev/shm, and checks that it leaves nothing there.
func TestDevShm(t *testing.T) {
	if st, err := os.Stat(DefaultDir); err != nil || !st.IsDir() {
		t.Skipf("%s is not a directory on this machine", DefaultDir)
	}
	group := fmt.Sprintf("gobps-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	res := runGroup(t, childSpec{Group: group, Size: 2, Machines: 1, Keys: mixedKeys, Rounds: 2, Factor: 5, Victim: -1})
	checkOwners(t, res, mixedKeys)
	if left := groupFiles(t, DefaultDir, group); len(left) > 0 {
		t.Errorf("files left in %s: %v", DefaultDir, left)
	}
}
