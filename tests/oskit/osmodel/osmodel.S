/* The OS model's assembly: the AP trampoline (real mode -> protected mode ->
 * long mode -> C), the exception stubs of the model's IDT, and the reload of CS
 * after the model switches to its own GDT. The trampoline is copied to a 4 KiB
 * page below 1 MiB (a SIPI vector names the page: SDM 10.4.4.1 "Typical BSP
 * Initialization Sequence", 12.6.1 "Interrupt Command Register (ICR)") and runs
 * there, at any address: the BSP fills the parameter block at its end, in the
 * copy. */

#define MODEL_CS64  0x08
#define MODEL_DS    0x10
#define MODEL_CS32  0x18
#define MODEL_TSS_A 0x20            /* 32-bit TSSes in the trampoline page */
#define MODEL_TSS_B 0x28
#define TASK_B_EAX  0x7A5CB0B0      /* what task B's TSS gives it in EAX */
#define EFLAGS_NT   (1 << 14)

#define CR0_PE      (1 << 0)
#define CR0_MP      (1 << 1)
#define CR0_EM      (1 << 2)
#define CR0_NE      (1 << 5)
#define CR0_NW      (1 << 29)
#define CR0_CD      (1 << 30)
#define CR0_PG      (1 << 31)
#define CR4_PAE     (1 << 5)
#define CR4_OSFXSR  (1 << 9)        /* SSE: gcc's code may use it */
#define CR4_OSXMMEXCPT (1 << 10)
#define MSR_EFER    0xC0000080
#define EFER_LME    (1 << 8)

    .text

/* ---- AP trampoline ------------------------------------------------------ */

    .globl osmodel_trampoline_start, osmodel_trampoline_end
    .globl osmodel_tr_gdtr, osmodel_tr_far32, osmodel_tr_far64
    .globl osmodel_tr_cr3, osmodel_tr_rsp, osmodel_tr_entry, osmodel_tr_arg
    .globl osmodel_tr_tss_a, osmodel_tr_tss_b, osmodel_tr_task_b_stack, osmodel_tr_task_switches

    .balign 4096
    .code16
osmodel_trampoline_start:
    /* After SIPI: real mode, CS = vector << 8, IP = 0 (SDM 10.4.4.1 "Typical
     * BSP Initialization Sequence"). */
    cli
    cld
    movw %cs, %bx
    movw %bx, %ds
    movzwl %bx, %ebx
    shll $4, %ebx                   /* EBX: the page's linear address */
    lgdtl (osmodel_tr_gdtr - osmodel_trampoline_start)
    movl %cr0, %eax
    andl $~(CR0_EM | CR0_CD | CR0_NW), %eax     /* INIT leaves caching off */
    orl $(CR0_PE | CR0_MP | CR0_NE), %eax
    movl %eax, %cr0
    /* A far jump loads CS from the new GDT: protected mode proper. */
    ljmpl *(osmodel_tr_far32 - osmodel_trampoline_start)

    .code32
