/*
 * The processor instructions the hypervisor needs, as inline functions.
 * VMX instructions report failure in RFLAGS (SDM 32.2 "Conventions"):
 * CF=1 is VMfailInvalid (no current VMCS), ZF=1 VMfailValid (the reason is
 * in VM_INSTRUCTION_ERROR). Each wrapper returns 0, 1 (CF) or 2 (ZF).
 */
#ifndef UEFI_HV_CPU_H
#define UEFI_HV_CPU_H

#include <efi.h>

/* Control-register and EFER bits (SDM Vol. 3A 2.5 "Control Registers", 2.2.1
 * "Extended Feature Enable Register"). */
#define X86_CR0_PE      (1ULL << 0)
#define X86_CR0_TS      (1ULL << 3)
#define X86_CR0_NW      (1ULL << 29)
#define X86_CR0_CD      (1ULL << 30)
#define X86_CR0_PG      (1ULL << 31)
#define X86_CR4_PSE     (1ULL << 4)
#define X86_CR4_PAE     (1ULL << 5)
#define X86_CR4_LA57    (1ULL << 12)
#define X86_CR4_VMXE    (1ULL << 13)
#define X86_CR4_OSXSAVE (1ULL << 18)
#define X86_EFER_LME    (1ULL << 8)
#define X86_EFER_LMA    (1ULL << 10)

#define VMX_OK           0
#define VMX_FAIL_INVALID 1
#define VMX_FAIL_VALID   2

struct hv_dtr {
    UINT16 limit;
    UINT64 base;
} __attribute__((packed));

static inline UINT64 rdmsr(UINT32 msr)
{
    UINT32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (UINT64)hi << 32 | lo;
}

static inline void wrmsr(UINT32 msr, UINT64 value)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((UINT32)value), "d"((UINT32)(value >> 32)) : "memory");
}

static inline void cpuid(UINT32 leaf, UINT32 subleaf, UINT32 out[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                     : "a"(leaf), "c"(subleaf));
}

