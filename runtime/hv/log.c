/*
 * Messages. Before launch, on the BSP, the hypervisor talks through the
 * firmware's console (which OVMF mirrors to COM1). In VMX root operation and
 * on APs it must not call UEFI services (they are neither re-entrant nor
 * MP-safe), so it writes COM1 itself with port I/O (16550 at 0x3F8, already
 * set up by the firmware). That keeps working after ExitBootServices.
 *
 * What VMX root logs is rate-limited (option log_rate / log_burst, docs/dsl.md):
 * a guest that makes the hypervisor log on every exit (a WRMSR loop, say)
 * would otherwise keep its CPU in VMX root, spinning on a 115200-baud UART,
 * and bury everything else on the console. A token bucket on the TSC:
 * credit, in TSC ticks, grows with time up to HV_LOG_BURST lines; a line
 * costs the ticks of 1/HV_LOG_RATE s. The TSC rate is measured once against
 * the firmware's Stall before launch (hv_log_calibrate); until then nothing
 * is limited. Dropped lines are counted and the next line written first
 * says how many. hv_log_fatal(), the lines right before the machine is
 * stopped, is never dropped.
 */
#include <efistdarg.h>
#include "hv.h"
#include "cpu.h"

#define COM1     0x3F8
#define COM1_LSR (COM1 + 5)
#define LSR_THRE 0x20

static BOOLEAN use_firmware_console;
static volatile UINT32 log_lock;
/* The bucket, under log_lock. */
static UINT64 ticks_per_line; /* 0 until calibrated: no limit */
static UINT64 credit;         /* TSC ticks, at most HV_LOG_BURST lines' worth */
static UINT64 last_tsc;
static UINT64 suppressed; /* lines dropped since the last one written */

void hv_use_firmware_console(BOOLEAN on)
{
    use_firmware_console = on;
}

static void serial_putc(char c)
{
    for (UINT32 spins = 0; !(inb(COM1_LSR) & LSR_THRE) && spins < 100000; spins++)
        cpu_pause();
    outb(COM1, (UINT8)c);
}

static void serial_puts(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            serial_putc('\r');
        serial_putc(*s);
    }
}

/* With log_lock held: may a line be written now? */
static BOOLEAN take_token(void)
{
    if (!ticks_per_line)
        return TRUE;
    UINT64 now = rdtsc(), depth = ticks_per_line * HV_LOG_BURST;
    /* A TSC that went back (the guest wrote IA32_TIME_STAMP_COUNTER, or
     * another CPU's is behind) earns nothing: start counting from it. */
    if (now > last_tsc)
        credit += now - last_tsc;
    last_tsc = now;
    if (credit > depth)
        credit = depth;
    if (credit < ticks_per_line)
        return FALSE;
    credit -= ticks_per_line;
    return TRUE;
}

/* One message to COM1, whole (other CPUs wait for the lock). `limited`:
 * subject to the rate limit, else always written. */
static void serial_write(const char *s, BOOLEAN limited)
{
    while (__atomic_exchange_n(&log_lock, 1, __ATOMIC_ACQUIRE))
        cpu_pause();
    if (limited && !take_token()) {
        suppressed++;
    } else {
        if (suppressed) {
            char note[64];
            hv_snprintf(note, sizeof note, "uefi-hv: %lu messages suppressed\n", suppressed);
            suppressed = 0;
            serial_puts(note);
        }
        serial_puts(s);
    }
    __atomic_store_n(&log_lock, 0, __ATOMIC_RELEASE);
}

/* Before launch, on the BSP, with boot services: the TSC against a 10 ms
 * Stall. Returns the TSC ticks a second it measured. */
UINT64 hv_log_calibrate(void)
{
    UINT64 t0 = rdtsc();
    uefi_call_wrapper(BS->Stall, 1, 10000);
    UINT64 per_second = (rdtsc() - t0) * 100;
    while (__atomic_exchange_n(&log_lock, 1, __ATOMIC_ACQUIRE))
        cpu_pause();
    ticks_per_line = per_second / HV_LOG_RATE ? per_second / HV_LOG_RATE : 1;
    credit = ticks_per_line * HV_LOG_BURST;
    last_tsc = rdtsc();
    __atomic_store_n(&log_lock, 0, __ATOMIC_RELEASE);
    return per_second;
}

static void console_write(const char *s)
{
    CHAR16 buf[256];
    UINTN n = 0;
    for (; *s; s++) {
        if (n + 3 >= sizeof buf / sizeof buf[0]) {
            buf[n] = 0;
            uefi_call_wrapper(ST->ConOut->OutputString, 2, ST->ConOut, buf);
            n = 0;
        }
        if (*s == '\n')
            buf[n++] = L'\r';
        buf[n++] = (CHAR16)(UINT8)*s;
    }
    buf[n] = 0;
    uefi_call_wrapper(ST->ConOut->OutputString, 2, ST->ConOut, buf);
}