tr_protected:
    movw $MODEL_DS, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* A task switch there and back, as a 32-bit OS makes them (SDM 9.3 "Task
     * Switching"): this AP's task is TSS A; a far CALL to TSS B nests task B
     * in it (NT, link), whose IRET comes back here. Under uefi-hv each exits
     * (SDM 27.4.2 "Treatment of Task Switches") and the hypervisor does it.
     * EBX, the page, survives only through TSS A. The APs start one at a
     * time; IRET leaves TSS A busy, cleared again for the next AP's LTR. */
    movw $MODEL_TSS_A, %ax
    ltr %ax
    lcall $MODEL_TSS_B, $0
    movl (osmodel_tr_gdtr + 2 - osmodel_trampoline_start)(%ebx), %eax
    andb $~0x02, (MODEL_TSS_A + 5)(%eax)          /* TSS A's type: busy -> available */
    /* SDM 11.8.5 "Initializing IA-32e Mode": PAE, CR3, EFER.LME, PG. */
    movl %cr4, %eax
    orl $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
    movl %eax, %cr4
    movl (osmodel_tr_cr3 - osmodel_trampoline_start)(%ebx), %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $CR0_PG, %eax
    movl %eax, %cr0
    ljmpl *(osmodel_tr_far64 - osmodel_trampoline_start)(%ebx)

    /* Task B: EAX and EBX come from its TSS, NT and TR say how it was
     * entered. It counts a correct entry in the page and returns by IRET; the
     * next CALL resumes it after the IRET, at the jump to its start. */
tr_task_b:
    pushfl
    popl %ecx
    str %dx
    cmpl $TASK_B_EAX, %eax
    jne 1f
    testl $EFLAGS_NT, %ecx
    jz 1f
    cmpw $MODEL_TSS_B, %dx
    jne 1f
    incl (osmodel_tr_task_switches - osmodel_trampoline_start)(%ebx)
1:  iretl
    jmp tr_task_b

    .code64
tr_long:
    movw $MODEL_DS, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq osmodel_tr_rsp(%rip), %rsp
    movq osmodel_tr_arg(%rip), %rdi
    callq *osmodel_tr_entry(%rip)
1:  cli
    hlt
    jmp 1b

    /* The parameter block, filled in by the BSP in the copy. */
    .balign 8
osmodel_tr_gdtr:                    /* lgdtl: 16-bit limit, 32-bit base */
    .word 0
    .long 0
    .word 0
osmodel_tr_far32:                   /* m16:32 -> tr_protected */
    .long 0
    .word MODEL_CS32
    .word 0
osmodel_tr_far64:                   /* m16:32 -> tr_long */
    .long 0
    .word MODEL_CS64
    .word 0
osmodel_tr_cr3:
    .quad 0
osmodel_tr_rsp:
    .quad 0
osmodel_tr_entry:
    .quad 0
osmodel_tr_arg:
    .quad 0
osmodel_tr_task_switches:           /* task B's correct entries */
    .long 0
    .balign 16
osmodel_tr_tss_a:                   /* 32-bit TSSes (SDM 9.2.1), 104 bytes */
    .fill 104, 1, 0
osmodel_tr_tss_b:
    .fill 104, 1, 0
    .fill 64, 1, 0
osmodel_tr_task_b_stack:
osmodel_trampoline_end:

    .globl osmodel_tr_protected_offset, osmodel_tr_long_offset
    .section .rodata
    .balign 8
osmodel_tr_protected_offset:
    .quad tr_protected - osmodel_trampoline_start
osmodel_tr_long_offset:
    .quad tr_long - osmodel_trampoline_start
    .globl osmodel_tr_task_b_offset
osmodel_tr_task_b_offset:
    .quad tr_task_b - osmodel_trampoline_start

/* ---- segment reload ------------------------------------------------------- */

    .text
    .code64
/* void osmodel_load_segments(void): CS from the model's GDT (a far return),
 * data segments after it. */
    .globl osmodel_load_segments
osmodel_load_segments:
    popq %rax                       /* return address */
    pushq $MODEL_CS64
    pushq %rax
    movw $MODEL_DS, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    lretq

/* ---- exceptions -------------------------------------------------------------- */

/* One stub per vector 0-31. Vectors with an error code (SDM 7.13 "Error Code";
 * 7.15 "Exception and Interrupt Reference": 8, 10-14, 17, 21, 29, 30) have it
 * pushed by the CPU; the others push 0 so that the frame is the same for all. */
    .macro exception_stub vector
    .balign 16
    .if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
    .else
    pushq $0
    .endif
    pushq $\vector
    jmp exception_common
    .endm

    .balign 16
    .globl osmodel_exception_stubs
osmodel_exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    exception_stub \v
    .endr

exception_common:
    /* frame: vector, error code, RIP, CS, RFLAGS, RSP, SS; below it the
     * caller-saved registers, RAX first (frame[-1]). 56 bytes of frame and
     * 72 of registers leave RSP 16-byte aligned for the call. */
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    leaq 72(%rsp), %rdi
    call osmodel_exception          /* 0: stop here; else resume at frame[2] */
    testq %rax, %rax
    jz 1f
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp                  /* vector, error code */
    iretq
1:  cli
    hlt
    jmp 1b

/* UINT64 osmodel_try_store(UINT64 *address, UINT64 value): 0, or 1 when the
 * store raised #GP (osmodel_exception resumes after it, RAX = 1). */
    .globl osmodel_try_store, osmodel_try_store_insn, osmodel_try_store_resume
osmodel_try_store:
    xorl %eax, %eax
osmodel_try_store_insn:
    movq %rsi, (%rdi)
osmodel_try_store_resume:
    ret

/* UINT64 osmodel_try_int32(void): 0, or the error code of the #GP that INT 32
 * raised (osmodel_exception resumes after it). */
    .globl osmodel_try_int32, osmodel_try_int32_insn, osmodel_try_int32_resume
osmodel_try_int32:
    xorl %eax, %eax
osmodel_try_int32_insn:
    int $32
osmodel_try_int32_resume:
    ret

    .section .note.GNU-stack, "", @progbits
