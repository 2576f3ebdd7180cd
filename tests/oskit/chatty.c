/* The chatty guest: chained behind uefi-hv, it makes the hypervisor log on
 * every VM exit it causes, thousands of times, to show that the hypervisor's
 * serial log is rate-limited (templates/hv/log.c.j2, option log_rate and
 * log_burst in docs/dsl.md).
 *
 * Its exit: WRMSR to IA32_VMX_BASIC (0x480). The default spec intercepts the
 * VMX capability MSRs and answers with #GP, logging one line each time
 * ("uefi-hv: cpu 0: inject #GP: WRMSR 0x480 from the guest"). The #GP is
 * caught here by a handler put into the firmware's IDT for the duration, as
 * hvcheck does. Without the hypervisor the write raises #GP too (the MSR is
 * read-only), so the program runs the same either way.
 *
 * What it prints on the console (OVMF mirrors it to COM1):
 *   CHATTY: TSC <n> per ms
 *   CHATTY: <k> of <n> WRMSR 0x480 raised #GP in <us> us
 *   CHATTY: one more after a pause of <ms> ms: #GP
 *   CHATTY: DONE
 * then it powers the machine off.
 */
#include <efi.h>
#include <efilib.h>

#define MSR_IA32_VMX_BASIC 0x480
#define CHATTY_WRITES 3000
#define CHATTY_PAUSE_MS 500
#define VECTOR_GP 13

/* UINT64 chatty_try_wrmsr(UINT32 msr, UINT64 value): 1 when the WRMSR raised
 * #GP (chatty_gp_handler, in the IDT meanwhile, resumes at the fault label),
 * else 0. System V ABI: gnu-efi's own functions use it. */
void chatty_gp_handler(void);
UINT64 chatty_try_wrmsr(UINT32 msr, UINT64 value);
__asm__(
    "    .text\n"
    "    .globl chatty_try_wrmsr\n"
    "chatty_try_wrmsr:\n"
    "    mov %edi, %ecx\n"
    "    mov %rsi, %rax\n"
    "    mov %rsi, %rdx\n"
    "    shr $32, %rdx\n"
    "    wrmsr\n"
    "    xor %eax, %eax\n"
    "    ret\n"
    "chatty_wrmsr_faulted:\n"
    "    mov $1, %eax\n"
    "    ret\n"
    "    .globl chatty_gp_handler\n"
    "chatty_gp_handler:\n"
    "    add $8, %rsp\n"                        /* the error code */
    "    lea chatty_wrmsr_faulted(%rip), %rax\n"
    "    mov %rax, (%rsp)\n"                    /* the saved RIP: return 1 from chatty_try_wrmsr */
    "    iretq\n");

struct dtr { UINT16 limit; UINT64 base; } __attribute__((packed));
struct idt_gate { UINT16 off0, sel; UINT8 ist, type; UINT16 off1; UINT32 off2, zero; } __attribute__((packed));

/* Points vector `vector` of the firmware's IDT at `handler`; returns the old gate. */
static struct idt_gate set_gate(UINT32 vector, void (*handler)(void))
{
    struct dtr idtr;
    UINT16 cs;
    __asm__ volatile("sidt %0; mov %%cs, %1" : "=m"(idtr), "=r"(cs));
    struct idt_gate *gate = (struct idt_gate *)(idtr.base + vector * 16), saved = *gate;
    UINT64 h = (UINT64)handler;
    *gate = (struct idt_gate){ (UINT16)h, cs, 0, 0x8E, (UINT16)(h >> 16), (UINT32)(h >> 32), 0 };
    return saved;
}

static void restore_gate(UINT32 vector, struct idt_gate saved)
{
    struct dtr idtr;
    __asm__ volatile("sidt %0" : "=m"(idtr));
    *(struct idt_gate *)(idtr.base + vector * 16) = saved;
}

static inline UINT64 rdtsc(void)
{
    UINT32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (UINT64)hi << 32 | lo;
}

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
    InitializeLib(image, systab);

    UINT64 t0 = rdtsc();
    uefi_call_wrapper(BS->Stall, 1, 10000);
    UINT64 tsc_per_ms = (rdtsc() - t0) / 10;
    if (!tsc_per_ms)
        tsc_per_ms = 1;
    Print(L"CHATTY: TSC %lu per ms\n", tsc_per_ms);

    struct idt_gate saved = set_gate(VECTOR_GP, chatty_gp_handler);
    UINTN faults = 0;
    t0 = rdtsc();
    for (UINTN i = 0; i < CHATTY_WRITES; i++)
        faults += chatty_try_wrmsr(MSR_IA32_VMX_BASIC, 0);
    UINT64 us = (rdtsc() - t0) * 1000 / tsc_per_ms;
    restore_gate(VECTOR_GP, saved);
    Print(L"CHATTY: %lu of %u WRMSR 0x480 raised #GP in %lu us\n", (UINT64)faults, CHATTY_WRITES, us);

    /* The bucket refills while the guest is quiet: the next line is written,
     * and the hypervisor says first how many it dropped. */
    uefi_call_wrapper(BS->Stall, 1, CHATTY_PAUSE_MS * 1000);
    saved = set_gate(VECTOR_GP, chatty_gp_handler);
    UINT64 faulted = chatty_try_wrmsr(MSR_IA32_VMX_BASIC, 0);
    restore_gate(VECTOR_GP, saved);
    Print(L"CHATTY: one more after a pause of %u ms: %a\n", CHATTY_PAUSE_MS, faulted ? "#GP" : "no #GP");
    Print(L"CHATTY: DONE\n");

    uefi_call_wrapper(RT->ResetSystem, 4, EfiResetShutdown, EFI_SUCCESS, 0, NULL);
    return EFI_SUCCESS;
}
