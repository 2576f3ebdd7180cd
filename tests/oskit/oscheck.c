/* /init of the OS tests' initramfs: Linux user space asks whether it runs
 * under uefi-hv, prints one line per check on the console, then a verdict:
 *
 *   OSCHECK: PASS | OSCHECK: FAIL       (uefi-hv is there)
 *   OSCHECK: no uefi-hv hypervisor; N CPUs online
 *
 * and powers the machine off (the harness stops at the verdict where there is
 * no ACPI to power off with, as under OVMF in Bochs).
 *
 * Built static by tests/oskit/initramfs.py: gcc -static -Os, with the spec's
 * signature and the VMCALL numbers as -D (see hvprobe.h).
 *
 * /init runs in ring 3, and uefi-hv answers VMCALL only from ring 0: from
 * here a VMCALL must raise #UD (docs/vmcall.md), which Linux delivers as
 * SIGILL. The ring-0 ping is the OS model's to prove (osmodel/).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sched.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "hvprobe.h"

static int failures;

static void check(int ok, const char *what)
{
    printf("OSCHECK: %s: %s\n", ok ? "ok" : "FAILED", what);
    if (!ok)
        failures++;
}

/* The kernel gives /init /dev/console as fds 0-2 when the initramfs holds
 * that node (ours does); otherwise mount devtmpfs and open it ourselves. */
static void open_console(void)
{
    if (fcntl(STDOUT_FILENO, F_GETFD) != -1)
        return;
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        fd = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
    if (fd >= 0) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
    }
}

static __attribute__((noreturn)) void power_off(void)
{
    /* The serial driver sends what we wrote in the background; a halt or
     * power-off would cut it short (Bochs showed it): wait until it is out. */
    fflush(stdout);
    tcdrain(STDOUT_FILENO);
    sync();
    reboot(RB_POWER_OFF);
    /* Without ACPI (OVMF under Bochs) Linux has no way to power off. */
    printf("OSCHECK: power-off failed (%s); halting\n", strerror(errno));
    for (;;)
        pause();
}

static sigjmp_buf on_ud;

static void sigill_handler(int sig)
{
    (void)sig;
    siglongjmp(on_ud, 1);
}

/* A VMCALL from ring 3: #UD (SIGILL) is the specified answer; a VMCALL that
 * returns means the hypervisor served an unprivileged caller. */
static void check_vmcall_from_ring3(void)
{
    struct sigaction sa, old;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = sigill_handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGILL, &sa, &old);
    if (sigsetjmp(on_ud, 1) == 0) {
        unsigned long long pong, cpu, status = hvprobe_vmcall_ping(&pong, &cpu);
        printf("OSCHECK: vmcall from ring 3 returned status 0x%llx, rbx 0x%llx\n", status, pong);
        check(0, "vmcall from ring 3: #UD as specified");
    } else {
        check(1, "vmcall from ring 3: #UD as specified");
    }
    sigaction(SIGILL, &old, NULL);
}

/* With `option cpuid_exit_counts` (a benchmark's build; CPUID leaf
 * 0x40000002, docs/vmcall.md): each online CPU's VM exits so far, by reason,
 * read on that CPU, before /init adds its own. Each read is a CPUID exit
 * itself: those of the reads are taken off (the reason's own read is the
 * (number + 1)th on that CPU; the leaf-0x40000000 probe is one more on the
 * first CPU). */
#define LEAF_EXIT_COUNTS 0x40000002U
static void print_exit_counts(long cpus)
{
    static const char *const names[OSKIT_EXIT_REASON_COUNT] = { OSKIT_EXIT_REASON_NAMES };
    static unsigned long long counts[OSKIT_EXIT_REASON_COUNT];
    unsigned int r[4];
    int first = sched_getcpu();
    for (long c = 0; c < cpus; c++) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0 || sched_getcpu() != c) {
            printf("OSCHECK: exits on cpu %ld: not read (sched_setaffinity: %s)\n", c, strerror(errno));
            continue;
        }
        for (unsigned int k = 0; k < OSKIT_EXIT_REASON_COUNT; k++) {
            hvprobe_cpuid(LEAF_EXIT_COUNTS, k, r);
            counts[k] = (unsigned long long)r[3] << 32 | r[0];
        }
        counts[OSKIT_EXIT_REASON_CPUID] -= OSKIT_EXIT_REASON_CPUID + 1 + (c == first);
        unsigned long long total = 0;
        printf("OSCHECK: exits on cpu %ld:", c);
        for (unsigned int k = 0; k < OSKIT_EXIT_REASON_COUNT; k++)
            if (counts[k]) {
                printf(" %s=%llu", names[k] ? names[k] : "unknown", counts[k]);
                total += counts[k];
            }
        printf(total ? " (total %llu)\n" : " none (total %llu)\n", total);
    }
}

