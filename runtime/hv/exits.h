/*
 * What the exit actions (exits.c) and the tables generated from the spec's
 * `exit` statements and msr_bitmap (dispatch.c) share.
 */
#ifndef UEFI_HV_EXITS_H
#define UEFI_HV_EXITS_H

#include "hv.h"
#include "cpu.h"
#include "guest.h"

enum hv_exit_result {
    HV_RESUME_NEXT, /* the instruction is done: advance GUEST_RIP */
    HV_RESUME_SAME, /* re-enter at the same RIP (an event was injected, or state reset) */
    HV_STOP         /* log already written: power the machine off */
};

typedef enum hv_exit_result (*hv_exit_action)(struct hv_cpu *cpu, struct hv_guest_regs *regs);

/* The dispatch table: the action of each exit reason the spec handles. */
extern const hv_exit_action hv_exit_actions[HV_EXIT_REASON_COUNT];

/* An msr_bitmap intercept: RDMSR or WRMSR of first..last exits and gets `action`. */
enum hv_msr_action { MSR_FEATURE_CONTROL_LOCKED, MSR_INJECT_GP, MSR_PASSTHROUGH_LOG, MSR_MICROCODE_UPDATE };
struct hv_msr_intercept {
    UINT32 first, last;
    BOOLEAN write;
    enum hv_msr_action action;
};
extern const struct hv_msr_intercept hv_msr_intercepts[HV_MSR_INTERCEPT_COUNT + 1];

/* A CPUID feature bit the spec hides (`exit cpuid { hide ... }`): register
 * 0..3 is EAX, EBX, ECX, EDX. The table ends with a NULL name. */
struct hv_cpuid_bit {
    const char *name;
    UINT32 leaf, reg, bit;
};
extern const struct hv_cpuid_bit hv_cpuid_hidden[];

/* Event information: VM-entry interruption information, VM-exit
 * interruption information and IDT-vectoring information share one format
 * (SDM 26.8.3 "VM-Entry Controls for Event Injection", 29.2.2 "Information
 * for VM Exits Due to Vectored Events", 29.2.4 "Information for VM Exits
 * That Occur During Event Delivery"). */
#define INTR_INFO_VECTOR(i)     ((i) & 0xFF)
#define INTR_INFO_TYPE(i)       (((i) >> 8) & 7)
#define INTR_INFO_ERROR_CODE    (1U << 11)
#define INTR_INFO_NMI_UNBLOCKED (1U << 12) /* "NMI unblocking due to IRET"; reserved on entry */
#define INTR_INFO_VALID         (1U << 31)
#define INTR_TYPE_EXTERNAL      0
#define INTR_TYPE_NMI           2
#define INTR_TYPE_HW_EXCEPTION  3
#define INTR_TYPE_SOFT_INTR     4 /* INT n */
#define INTR_TYPE_PRIV_SOFT_EXC 5 /* INT1 */
#define INTR_TYPE_SOFT_EXC      6 /* INT3, INTO */

/* Guest interruptibility state (SDM 26.4.2 "Guest Non-Register State"). */
#define BLOCKING_BY_STI_MOV_SS 3ULL /* bits 0-1 */
#define BLOCKING_BY_NMI        (1ULL << 3)

/* Exception and interrupt vectors the runtime raises or recognises (SDM
 * Vol. 3A, "Exception and Interrupt Vectors"), and RFLAGS bits it reads. */
#define VECTOR_DB  1
#define VECTOR_NMI 2
#define VECTOR_UD  6
#define VECTOR_DF  8
#define VECTOR_TS  10
#define VECTOR_NP  11
#define VECTOR_SS  12
#define VECTOR_GP  13
#define RFLAGS_TF  (1ULL << 8)
#define RFLAGS_IF  (1ULL << 9)
#define RFLAGS_NT  (1ULL << 14)
#define RFLAGS_VM  (1ULL << 17)

/* Guest activity states (SDM 26.4.2 "Guest Non-Register State"). */
#define HV_ACTIVITY_ACTIVE        0
#define HV_ACTIVITY_HLT           1
#define HV_ACTIVITY_SHUTDOWN      2
#define HV_ACTIVITY_WAIT_FOR_SIPI 3

/* exits.c, for the actions in other files */
void hv_advance_rip(void);
void hv_instruction_done(UINT64 length);
/* The guest as INIT leaves a CPU (real mode at F000:FFF0, TLBs flushed). */
void hv_reset_to_init_state(struct hv_cpu *cpu, struct hv_guest_regs *regs);
/* A guest in its INIT state starts at the SIPI vector's page. */
enum hv_exit_result hv_start_at_sipi_vector(UINT32 vector);

/* event_delivery.c: the event a VM exit interrupted, injected again; NMI
 * blocking set back after an exit in an IRET that unblocked NMIs. */
void hv_redeliver_interrupted_event(struct hv_cpu *cpu, UINT32 reason);

/* protect.c: VMCALL EXIT_BOOT_SERVICES. */
enum hv_exit_result hv_exit_boot_services(struct hv_cpu *cpu, struct hv_guest_regs *regs);

/* guest_memory.c: the guest's memory at guest-linear addresses, through its
 * page tables; FALSE where a page is not present. */
BOOLEAN hv_guest_physical(UINT64 linear, UINT64 *pa);
BOOLEAN hv_guest_read(UINT64 linear, void *buf, UINTN n);
BOOLEAN hv_guest_write(UINT64 linear, const void *buf, UINTN n);

/* microcode.c: WRMSR IA32_BIOS_UPDT_TRIG of the update data at guest-linear
 * `data`, loaded in VMX root. */
enum hv_exit_result hv_microcode_update(struct hv_cpu *cpu, UINT64 data);

/* icr_emulation.c (option apic_icr_emulation): an EPT violation that is a
 * store to the local APIC page, done for the guest; FALSE: not one. */
BOOLEAN hv_icr_emulate_apic_store(struct hv_cpu *cpu, struct hv_guest_regs *regs);
/* The guest's store to the local APIC page at `gpa`, decoded and done for it
 * (INIT and SIPI to CPUs that are guests recorded for them); FALSE when it
 * cannot be decoded (#GP injected). `length`: the instruction's. */
BOOLEAN hv_apic_store(struct hv_cpu *cpu, struct hv_guest_regs *regs, UINT64 gpa, UINTN *length);
UINT64 hv_apic_page(void);
void hv_x2apic_icr_write(struct hv_cpu *cpu, UINT64 value);
/* ... and this CPU's logical APIC destination, read before launch. */
void hv_icr_emulation_prepare(struct hv_cpu *cpu);

#endif /* UEFI_HV_EXITS_H */
