/* Test workload with a known CPU split: burn_hot_75 runs three times as many identical
 * loop iterations as burn_cold_25, so ~75% / ~25% of the process's CPU time.
 * Built by the tests with -O1 -fno-omit-frame-pointer. Runs until killed. */
#include <stdint.h>

static volatile uint64_t sink;

__attribute__((noinline)) void burn_hot_75(uint64_t n)
{
	uint64_t x = sink;
	for (uint64_t i = 0; i < n; i++)
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
	sink = x;
}

__attribute__((noinline)) void burn_cold_25(uint64_t n)
{
	uint64_t x = sink;
	for (uint64_t i = 0; i < n; i++)
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
	sink = x;
}

int main(void)
{
	for (;;) {
		burn_hot_75(3000000);
		burn_cold_25(1000000);
	}
	return 0;
}
