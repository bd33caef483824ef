package lb

import "math"

// IsPrime reports whether n is prime.
//
// It runs a Miller–Rabin test with the bases 2, 7 and 61, which is deterministic (not
// probabilistic) for every n < 4,759,123,141 (Jaeschke 1993), hence for every uint32.
// All arithmetic fits in uint64 because both factors of a product are below 2^32.
func IsPrime(n uint32) bool {
	switch {
	case n < 2:
		return false
	case n < 4:
		return true
	case n%2 == 0:
		return false
	}
	// n-1 = d·2^s with d odd.
	d := n - 1
	s := 0
	for d%2 == 0 {
		d /= 2
		s++
	}
	for _, a := range [...]uint32{2, 7, 61} {
		if a%n == 0 {
			// n is one of the bases itself (7 or 61): prime, and this base proves nothing.
			continue
		}
		if !strongProbablePrime(n, d, s, a) {
			return false
		}
	}
	return true
}

// strongProbablePrime reports whether odd n, with n-1 = d·2^s, passes the strong
// probable-prime test to base a.
func strongProbablePrime(n, d uint32, s int, a uint32) bool {
	x := powMod(uint64(a), uint64(d), uint64(n))
	if x == 1 || x == uint64(n)-1 {
		return true
	}
	for range s - 1 {
		x = x * x % uint64(n)
		if x == uint64(n)-1 {
			return true
		}
	}
	return false
}

// powMod returns b^e mod n for n < 2^32.
func powMod(b, e, n uint64) uint64 {
	r := uint64(1)
	b %= n
	for e > 0 {
		if e&1 == 1 {
			r = r * b % n
		}
		b = b * b % n
		e >>= 1
	}
	return r
}

// NextPrime returns the smallest prime >= n. When there is none in uint32 (n is above
// 4,294,967,291, the largest 32-bit prime) it returns 0, which is not prime, so that a
// caller feeding the result to BuildTable gets an error rather than a wrapped-around size.
func NextPrime(n uint32) uint32 {
	if n <= 2 {
		return 2
	}
	if n%2 == 0 {
		n++
	}
	// Prime gaps below 2^32 are at most 336, so this loop is short.
	for ; ; n += 2 {
		if IsPrime(n) {
			return n
		}
		if n > math.MaxUint32-2 {
			return 0
		}
	}
}