#define DEFINE_READ_CR(n)                                 \
    static inline UINT64 read_cr##n(void)                 \
    {                                                     \
        UINT64 v;                                         \
        __asm__ volatile("mov %%cr" #n ", %0" : "=r"(v)); \
        return v;                                         \
    }
DEFINE_READ_CR(0)
DEFINE_READ_CR(2)
DEFINE_READ_CR(3)
DEFINE_READ_CR(4)
DEFINE_READ_CR(8)

static inline void write_cr0(UINT64 v)
{
    __asm__ volatile("mov %0, %%cr0" : : "r"(v) : "memory");
}
static inline void write_cr4(UINT64 v)
{
    __asm__ volatile("mov %0, %%cr4" : : "r"(v) : "memory");
}
static inline void write_cr8(UINT64 v)
{
    __asm__ volatile("mov %0, %%cr8" : : "r"(v) : "memory");
}

static inline UINT64 read_dr7(void)
{
    UINT64 v;
    __asm__ volatile("mov %%dr7, %0" : "=r"(v));
    return v;
}

static inline UINT64 read_rflags(void)
{
    UINT64 v;
    __asm__ volatile("pushfq; popq %0" : "=r"(v));
    return v;
}
static inline void write_rflags(UINT64 v)
{
    __asm__ volatile("pushq %0; popfq" : : "r"(v) : "memory", "cc");
}
static inline void cli(void)
{
    __asm__ volatile("cli" ::: "memory");
}
static inline void cpu_pause(void)
{
    __asm__ volatile("pause" ::: "memory");
}
static inline UINT64 rdtsc(void)
{
    UINT32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (UINT64)hi << 32 | lo;
}

static inline void sgdt(struct hv_dtr *d)
{
    __asm__ volatile("sgdt %0" : "=m"(*d));
}
static inline void sidt(struct hv_dtr *d)
{
    __asm__ volatile("sidt %0" : "=m"(*d));
}
static inline void lgdt(const struct hv_dtr *d)
{
    __asm__ volatile("lgdt %0" : : "m"(*d) : "memory");
}
static inline void lidt(const struct hv_dtr *d)
{
    __asm__ volatile("lidt %0" : : "m"(*d) : "memory");
}

#define DEFINE_READ_SEL(seg)                              \
    static inline UINT16 read_##seg(void)                 \
    {                                                     \
        UINT16 v;                                         \
        __asm__ volatile("mov %%" #seg ", %0" : "=r"(v)); \
        return v;                                         \
    }
DEFINE_READ_SEL(cs)
DEFINE_READ_SEL(ss)
DEFINE_READ_SEL(ds)
DEFINE_READ_SEL(es)
DEFINE_READ_SEL(fs)
DEFINE_READ_SEL(gs)
static inline UINT16 read_tr(void)
{
    UINT16 v;
    __asm__ volatile("str %0" : "=r"(v));
    return v;
}
static inline UINT16 read_ldtr(void)
{
    UINT16 v;
    __asm__ volatile("sldt %0" : "=r"(v));
    return v;
}

/* LSL/LAR: segment limit and access rights as the processor sees them;
 * ZF clear means the selector is not valid (null, or beyond the table). */
static inline BOOLEAN lsl(UINT16 sel, UINT32 *limit)
{
    UINT8 ok;
    UINT32 v = 0;
    __asm__ volatile("lsl %2, %0; setz %1" : "=r"(v), "=qm"(ok) : "r"((UINT32)sel) : "cc");
    *limit = v;
    return ok;
}

static inline BOOLEAN lar(UINT16 sel, UINT32 *rights)
{
    UINT8 ok;
    UINT32 v = 0;
    __asm__ volatile("lar %2, %0; setz %1" : "=r"(v), "=qm"(ok) : "r"((UINT32)sel) : "cc");
    *rights = v;
    return ok;
}

static inline void outb(UINT16 port, UINT8 v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline UINT8 inb(UINT16 port)
{
    UINT8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void outw(UINT16 port, UINT16 v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}
static inline UINT16 inw(UINT16 port)
{
    UINT16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void outl(UINT16 port, UINT32 v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}
static inline UINT32 inl(UINT16 port)
{
    UINT32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline UINT8 vmx_status(UINT8 cf, UINT8 zf)
{
    return cf ? VMX_FAIL_INVALID : zf ? VMX_FAIL_VALID : VMX_OK;
}

static inline UINT8 vmxon(UINT64 pa)
{
    UINT8 cf, zf;
    __asm__ volatile("vmxon %2; setc %0; setz %1" : "=qm"(cf), "=qm"(zf) : "m"(pa) : "cc", "memory");
    return vmx_status(cf, zf);
}

static inline void vmxoff(void)
{
    __asm__ volatile("vmxoff" ::: "cc", "memory");
}

static inline UINT8 vmclear(UINT64 pa)
{
    UINT8 cf, zf;
    __asm__ volatile("vmclear %2; setc %0; setz %1" : "=qm"(cf), "=qm"(zf) : "m"(pa) : "cc", "memory");
    return vmx_status(cf, zf);
}

static inline UINT8 vmptrld(UINT64 pa)
{
    UINT8 cf, zf;
    __asm__ volatile("vmptrld %2; setc %0; setz %1" : "=qm"(cf), "=qm"(zf) : "m"(pa) : "cc", "memory");
    return vmx_status(cf, zf);
}

static inline UINT64 vmread(UINT32 field)
{
    UINT64 v = 0;
    __asm__ volatile("vmread %1, %0" : "=r"(v) : "r"((UINT64)field) : "cc");
    return v;
}

static inline UINT8 vmwrite(UINT32 field, UINT64 value)
{
    UINT8 cf, zf;
    __asm__ volatile("vmwrite %2, %3; setc %0; setz %1"
                     : "=qm"(cf), "=qm"(zf)
                     : "r"(value), "r"((UINT64)field)
                     : "cc", "memory");
    return vmx_status(cf, zf);
}

/* INVEPT and INVVPID (SDM 32.3 "VMX Instructions"): `type` as the SDM numbers the
 * invalidations (1 single-context, 2 all-context), the 128-bit descriptor
 * in memory. Only where IA32_VMX_EPT_VPID_CAP says the type is supported. */
static inline void invept(UINT64 type, UINT64 eptp)
{
    struct {
        UINT64 eptp, reserved;
    } desc = { eptp, 0 };
    __asm__ volatile("invept %0, %1" ::"m"(desc), "r"(type) : "cc", "memory");
}

static inline void invvpid(UINT64 type, UINT16 vpid)
{
    struct {
        UINT64 vpid, address;
    } desc = { vpid, 0 };
    __asm__ volatile("invvpid %0, %1" ::"m"(desc), "r"(type) : "cc", "memory");
}

static inline void wbinvd(void)
{
    __asm__ volatile("wbinvd" ::: "memory");
}

static inline __attribute__((noreturn)) void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt" ::: "memory");
}

#endif /* UEFI_HV_CPU_H */
