// Unwinding test workload, built by the tests with g++ -O2 -fomit-frame-pointer (no frame
// pointers anywhere in our code). `split`: main calls hot_caller and cold_caller, which
// call the same spin loop with 3:1 iteration counts, so 75 % / 25 % of the CPU time is
// below each caller. `deep N`: recursion N frames deep, then the spin loop.
#include <cstdint>
#include <cstdlib>
#include <cstring>

static volatile uint64_t sink;

__attribute__((noinline)) void spin(uint64_t n)
{
	uint64_t x = sink;
	for (uint64_t i = 0; i < n; i++)
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
	sink = x;
}

// The store after the call keeps the call from becoming a tail jump.
__attribute__((noinline)) void hot_caller(uint64_t n)
{
	spin(n);
	sink = sink + 1;
}

__attribute__((noinline)) void cold_caller(uint64_t n)
{
	spin(n);
	sink = sink + 2;
}

__attribute__((noinline)) void deep(int d, uint64_t n)
{
	if (d <= 0)
		spin(n);
	else
		deep(d - 1, n);
	sink = sink + d;
}

int main(int argc, char **argv)
{
	if (argc > 2 && strcmp(argv[1], "deep") == 0) {
		int d = atoi(argv[2]);
		for (;;)
			deep(d, 1000000);
	}
	for (;;) {
		hot_caller(3000000);
		cold_caller(1000000);
	}
	return 0;
}
