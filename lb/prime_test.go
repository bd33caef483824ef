package lb

import (
	"math"
	"testing"
)

// sieve returns isPrime[0…n] by Eratosthenes, the independent reference for small n.
func sieve(n int) []bool {
	isPrime := make([]bool, n+1)
	for i := 2; i <= n; i++ {
		isPrime[i] = true
	}
	for i := 2; i*i <= n; i++ {
		if isPrime[i] {
			for j := i * i; j <= n; j += i {
				isPrime[j] = false
			}
		}
	}
	return isPrime
}

// trialDivision is the slow reference for 32-bit n.
func trialDivision(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= uint64(n); d++ {
		if uint64(n)%d == 0 {
			return false
		}
	}
	return true
}

func TestIsPrimeAndNextPrimeMatchSieve(t *testing.T) {
	const limit = 1<<20 + 100 // past the prime after MaxTableSize, so every valid size is covered
	isPrime := sieve(limit)
	next := uint32(0) // smallest prime >= n, filled from the top down
	for n := limit; n >= 0; n-- {
		if isPrime[n] {
			next = uint32(n)
		}
		if got := IsPrime(uint32(n)); got != isPrime[n] {
			t.Fatalf("IsPrime(%d) = %v", n, got)
		}
		if next != 0 {
			if got := NextPrime(uint32(n)); got != next {
				t.Fatalf("NextPrime(%d) = %d, want %d", n, got, next)
			}
		}
	}
}

func TestIsPrimeLarge(t *testing.T) {
	for _, tc := range []struct {
		n    uint32
		want bool
	}{
		{4294967291, true},      // largest 32-bit prime
		{4294967279, true},      // the one before it
		{math.MaxUint32, false}, // 3·5·17·257·65537
		{4294967293, false},     // 9241·464773
		{65537 * 65521, false},  // product of two primes near 2^16
		{2147483647, true},      // Mersenne prime 2^31-1
		{3215031751, false},     // strong pseudoprime to bases 2, 3, 5 and 7
		{25326001, false},       // strong pseudoprime to bases 2, 3 and 5
		{2047, false},           // smallest strong pseudoprime to base 2
		{1729, false},           // Carmichael number
		{7, true}, {61, true},   // the bases themselves
	} {
		if got := IsPrime(tc.n); got != tc.want {
			t.Errorf("IsPrime(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
	// Random 32-bit values against trial division.
	rng := newRand(t)
	for range 1000 {
		n := rng.Uint32() | 1
		if got, want := IsPrime(n), trialDivision(n); got != want {
			t.Fatalf("IsPrime(%d) = %v, trial division says %v", n, got, want)
		}
	}
}

func TestNextPrimeTop(t *testing.T) {
	for _, tc := range []struct{ n, want uint32 }{
		{0, 2}, {1, 2}, {2, 2}, {3, 3}, {4, 5},
		{4294967280, 4294967291},
		{4294967291, 4294967291},
		{4294967292, 0}, // no prime left in uint32
		{math.MaxUint32, 0},
	} {
		if got := NextPrime(tc.n); got != tc.want {
			t.Errorf("NextPrime(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func TestTableSizeConstants(t *testing.T) {
	if !IsPrime(DefaultTableSize) {
		t.Errorf("DefaultTableSize %d is not prime", DefaultTableSize)
	}
	// MaxTableSize is documented as the largest prime below 2^20.
	if !IsPrime(MaxTableSize) || NextPrime(MaxTableSize+1) < 1<<20 {
		t.Errorf("MaxTableSize %d is not the largest prime below 2^20", MaxTableSize)
	}
	if got := DefaultTableSize / MinSlotsPerBackend; got != 1024 {
		t.Errorf("the default table serves %d backends, documented as 1024", got)
	}
}
