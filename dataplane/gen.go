package dataplane

// The fast path's C lives in bpf/; bpf2go compiles it with Debian's clang against
// Debian's libbpf-dev headers and writes the object and its Go bindings here. Both are
// committed; CI fails when they differ from what bpf/ compiles to.
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type reason -type flow_event -type attachment_key -type attachment -type egress_key -type egress -type service_key -type service -type backend -type policy_key -type policy_rule -type ct_key -type ct_entry -type traffic -type tenant_counters -type service_counters -type backend_counters -type event_counter -type event_type -type backend_state gateway ../bpf/gateway.c
