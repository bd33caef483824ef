package bench

// The benchmark's own XDP programs live in bpf/bench/ (one concern per file); bpf2go
// compiles them with Debian's clang against Debian's libbpf-dev headers. The objects
// and their Go bindings are committed; CI fails when they differ from what the C
// compiles to.
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type gen_config -type flow gen ../bpf/bench/gen.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type flow -type counter -type stamps sink ../bpf/bench/sink.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type counter -type flow_key -type flow_state fwd ../bpf/bench/fwd.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type counter cpumap ../bpf/bench/cpumap.c
