package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVADDPHEncoding checks vaddphBytes against GNU objdump, which knows
// AVX512-FP16 (binutils 2.38 and later), for every register in every
// position.
func TestVADDPHEncoding(t *testing.T) {
	objdump, err := exec.LookPath("objdump")
	if err != nil {
		t.Skip("no objdump (binutils) to disassemble with")
	}
	type regs struct{ d, s1, s2 int }
	var cases []regs
	for r := 0; r < 32; r++ {
		cases = append(cases, regs{r, 0, 1}, regs{2, r, 3}, regs{4, 5, r}, regs{r, (r + 9) % 32, (r + 21) % 32})
	}
	var code []byte
	for _, c := range cases {
		code = append(code, vaddphBytes(c.d, c.s1, c.s2)...)
	}
	bin := filepath.Join(t.TempDir(), "code.bin")
	if err := os.WriteFile(bin, code, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(objdump, "-D", "-b", "binary", "-m", "i386:x86-64", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("objdump: %v\n%s", err, out)
	}
	var got []string
	for _, line := range strings.Split(string(out), "\n") {
		// "   0:	62 f5 7c 48 58 d1    	vaddph %zmm1,%zmm0,%zmm2"
		f := strings.Split(line, "\t")
		if len(f) == 3 && strings.HasSuffix(f[0], ":") {
			got = append(got, strings.Join(strings.Fields(f[2]), " "))
		}
	}
	if len(got) != len(cases) {
		t.Fatalf("objdump decoded %d instructions, want %d:\n%s", len(got), len(cases), out)
	}
	for i, c := range cases {
		// AT&T order: sources reversed, destination last.
		want := fmt.Sprintf("vaddph %%zmm%d,%%zmm%d,%%zmm%d", c.s2, c.s1, c.d)
		if got[i] != want {
			t.Errorf("registers %+v: bytes % x decode as %q, want %q", c, vaddphBytes(c.d, c.s1, c.s2), got[i], want)
		}
	}
	if !bytes.Equal(vaddphBytes(2, 0, 1), []byte{0x62, 0xf5, 0x7c, 0x48, 0x58, 0xd1}) {
		t.Errorf("vaddph zmm2, zmm0, zmm1 = % x", vaddphBytes(2, 0, 1))
	}
}
