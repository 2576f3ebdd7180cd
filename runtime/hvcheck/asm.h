/*
 * hvcheck's assembly macros, for the instructions it tries that may fault
 * (hvcheck_asm.S, fuzz_asm.S): a routine names the point after its
 * instruction where a #UD or #GP resumes, and returns the vector that
 * instruction raised (6, 13), or 0.
 * hvcheck_ud_handler and hvcheck_gp_handler (in IDT vectors 6 and 13 while
 * such a routine runs, from ring 0 or ring 3) record the vector and the
 * RFLAGS image the fault pushed, and resume there.
 */
#ifndef HVCHECK_ASM_H
#define HVCHECK_ASM_H

/* The routine's resume point, and no fault yet (RAX is scratch). */
.macro FAULT_RESUMES_AT label
    lea \label(%rip), %rax
    mov %rax, hvcheck_fault_resume(%rip)
    movq $0, hvcheck_fault_vector(%rip)
.endm

/* The hypervisor's call instruction (docs/vmcall.md): VMCALL on an Intel
 * CPU, VMMCALL on an AMD one (hvcheck_amd, set at start). Flags are scratch. */
.macro HYPERCALL
    cmpb $0, hvcheck_amd(%rip)
    jne 8f
    vmcall
    jmp 9f
8:  vmmcall
9:
.endm

/* At the resume point: the routine's result. */
.macro RETURN_FAULT_VECTOR
    mov hvcheck_fault_vector(%rip), %rax
.endm

#endif /* HVCHECK_ASM_H */
