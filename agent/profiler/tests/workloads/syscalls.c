/* Syscall-heavy test workload: most of its CPU time is in the kernel (write to /dev/null
 * and getppid), called from do_syscalls_loop. Runs until killed. */
#include <fcntl.h>
#include <unistd.h>
#include <sys/syscall.h>

__attribute__((noinline)) void do_syscalls_loop(int fd)
{
	static char buf[4096];
	for (int i = 0; i < 1000; i++) {
		(void)!write(fd, buf, sizeof(buf));
		syscall(SYS_getppid);
	}
}

int main(void)
{
	int fd = open("/dev/null", O_WRONLY);
	for (;;)
		do_syscalls_loop(fd);
	return 0;
}
