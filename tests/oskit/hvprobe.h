/* What a guest can see of uefi-hv: CPUID and the VMCALL ping.
 *
 * Shared by /init (oscheck.c, Linux user space, ring 3) and the OS model
 * (osmodel.c, an EFI program that runs as a kernel, ring 0), so both ask the
 * same questions the same way. Plain C types only: one side has glibc, the
 * other gnu-efi.
 *
 * The expected answers come from the spec, given by the build (-D):
 *   OSKIT_SIGNATURE      the 12-byte signature, "UefiHvUefiHv"
 *   OSKIT_VMCALL_PING    RAX of the ping (docs/vmcall.md: HV_VMCALL_BASE + 0)
 *   OSKIT_VMCALL_PONG    RBX of its answer
 */
#ifndef OSKIT_HVPROBE_H
#define OSKIT_HVPROBE_H

#if !defined(OSKIT_SIGNATURE) || !defined(OSKIT_VMCALL_PING) || !defined(OSKIT_VMCALL_PONG)
#error "build with -DOSKIT_SIGNATURE=... -DOSKIT_VMCALL_PING=... -DOSKIT_VMCALL_PONG=... (tests/oskit)"
#endif

#define HVPROBE_CPUID_HYPERVISOR_BIT 31     /* CPUID.1:ECX[31], "reserved for hypervisor use" */
/* CPUID.1:ECX[5], VMX (SDM 25.6 "Discovering Support for VMX") */
#define HVPROBE_CPUID_VMX_BIT        5
#define HVPROBE_LEAF_SIGNATURE       0x40000000U

struct hvprobe {
    unsigned int hypervisor_bit;    /* CPUID.1:ECX[31] */
    unsigned int vmx_bit;           /* CPUID.1:ECX[5] */
    unsigned int max_leaf;          /* CPUID.0x40000000:EAX */
    char signature[13];             /* CPUID.0x40000000 EBX:ECX:EDX, NUL-terminated */
    int ours;                       /* the bit is set and the signature is the spec's */
};

static inline void hvprobe_cpuid(unsigned int leaf, unsigned int subleaf, unsigned int r[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(subleaf));
}

static inline void hvprobe_run(struct hvprobe *p)
{
    static const char expected[] = OSKIT_SIGNATURE;
    unsigned int r[4];

    hvprobe_cpuid(1, 0, r);
    p->hypervisor_bit = (r[2] >> HVPROBE_CPUID_HYPERVISOR_BIT) & 1;
    p->vmx_bit = (r[2] >> HVPROBE_CPUID_VMX_BIT) & 1;
    /* Without the hypervisor bit, leaf 0x40000000 is not defined: on real
     * CPUs it returns the data of the highest basic leaf (SDM Vol. 2A, CPUID). */
    hvprobe_cpuid(HVPROBE_LEAF_SIGNATURE, 0, r);
    p->max_leaf = p->hypervisor_bit ? r[0] : 0;
    for (int i = 0; i < 4; i++) {
        p->signature[i] = p->hypervisor_bit ? (char)(r[1] >> (8 * i)) : 0;
        p->signature[4 + i] = p->hypervisor_bit ? (char)(r[2] >> (8 * i)) : 0;
        p->signature[8 + i] = p->hypervisor_bit ? (char)(r[3] >> (8 * i)) : 0;
    }
    p->signature[12] = 0;
    /* Show a signature as text: anything unprintable becomes '.'. */
    for (int i = 0; i < 12 && p->signature[i]; i++)
        if (p->signature[i] < 0x20 || p->signature[i] > 0x7E)
            p->signature[i] = '.';
    p->ours = p->hypervisor_bit;
    for (int i = 0; i < 12; i++)
        if (p->signature[i] != expected[i])
            p->ours = 0;
}

/* The hypervisor's call (docs/vmcall.md): VMCALL on an Intel CPU, VMMCALL on
 * an AMD one ("AuthenticAMD" or "HygonGenuine" in CPUID.0), where uefi-hv
 * runs its SVM backend. r[0..3]: RAX, RBX, RCX, RDX in and out. */
static inline void hvprobe_hypercall(unsigned long long r[4])
{
    unsigned int v[4];

    hvprobe_cpuid(0, 0, v);
    int amd = (v[1] == 0x68747541U && v[3] == 0x69746E65U && v[2] == 0x444D4163U) ||
              (v[1] == 0x6F677948U && v[3] == 0x6E65476EU && v[2] == 0x656E6975U);
    if (amd)
        __asm__ volatile("vmmcall" : "+a"(r[0]), "+b"(r[1]), "+c"(r[2]), "+d"(r[3]) : : "memory");
    else
        __asm__ volatile("vmcall" : "+a"(r[0]), "+b"(r[1]), "+c"(r[2]), "+d"(r[3]) : : "memory");
}

/* The ping of docs/vmcall.md: RAX = ping in, status out (0 = ok);
 * RBX = pong, RCX = the hypervisor's number for the calling CPU. */
static inline unsigned long long hvprobe_vmcall_ping(unsigned long long *pong,
                                                     unsigned long long *cpu)
{
    unsigned long long r[4] = { OSKIT_VMCALL_PING, 0, 0, 0 };

    hvprobe_hypercall(r);
    *pong = r[1];
    *cpu = r[2];
    return r[0];
}

#endif
