package kernel

//go:generate go run ./asmgen -out sum_amd64.s -stubs sum_amd64.go -pkg kernel
