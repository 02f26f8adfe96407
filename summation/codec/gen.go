package codec

//go:generate go run ./asmgen -out asm_amd64.s -stubs asm_amd64.go -pkg codec