/* The signature as each online CPU sees it, read on that CPU: every CPU
 * the kernel started (its own INIT-SIPI-SIPI) runs under the hypervisor. */
static long signature_on_each_cpu(long cpus)
{
    long seen = 0;
    for (long c = 0; c < cpus; c++) {
        cpu_set_t one;
        unsigned int leaf[4];
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0 || sched_getcpu() != c)
            continue;
        hvprobe_cpuid(HVPROBE_LEAF_SIGNATURE, 0, leaf);
        seen += memcmp(&leaf[1], OSKIT_SIGNATURE, 4) == 0 && memcmp(&leaf[2], OSKIT_SIGNATURE + 4, 4) == 0 &&
                memcmp(&leaf[3], OSKIT_SIGNATURE + 8, 4) == 0;
    }
    return seen;
}

int main(void)
{
    struct hvprobe p;

    open_console();
    setvbuf(stdout, NULL, _IONBF, 0);
    /* sysconf(_SC_NPROCESSORS_ONLN) reads /sys/devices/system/cpu/online
     * (or /proc/stat): mount both so the count is the kernel's. */
    mkdir("/proc", 0555);
    mkdir("/sys", 0555);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    /* The kernel reports the #UD that check_vmcall_from_ring3 provokes on the
     * same serial line, while this program's lines may still be draining
     * through the tty: quiet it (debug.exception-trace), so lines stay whole. */
    int trace = open("/proc/sys/debug/exception-trace", O_WRONLY);
    if (trace >= 0) {
        if (write(trace, "0\n", 2) != 2)
            printf("OSCHECK: note: debug.exception-trace stays on\n");
        close(trace);
    }

    /* Under Bochs (clock: sync=none) the TSC counts instructions from power-on:
     * the boot cost the hypervisor adds can be read from this line. */
    unsigned int tsc_lo, tsc_hi;
    __asm__ volatile("rdtsc" : "=a"(tsc_lo), "=d"(tsc_hi));
    printf("OSCHECK: /init running, %ld CPUs online, expecting signature '%s'\n", cpus, OSKIT_SIGNATURE);
    printf("OSCHECK: TSC at /init: %llu\n", (unsigned long long)tsc_hi << 32 | tsc_lo);
    unsigned int leaf[4];
    hvprobe_cpuid(HVPROBE_LEAF_SIGNATURE, 0, leaf);
    if (memcmp(&leaf[1], OSKIT_SIGNATURE, 4) == 0 && memcmp(&leaf[2], OSKIT_SIGNATURE + 4, 4) == 0 &&
        memcmp(&leaf[3], OSKIT_SIGNATURE + 8, 4) == 0 && leaf[0] >= LEAF_EXIT_COUNTS && leaf[0] < 0x40000100U)
        print_exit_counts(cpus);
    hvprobe_run(&p);
    printf("OSCHECK: CPUID.1:ECX hypervisor=%u vmx=%u; leaf 0x40000000: max 0x%x '%s'\n", p.hypervisor_bit,
           p.vmx_bit, p.max_leaf, p.signature);
    if (!p.ours) {
        printf("OSCHECK: no uefi-hv hypervisor; %ld CPUs online\n", cpus);
        power_off();
    }
    check(p.hypervisor_bit, "hypervisor present, CPUID.1:ECX[31] set");
    check(strcmp(p.signature, OSKIT_SIGNATURE) == 0, "signature at CPUID 0x40000000");
    check(!p.vmx_bit, "VMX hidden, CPUID.1:ECX[5] clear");
    long seen = signature_on_each_cpu(cpus);
    printf("OSCHECK: signature seen on %ld of %ld CPUs\n", seen, cpus);
    check(seen == cpus, "signature on every online CPU");
    check_vmcall_from_ring3();
    printf("OSCHECK: %s\n", failures ? "FAIL" : "PASS");
    power_off();
}