/* A small vsnprintf: %d %u %x %X %s %c %p, flags '0' and '-', a width,
 * and the length modifiers l / ll (all integers are promoted to 64 bits). */
static int format(char *buf, UINTN size, const char *fmt, va_list ap)
{
    UINTN n = 0;
#define PUT(ch)            \
    do {                   \
        if (n + 1 < size)  \
            buf[n] = (ch); \
        n++;               \
    } while (0)
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            PUT(*fmt);
            continue;
        }
        fmt++;
        BOOLEAN zero = FALSE, left = FALSE;
        for (; *fmt == '0' || *fmt == '-'; fmt++) {
            if (*fmt == '0')
                zero = TRUE;
            else
                left = TRUE;
        }
        UINTN width = 0;
        for (; *fmt >= '0' && *fmt <= '9'; fmt++)
            width = width * 10 + (UINTN)(*fmt - '0');
        int longs = 0;
        for (; *fmt == 'l'; fmt++)
            longs++;
        char tmp[24];
        const char *s = tmp;
        UINTN len = 0;
        switch (*fmt) {
        case 'd':
        case 'u':
        case 'x':
        case 'X':
        case 'p': {
            UINT64 v;
            BOOLEAN neg = FALSE;
            if (*fmt == 'p')
                v = (UINT64)va_arg(ap, void *);
            else if (*fmt == 'd') {
                INT64 sv = longs ? va_arg(ap, INT64) : va_arg(ap, int);
                neg = sv < 0;
                v = neg ? (UINT64)-sv : (UINT64)sv;
            } else
                v = longs ? va_arg(ap, UINT64) : va_arg(ap, unsigned int);
            unsigned base = (*fmt == 'd' || *fmt == 'u') ? 10 : 16;
            const char *digits = *fmt == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            char rev[24];
            UINTN r = 0;
            do {
                rev[r++] = digits[v % base];
                v /= base;
            } while (v);
            if (neg)
                rev[r++] = '-';
            while (r)
                tmp[len++] = rev[--r];
            break;
        }
        case 's':
            s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            while (s[len])
                len++;
            break;
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            len = 1;
            break;
        case '%':
            tmp[0] = '%';
            len = 1;
            break;
        default:
            tmp[0] = '?';
            len = 1;
            break;
        }
        for (UINTN pad = len; !left && pad < width; pad++)
            PUT(zero ? '0' : ' ');
        for (UINTN i = 0; i < len; i++)
            PUT(s[i]);
        for (UINTN pad = len; left && pad < width; pad++)
            PUT(' ');
    }
    if (size)
        buf[n < size ? n : size - 1] = 0;
#undef PUT
    return (int)n;
}

int hv_snprintf(char *buf, UINTN size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = format(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

/* Where a line goes: COM1 under the rate limit, COM1 always (what is logged
 * right before the machine stops: an unhandled exit, a triple fault, a host
 * exception, the one thing worth reading after a flood), or the firmware
 * console while it is ours to use (efi_main on the BSP). */
enum log_sink { LOG_LIMITED, LOG_FATAL, LOG_SAY };

static void vlog(enum log_sink sink, const char *fmt, va_list ap)
{
    char buf[512];
    format(buf, sizeof buf, fmt, ap);
    if (sink == LOG_SAY && use_firmware_console)
        console_write(buf);
    else
        serial_write(buf, sink == LOG_LIMITED);
}

/* From VMX root operation or an AP: COM1 only, rate-limited. */
void hv_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LIMITED, fmt, ap);
    va_end(ap);
}

/* The same, never dropped. */
void hv_log_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_FATAL, fmt, ap);
    va_end(ap);
}

/* From efi_main on the BSP: the firmware console, else COM1. */
void hv_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_SAY, fmt, ap);
    va_end(ap);
}

/* Names from the spec's catalogue (names.c), as one string each with
 * offsets into it: no pointer tables, no relocations. */
const char *hv_exit_reason_name(UINT32 reason)
{
    reason &= 0xFFFF;
    if (reason < HV_EXIT_REASON_COUNT && hv_exit_reason_at[reason])
        return hv_exit_reason_text + hv_exit_reason_at[reason] - 1;
    return "unknown";
}

const char *hv_vm_error_name(UINT32 number)
{
    if (number < HV_VM_ERROR_COUNT && hv_vm_error_at[number])
        return hv_vm_error_text + hv_vm_error_at[number] - 1;
    return "unknown";
}
