package bench

import (
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// perCPUSlot reads slot 0 of a per-CPU array with the bpf system call itself, into
// buffers made once: cilium/ebpf's Lookup allocates on every per-CPU read (and refuses
// raw pointers for per-CPU values), and the paced sender, which polls the sinks
// between frames, must not allocate (pacedFlows).
type perCPUSlot[V any] struct {
	m    *ebpf.Map // kept for its descriptor's lifetime
	key  *uint32
	vals []V
	attr *mapLookupAttr
}

// mapLookupAttr is the BPF_MAP_LOOKUP_ELEM part of union bpf_attr
// (include/uapi/linux/bpf.h).
type mapLookupAttr struct {
	mapFD uint32
	_     uint32
	key   uint64
	value uint64
	flags uint64
}

const bpfMapLookupElem = 1 // enum bpf_cmd

// newPerCPUSlot prepares reads of m, a per-CPU array whose values are V: V's size
// must be a multiple of 8, the stride the kernel lays the CPUs' values out with.
func newPerCPUSlot[V any](m *ebpf.Map) (*perCPUSlot[V], error) {
	var v V
	if size := unsafe.Sizeof(v); uintptr(m.ValueSize()) != size || size%8 != 0 {
		return nil, fmt.Errorf("%s: values of %d bytes, reading %d (a multiple of 8 is needed)", m, m.ValueSize(), size)
	}
	if m.Type() != ebpf.PerCPUArray {
		return nil, fmt.Errorf("%s: a %s, want a per-CPU array", m, m.Type())
	}
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, err
	}
	s := &perCPUSlot[V]{m: m, key: new(uint32), vals: make([]V, n)}
	s.attr = &mapLookupAttr{
		mapFD: uint32(m.FD()),
		key:   uint64(uintptr(unsafe.Pointer(s.key))),
		value: uint64(uintptr(unsafe.Pointer(&s.vals[0]))),
	}
	return s, nil
}

// read returns every CPU's value of slot 0, in a slice the next read overwrites.
func (s *perCPUSlot[V]) read() ([]V, error) {
	// attr holds the addresses of key and vals as integers: s keeps both alive, and
	// Go's collector does not move heap objects.
	_, _, errno := unix.Syscall(unix.SYS_BPF, bpfMapLookupElem, uintptr(unsafe.Pointer(s.attr)), unsafe.Sizeof(*s.attr))
	if errno != 0 {
		return nil, errno
	}
	return s.vals, nil
}
