// Off-CPU workload: one thread that spins 70 ms and sleeps 30 ms, forever (30 % of its
// wall time blocked in nanosleep, 70 % on CPU or waiting for it).
#define _GNU_SOURCE
#include <stdint.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

volatile uint64_t sink;

__attribute__((noinline)) void spin_70ms(void) {
    uint64_t end = now_ns() + 70000000ull;
    while (now_ns() < end)
        sink++;
}

__attribute__((noinline)) void sleep_30ms(void) {
    struct timespec t = {0, 30000000};
    nanosleep(&t, 0);
}

int main(void) {
    for (;;) {
        spin_70ms();
        sleep_30ms();
    }
}
