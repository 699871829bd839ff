// Off-CPU workload: a thread named "futexwaiter" blocked on a futex nobody wakes, in
// 20 ms timed waits (so a profile sees it switch out within 20 ms of its start); the main
// thread waits for it in pthread_join.
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint32_t word;

__attribute__((noinline)) void wait_on_futex(void) {
    struct timespec t = {0, 20000000};
    syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &t, 0, 0);
}

static void *waiter(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "futexwaiter");
    for (;;)
        wait_on_futex();
    return 0;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, 0, waiter, 0);
    pthread_join(t, 0);
    return 0;
}
