/*
 * The seed's interrupt path (interrupts.c, interrupts.S): external-interrupt
 * exits acknowledged on exit, dispatched through the host IDT found at the
 * spec's global (host_idt_base in the default spec), and the interrupts queued
 * for the guest.
 */
#ifndef UEFI_HV_INTERRUPTS_H
#define UEFI_HV_INTERRUPTS_H

#include "hv.h"

/* Before any CPU is prepared: the per-CPU pending bitmaps and counters. */
EFI_STATUS hv_irq_init(void);
/* The handler host IDT vector `vector` (32..255) points at. */
UINT64 hv_irq_host_gate(UINT32 vector);
/* Exit reason 1, external interrupt: count it and call the host's handler. */
void hv_irq_exit(struct hv_cpu *cpu);
/* Exit reason 7, interrupt window: the guest can take an interrupt now. */
void hv_irq_window_exit(struct hv_cpu *cpu);
/* The tail of every VM exit, before VMRESUME: re-inject an interrupted event,
 * inject the highest pending vector, or ask for the interrupt window. */
void hv_irq_before_entry(struct hv_cpu *cpu);
/* External-interrupt exits of a CPU on a vector (the VMCALL GET_IRQ_COUNT). */
UINT64 hv_irq_count(const struct hv_cpu *cpu, UINT32 vector);
#if HV_ACTION_DISPATCH_IDT
/* The VMCALL RAISE_VECTOR: queue `vector` for this CPU's guest as if the
 * controller had delivered it; FALSE (and nothing queued) for a vector below
 * 32, above 255 or owned by the spec. */
BOOLEAN hv_irq_raise(struct hv_cpu *cpu, UINT32 vector);
#endif

#endif /* UEFI_HV_INTERRUPTS_H */
