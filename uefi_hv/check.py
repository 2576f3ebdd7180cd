"""check: the Intel SDM's rules that can be decided from a spec, one small
function each, with a stable id and the SDM section it comes from; and the
AMD APM's rules on the VMCB catalogue (dsl/vmcb.hv).

Every section is one of `SDM_SECTIONS`, numbered as in `SDM_EDITION`, or
one of `APM_SECTIONS` of `APM_EDITION`.

What only the CPU can decide (fixed CR0/CR4 bits, allowed control settings
from the capability MSRs) is returned by `runtime_rules()` as data; the
generator turns each rule into a named check run just before VMLAUNCH.

Also the home of `uefi-hv check`, `uefi-hv fields` and `uefi-hv explain`.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from uefi_hv import DSL_DIR
from uefi_hv import model as m
from uefi_hv.errors import UsageError
from uefi_hv.diagnostics import Diagnostic, SpecError, did_you_mean, source_line
from uefi_hv.parse import load_spec, parse_text

__all__ = ["CHECKS", "CheckInfo", "Diagnostic", "SpecError", "check_spec", "load_and_check",
           "runtime_rules", "checks_markdown", "cmd_check", "cmd_fields", "cmd_explain", "vmrun_checks"]


#: The one edition of the Intel SDM whose section numbers the project cites.
SDM_EDITION = ("Intel 64 and IA-32 Architectures Software Developer's Manual, combined volumes "
               "(order number 325462), the 2025 numbering: VMX in Vol. 3C chapters 25-32, "
               "28 \"VM Entries\", 29 \"VM Exits\"")

#: The SDM sections the checks and run-time rules cite -> their titles.
SDM_SECTIONS = {
    "3.3.7.1": "Canonical Addressing",
    "25.8": "Restrictions on VMX Operation",
    "26.6.2": "Processor-Based VM-Execution Controls",
    "26.6.9": "MSR-Bitmap Address",
    "26.7.1": "VM-Exit Controls",
    "27.1.3": "Instructions That Cause VM Exits Conditionally",
    "28.2.1": "Checks on VMX Controls",
    "28.2.1.1": "VM-Execution Control Fields",
    "28.2.1.2": "VM-Exit Control Fields",
    "28.2.1.3": "VM-Entry Control Fields",
    "28.2.2": "Checks on Host Control Registers, MSRs, and SSP",
    "28.2.3": "Checks on Host Segment and Descriptor-Table Registers",
    "28.2.4": "Checks Related to Address-Space Size",
    "28.7.5": "Interrupt-Window Exiting and Virtual-Interrupt Delivery",
    "29.2.2": "Information for VM Exits Due to Vectored Events",
    "29.5": "Loading Host State",
    "29.5.2": "Loading Host Segment and Descriptor-Table Registers",
    "34.4": "Microcode Update Facility",
    "34.4.2": "Late Load of Microcode Updates",
    "Appendix A.3": "VM-Execution Controls",
    "Appendix A.4": "VM-Exit Controls",
    "Appendix A.5": "VM-Entry Controls",
    "Appendix B": "Field Encoding in VMCS",
}


#: The AMD manual the VMCB catalogue's checks cite.
APM_EDITION = ("AMD64 Architecture Programmer's Manual, Volume 2: System Programming (publication 24593): "
               "SVM in chapter 15")

#: The APM vol. 2 sections the checks and the catalogue's VMRUN checks cite -> their titles.
APM_SECTIONS = m.APM_SECTIONS


def apm(*numbers: str) -> str:
    """The section string of a check on the VMCB catalogue: "APM vol. 2 Appendix B"."""
    unknown = [n for n in numbers if n not in APM_SECTIONS]
    if unknown:
        raise KeyError(f"APM section {', '.join(unknown)} is not in check.APM_SECTIONS")
    return "APM vol. 2 " + ", ".join(numbers)


def sdm(*numbers: str) -> str:
    """The section string of a check or rule: "SDM 28.2.3" (several: "SDM 25.8, 28.2.2").
    Each number must be in SDM_SECTIONS, so that its title is known."""
    unknown = [n for n in numbers if n not in SDM_SECTIONS]
    if unknown:
        raise KeyError(f"SDM section {', '.join(unknown)} is not in check.SDM_SECTIONS")
    return "SDM " + ", ".join(numbers)


def cited(section: str) -> str:
    """A section with its titles, as docs and `uefi-hv explain` show it:
    'SDM 28.2.3 "Checks on Host Segment and Descriptor-Table Registers"'."""
    for prefix, titles in (("SDM ", SDM_SECTIONS), ("APM vol. 2 ", APM_SECTIONS)):
        if section.startswith(prefix):
            numbers = section[len(prefix):].split(", ")
            return prefix + ", ".join(f'{n} "{titles[n]}"' for n in numbers)
    return section


@dataclass(frozen=True)
class CheckInfo:
    id: str                 # stable: tests, docs and `uefi-hv explain` use it
    section: str            # sdm("28.2.3"), apm("Appendix B"), or "docs/dsl.md#..." for the language's own rules
    title: str
    text: str               # the rule in words (the function's docstring)
    fn: Callable
    severity: str = "error"


CHECKS: dict[str, CheckInfo] = {}


def check(id: str, section: str, title: str, severity: str = "error"):
    """Register a check: fn(ctx) yields (message, loc) for each violation."""
    def register(fn):
        CHECKS[id] = CheckInfo(id, section, title, inspect.cleandoc(fn.__doc__ or title), fn, severity)
        return fn
    return register


# --- what the checks read ------------------------------------------------------------

class Ctx:
    """The spec, indexed the way the checks ask about it."""

    def __init__(self, spec: m.Spec):
        self.spec = spec
        self.host: dict[str, m.HostAssign] = {}
        for a in spec.host_state:
            self.host.setdefault(a.field, a)
        self.reqs: dict[str, m.ControlReq] = {}
        for r in spec.control_reqs:
            self.reqs.setdefault(r.control, r)
        self.globals: dict[str, m.Global] = {}
        for g in spec.globals:
            self.globals.setdefault(g.name, g)
        self.handlers: dict[str, m.ExitHandler] = {}
        for h in spec.exits:
            self.handlers.setdefault(h.reason, h)

    def wants(self, control: str) -> bool:
        """Requested at all (required or preferred)."""
        return control in self.reqs

    def requires(self, control: str) -> bool:
        return control in self.reqs and self.reqs[control].required

    def value(self, field: str) -> Optional[int]:
        """The host field's value when the spec fixes it (a constant, or a
        global holding a constant), else None."""
        a = self.host.get(field)
        return self.constant(a.source) if a else None

    def constant(self, source) -> Optional[int]:
        if isinstance(source, m.Const):
            return source.value
        if isinstance(source, m.GlobalRef) and source.name in self.globals:
            g = self.globals[source.name].source
            return g.value if isinstance(g, m.Const) else None
        return None

    def loc(self, field: str) -> Optional[m.Loc]:
        a = self.host.get(field)
        return a.loc if a else self.host_block_loc()

    def req_loc(self, control: str) -> Optional[m.Loc]:
        r = self.reqs.get(control)
        return r.loc if r else self.host_block_loc()

    def host_block_loc(self) -> m.Loc:
        own = [a.loc for a in self.spec.host_state if a.loc and a.loc.file == self.spec.file]
        return own[0] if own else m.Loc(self.spec.file, 1, 1)

    def field_exists(self, name: str) -> bool:
        f = self.spec.fields.get(name)
        return f is not None and (f.exists_when is None or self.wants(f.exists_when))


SELECTORS = ("HOST_ES_SELECTOR", "HOST_CS_SELECTOR", "HOST_SS_SELECTOR", "HOST_DS_SELECTOR",
             "HOST_FS_SELECTOR", "HOST_GS_SELECTOR", "HOST_TR_SELECTOR")
BASES = ("HOST_FS_BASE", "HOST_GS_BASE", "HOST_GDTR_BASE", "HOST_IDTR_BASE", "HOST_TR_BASE")
SYSENTER = ("HOST_IA32_SYSENTER_ESP", "HOST_IA32_SYSENTER_EIP")
CR4_PAE = 1 << 5
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
PAT_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB", 7: "UC-"}


def canonical(value: int) -> bool:
    """48-bit linear addresses: bits 63:47 all equal (SDM 3.3.7.1 "Canonical Addressing"). A CPU with
    5-level paging allows more; a spec that is canonical here is canonical there."""
    top = value >> 47
    return top == 0 or top == (1 << 17) - 1


# --- host state: SDM 28.2.2 - 28.2.4, 29.5 ----------------------------------------

@check("HOST-SOURCE", sdm("29.5"), "every host-state field has a source")
def check_host_sources(ctx: Ctx):
    """Every VM exit loads the processor's state from the host-state area
    (SDM 29.5 "Loading Host State"), so every host-state field the CPU will use
    must be given a value in `host_state`: all unconditional ones, and those
    whose control the spec asks for (e.g. HOST_IA32_EFER with exit.load_ia32_efer)."""
    missing = [name for name, f in ctx.spec.fields.items()
               if f.type == "host" and name not in ctx.host and ctx.field_exists(name)]
    if missing:
        yield (f"host_state gives no source for {', '.join(missing)}; every VM exit loads "
               f"{'it' if len(missing) == 1 else 'them'} (add `{missing[0]} = ...`)", ctx.host_block_loc())


@check("HOST-SEL-RPL-TI", sdm("28.2.3"), "host selectors have RPL and TI zero")
def check_selector_rpl_ti(ctx: Ctx):
    """In the selector fields for ES, CS, SS, DS, FS, GS and TR, the RPL
    (bits 1:0) and the TI flag (bit 2) must be 0: the host runs at CPL 0 from
    its GDT."""
    for name in SELECTORS:
        v = ctx.value(name)
        if v is not None and v & 7:
            yield (f"{name} = {v:#x} has {'RPL ' + str(v & 3) if v & 3 else ''}"
                   f"{' and ' if v & 3 and v & 4 else ''}{'TI set' if v & 4 else ''}; "
                   f"use {v & ~7:#x}", ctx.loc(name))


@check("HOST-CS-NONZERO", sdm("28.2.3"), "host CS selector is not 0")
def check_cs_nonzero(ctx: Ctx):
    """The selector field for CS cannot be 0000H."""
    if ctx.value("HOST_CS_SELECTOR") == 0:
        yield "HOST_CS_SELECTOR is 0; give the host's code segment (e.g. 0x08)", ctx.loc("HOST_CS_SELECTOR")


@check("HOST-TR-NONZERO", sdm("28.2.3"), "host TR selector is not 0")
def check_tr_nonzero(ctx: Ctx):
    """The selector field for TR cannot be 0000H: the host needs a TSS."""
    if ctx.value("HOST_TR_SELECTOR") == 0:
        yield "HOST_TR_SELECTOR is 0; give the selector of the host TSS", ctx.loc("HOST_TR_SELECTOR")


@check("HOST-SS-NULL", sdm("28.2.3"), "host SS is 0 only in a 64-bit host")
def check_ss_null(ctx: Ctx):
    """The selector field for SS may be 0000H only if the "host address-space
    size" VM-exit control is 1."""
    if ctx.value("HOST_SS_SELECTOR") == 0 and not ctx.requires("exit.host_address_space_size"):
        yield ("HOST_SS_SELECTOR is 0 but exit.host_address_space_size is not required; "
               "require it or give a data selector", ctx.loc("HOST_SS_SELECTOR"))


@check("HOST-64BIT", sdm("28.2.4"), "the 64-bit host has host-address-space-size set")
def check_host_64bit(ctx: Ctx):
    """uefi-hv runs as a 64-bit UEFI application, so VM exits must return to
    64-bit mode: the "host address-space size" VM-exit control must be 1. It
    must be `require`d: were it dropped at run time the exit would load a
    32-bit host."""
    r = ctx.reqs.get("exit.host_address_space_size")
    if r is None:
        yield ("the host is 64-bit: add `require exit.host_address_space_size` to controls",
               ctx.spec.control_reqs[0].loc if ctx.spec.control_reqs else ctx.host_block_loc())
    elif not r.required:
        yield "exit.host_address_space_size must be `require`, not `prefer`: the host is 64-bit", r.loc


@check("HOST-CR4-PAE", sdm("28.2.4"), "a 64-bit host has CR4.PAE set")
def check_cr4_pae(ctx: Ctx):
    """If the "host address-space size" VM-exit control is 1, bit 5 of the
    CR4 field (CR4.PAE) must be 1. Checked here when HOST_CR4 is a constant,
    at run time on the value written otherwise (rule host_64bit)."""
    v = ctx.value("HOST_CR4")
    if v is not None and ctx.wants("exit.host_address_space_size") and not v & CR4_PAE:
        yield f"HOST_CR4 = {v:#x} lacks PAE (bit 5); a 64-bit host needs it: {v | CR4_PAE:#x}", ctx.loc("HOST_CR4")


@check("HOST-CR3-WIDTH", sdm("28.2.2"), "host CR3 fits the physical-address width")
def check_cr3_width(ctx: Ctx):
    """The CR3 field must be such that bits 63:52 are 0 (no processor's
    physical-address width exceeds 52 bits; the CPU's own width is checked by
    VM entry)."""
    v = ctx.value("HOST_CR3")
    if v is not None and v >> 52:
        yield f"HOST_CR3 = {v:#x} sets bits above bit 51", ctx.loc("HOST_CR3")


def _canonical_fields(ctx: Ctx, names) -> Iterator:
    for name in names:
        v = ctx.value(name)
        if v is not None and not canonical(v):
            yield f"{name} = {v:#x} is not canonical (bits 63:47 must all equal bit 47)", ctx.loc(name)


@check("HOST-BASE-CANONICAL", sdm("28.2.3"), "host FS/GS/GDTR/IDTR/TR bases are canonical")
def check_bases_canonical(ctx: Ctx):
    """On a processor that supports Intel 64, the base-address fields for
    FS, GS, GDTR, IDTR and TR must contain canonical addresses."""
    yield from _canonical_fields(ctx, BASES)


@check("HOST-SYSENTER-CANONICAL", sdm("28.2.2"), "host SYSENTER ESP/EIP are canonical")
def check_sysenter_canonical(ctx: Ctx):
    """The IA32_SYSENTER_ESP and IA32_SYSENTER_EIP fields must each contain a
    canonical address."""
    yield from _canonical_fields(ctx, SYSENTER)


@check("HOST-RIP-CANONICAL", sdm("28.2.4"), "host RIP is canonical")
def check_rip_canonical(ctx: Ctx):
    """If the "host address-space size" VM-exit control is 1, the RIP field
    must contain a canonical address."""
    yield from _canonical_fields(ctx, ("HOST_RIP",))


@check("HOST-EFER", sdm("28.2.2"), "host IA32_EFER is consistent with a 64-bit host")
def check_efer(ctx: Ctx):
    """If the "load IA32_EFER" VM-exit control is 1, the IA32_EFER field's
    reserved bits must be 0 and its LMA (bit 10) and LME (bit 8) bits must
    each equal the "host address-space size" control (1 here)."""
    if not ctx.wants("exit.load_ia32_efer"):
        return
    v = ctx.value("HOST_IA32_EFER")
    if v is None:
        return
    reserved = v & ~(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)
    if reserved:
        yield f"HOST_IA32_EFER = {v:#x} sets reserved bits {reserved:#x}", ctx.loc("HOST_IA32_EFER")
    host64 = ctx.wants("exit.host_address_space_size")
    for bit, name in ((EFER_LMA, "LMA"), (EFER_LME, "LME")):
        if bool(v & bit) != host64:
            yield (f"HOST_IA32_EFER.{name} is {int(bool(v & bit))} but host-address-space-size is "
                   f"{int(host64)}; they must be equal", ctx.loc("HOST_IA32_EFER"))


@check("HOST-PAT", sdm("28.2.2"), "host IA32_PAT holds valid memory types")
def check_pat(ctx: Ctx):
    """If the "load IA32_PAT" VM-exit control is 1, each of the 8 bytes of the
    IA32_PAT field must be a valid memory type: 0 (UC), 1 (WC), 4 (WT),
    5 (WP), 6 (WB) or 7 (UC-)."""
    v = ctx.value("HOST_IA32_PAT")
    if v is None or not ctx.wants("exit.load_ia32_pat"):
        return
    bad = [f"byte {i} is {v >> 8 * i & 0xFF:#x}" for i in range(8) if v >> 8 * i & 0xFF not in PAT_TYPES]
    if bad:
        yield (f"HOST_IA32_PAT = {v:#x}: {', '.join(bad)}; memory types are 0 (UC), 1 (WC), 4 (WT), "
               f"5 (WP), 6 (WB), 7 (UC-)", ctx.loc("HOST_IA32_PAT"))


# --- VM-execution, VM-exit and VM-entry controls: SDM 26.6 - 26.8, 28.2.1 ---------

def _needs(ctx: Ctx, control: str, needed: str, why: str = ""):
    """`control` asked for without `needed`, or required while `needed` is only preferred."""
    if not ctx.wants(control):
        return
    if not ctx.wants(needed):
        yield f"{control} needs {needed}{why}; add it to controls", ctx.req_loc(control)
    elif ctx.requires(control) and not ctx.requires(needed):
        yield (f"{control} is required but {needed}, which it needs, is only preferred; "
               f"require both or prefer both", ctx.req_loc(control))


@check("CTL-SECONDARY", sdm("26.6.2"), "secondary controls need activate-secondary-controls")
def check_secondary_active(ctx: Ctx):
    """The secondary processor-based controls (EPT, VPID, unrestricted guest,
    RDTSCP, INVPCID, XSAVES ...) are used only if the "activate secondary
    controls" primary control is 1; otherwise VM entry treats them all as 0."""
    for r in ctx.spec.control_reqs:
        if r.control.startswith("proc2.") and ctx.reqs.get(r.control) is r:
            yield from _needs(ctx, r.control, "proc.activate_secondary_controls")


@check("CTL-UG-EPT", sdm("28.2.1.1"), "unrestricted guest needs EPT")
def check_ug_needs_ept(ctx: Ctx):
    """If the "unrestricted guest" VM-execution control is 1, the "enable EPT"
    control must be 1. (The generated code drops unrestricted guest at run
    time when EPT is dropped.)"""
    yield from _needs(ctx, "proc2.unrestricted_guest", "proc2.enable_ept")


@check("CTL-ACK-EXTINT", sdm("26.7.1"), "ack-interrupt-on-exit without external-interrupt exiting",
       severity="warning")
def check_ack_without_extint(ctx: Ctx):
    """"Acknowledge interrupt on exit" only affects VM exits caused by external
    interrupts; without "external-interrupt exiting" it does nothing."""
    if ctx.wants("exit.ack_interrupt_on_exit") and not ctx.wants("pin.external_interrupt_exiting"):
        yield ("exit.ack_interrupt_on_exit does nothing without pin.external_interrupt_exiting",
               ctx.req_loc("exit.ack_interrupt_on_exit"))


@check("CTL-VIRTUAL-NMI", sdm("28.2.1.1"), "virtual NMIs need NMI exiting; NMI-window exiting needs virtual NMIs")
def check_virtual_nmis(ctx: Ctx):
    """If "NMI exiting" is 0, "virtual NMIs" must be 0; if "virtual NMIs" is
    0, "NMI-window exiting" must be 0."""
    yield from _needs(ctx, "pin.virtual_nmis", "pin.nmi_exiting")
    yield from _needs(ctx, "proc.nmi_window_exiting", "pin.virtual_nmis")


@check("CTL-POSTED-INTR", sdm("28.2.1.1"), "posted interrupts need virtual-interrupt delivery and ack-on-exit")
def check_posted_interrupts(ctx: Ctx):
    """If "process posted interrupts" is 1, "virtual-interrupt delivery" and
    the "acknowledge interrupt on exit" VM-exit control must be 1."""
    yield from _needs(ctx, "pin.process_posted_interrupts", "proc2.virtual_interrupt_delivery")
    yield from _needs(ctx, "pin.process_posted_interrupts", "exit.ack_interrupt_on_exit")


@check("CTL-APIC-VIRT", sdm("28.2.1.1"), "APIC virtualization controls and their prerequisites")
def check_apic_virtualization(ctx: Ctx):
    """If "use TPR shadow" is 0, "virtualize x2APIC mode", "APIC-register
    virtualization" and "virtual-interrupt delivery" must be 0; if
    "virtualize x2APIC mode" is 1, "virtualize APIC accesses" must be 0;
    "virtual-interrupt delivery" needs "external-interrupt exiting"."""
    for c in ("proc2.virtualize_x2apic_mode", "proc2.apic_register_virtualization",
              "proc2.virtual_interrupt_delivery"):
        yield from _needs(ctx, c, "proc.use_tpr_shadow")
    yield from _needs(ctx, "proc2.virtual_interrupt_delivery", "pin.external_interrupt_exiting")
    if ctx.wants("proc2.virtualize_x2apic_mode") and ctx.wants("proc2.virtualize_apic_accesses"):
        yield ("proc2.virtualize_x2apic_mode and proc2.virtualize_apic_accesses exclude each other",
               ctx.req_loc("proc2.virtualize_x2apic_mode"))


@check("CTL-PREEMPT-SAVE", sdm("28.2.1.2"), "saving the preemption timer needs the timer")
def check_preemption_save(ctx: Ctx):
    """If "activate VMX-preemption timer" is 0, the "save VMX-preemption timer
    value" VM-exit control must be 0."""
    yield from _needs(ctx, "exit.save_vmx_preemption_timer_value", "pin.activate_vmx_preemption_timer")


@check("CTL-ENTRY-SMM", sdm("28.2.1.3"), "no entry to SMM outside SMM")
def check_entry_smm(ctx: Ctx):
    """VM entry from outside SMM requires the "entry to SMM" and "deactivate
    dual-monitor treatment" VM-entry controls to be 0; uefi-hv never runs in SMM."""
    for c in ("entry.entry_to_smm", "entry.deactivate_dual_monitor_treatment"):
        if ctx.wants(c):
            yield f"{c} must be 0: VM entry from outside SMM fails with it", ctx.req_loc(c)


# --- MSR bitmap: SDM 26.6.9 -------------------------------------------------------

@check("MSR-BITMAP-CONTROL", sdm("26.6.9"), "msr_bitmap intercepts need use-MSR-bitmaps")
def check_msr_bitmap_control(ctx: Ctx):
    """The MSR bitmaps are consulted only if "use MSR bitmaps" is 1; without
    it every RDMSR and WRMSR exits and the intercept list means nothing."""
    if ctx.spec.msr_intercepts and not ctx.wants("proc.use_msr_bitmaps"):
        yield "msr_bitmap lists intercepts but proc.use_msr_bitmaps is not in controls", \
            ctx.spec.msr_intercepts[0].loc


@check("MSR-BITMAP-RANGE", sdm("26.6.9"), "intercepted MSRs lie in the bitmap's ranges", severity="warning")
def check_msr_ranges(ctx: Ctx):
    """The MSR bitmaps cover MSRs 0-1FFFH and C0000000H-C0001FFFH; RDMSR and
    WRMSR of any other MSR always exit, so listing it changes nothing."""
    for i in ctx.spec.msr_intercepts:
        if not (i.last <= 0x1FFF or 0xC0000000 <= i.first and i.last <= 0xC0001FFF):
            what = f"MSR {i.first:#x} is" if i.first == i.last else f"MSRs {i.first:#x} .. {i.last:#x} are"
            yield (f"{what} outside the MSR bitmap's ranges (0-0x1fff, 0xc0000000-0xc0001fff); "
                   f"RDMSR/WRMSR there always exit"), i.loc


@check("MSR-HANDLER", "docs/dsl.md#msr-bitmap", "intercepted MSR accesses have a handler")
def check_msr_handler(ctx: Ctx):
    """An intercepted RDMSR (WRMSR) exits with reason rdmsr (wrmsr); that exit
    must be answered by the `msr` action, which applies the intercepts."""
    for access, reason in (("read", "rdmsr"), ("write", "wrmsr")):
        first = next((i for i in ctx.spec.msr_intercepts if i.access == access), None)
        h = ctx.handlers.get(reason)
        if first and (h is None or h.action != "msr"):
            yield f"{access} intercepts need `exit {reason} -> msr`", first.loc


@check("MSR-OVERLAP", "docs/dsl.md#msr-bitmap", "no MSR is intercepted twice")
def check_msr_overlap(ctx: Ctx):
    """Each MSR has one action per access: two intercepts of the same access
    may not cover the same MSR."""
    seen: list[m.MsrIntercept] = []
    for i in ctx.spec.msr_intercepts:
        for j in seen:
            if i.access == j.access and i.first <= j.last and j.first <= i.last:
                line = j.loc.line if j.loc else "?"
                yield f"{i.access} of MSR {max(i.first, j.first):#x} is already intercepted at line {line}", i.loc
                break
        seen.append(i)


MSR_BIOS_UPDT_TRIG = 0x79


@check("MICROCODE-UPDATE", sdm("34.4", "34.4.2"), "microcode updates are loaded in VMX root")
def check_microcode_update(ctx: Ctx):
    """"Microcode updates must not be performed during VMX non-root
    operation": a spec that answers WRMSR must intercept IA32_BIOS_UPDT_TRIG
    with `microcode_update`, which loads the guest's update in VMX root; and
    that action is only for writes of that MSR."""
    for i in ctx.spec.msr_intercepts:
        if i.action == "microcode_update" and not (i.access == "write" and i.first == i.last == MSR_BIOS_UPDT_TRIG):
            yield "microcode_update is only for `write IA32_BIOS_UPDT_TRIG`", i.loc
    update = [i for i in ctx.spec.msr_intercepts if i.access == "write" and i.first <= MSR_BIOS_UPDT_TRIG <= i.last]
    handler = ctx.handlers.get("wrmsr")
    answers_wrmsr = handler is not None and handler.action == "msr"
    if (answers_wrmsr or ctx.wants("proc.use_msr_bitmaps")) and not any(i.action == "microcode_update" for i in update):
        loc = handler.loc if handler else ctx.req_loc("proc.use_msr_bitmaps")
        yield ("a guest's WRMSR to IA32_BIOS_UPDT_TRIG would load a microcode update in VMX non-root (or, "
               "passed through, at a guest-linear address in VMX root); add "
               "`write IA32_BIOS_UPDT_TRIG = microcode_update` to msr_bitmap"), loc


# --- exits and the seed's interrupt path ----------------------------------------------



@check("EXIT-UNHANDLED", sdm("27.1.3"), "exits the requested controls cause have handlers", severity="warning")
def check_exits_handled(ctx: Ctx):
    """A control that causes VM exits (HLT exiting, enable EPT, ...) makes
    those exits happen; without a handler the generated code can only log
    them and stop."""
    for control, reasons in m.EXIT_CAUSES.items():
        if not ctx.wants(control):
            continue
        for reason in reasons:
            if reason in ctx.spec.exit_reasons and reason not in ctx.handlers:
                yield f"{control} causes {reason} exits, which have no handler", ctx.req_loc(control)


@check("EXIT-CONTROL", sdm("27.1.3"), "a handled exit happens: the control that causes it is asked for")
def check_exit_controls(ctx: Ctx):
    """An exit that only a control causes (RDTSC with "RDTSC exiting", HLT
    with "HLT exiting", EPT violations with "enable EPT" ...) never happens
    unless the spec's `controls` block requires or prefers that control. The
    exiting controls come from model.EXIT_CAUSES; an action's entry in
    model.EXIT_ACTIONS names those the runtime sets itself (`sets`)."""
    for h in ctx.spec.exits:
        info = m.EXIT_ACTIONS.get(h.action)
        if info is None or h.reason not in ctx.spec.exit_reasons:
            continue
        causes = info.causing_controls(h.reason)
        if causes and not any(ctx.wants(c) for c in causes):
            which = causes[0] if len(causes) == 1 else "one of " + ", ".join(causes)
            yield (f"`exit {h.reason}` never runs: {h.reason} exits happen only with {which}; "
                   f"add `prefer {causes[0]}` (or `require`) to controls", h.loc)


@check("EXTINT-DISPATCH", sdm("29.2.2"), "acknowledged interrupts are dispatched to the host")
def check_extint_dispatch(ctx: Ctx):
    """With "external-interrupt exiting" and "acknowledge interrupt on exit",
    the interrupt is acknowledged by the VM exit itself (its vector is in
    VM_EXIT_INTR_INFO); unless the exit handler calls the host's handler
    (`dispatch_idt`) the interrupt is lost."""
    if ctx.wants("pin.external_interrupt_exiting") and ctx.wants("exit.ack_interrupt_on_exit"):
        h = ctx.handlers.get("external_interrupt")
        if h is None or h.action != "dispatch_idt":
            where = h.loc if h else ctx.req_loc("pin.external_interrupt_exiting")
            yield ("acknowledged external interrupts need "
                   "`exit external_interrupt -> dispatch_idt { idt_base = host_idt_base }`", where)


@check("SEED-IDT-GLOBAL", sdm("29.5.2"), "the interrupt path reads the IDT base from the SIDT global")
def check_idt_global(ctx: Ctx):
    """The seed (KVM 2342080cd675): the host IDT base is read once, with SIDT,
    into a global; both HOST_IDTR_BASE and the interrupt path (`dispatch_idt`,
    which calls the handler in the gate at idt_base + 16 * vector) read that
    global. The handler's idt_base must be a global captured from sidt.base,
    and HOST_IDTR_BASE (loaded into IDTR by every VM exit, SDM 29.5.2) must be
    the same global, so that the handler called is the handler of the IDT
    the host runs with."""
    for h in ctx.spec.exits:
        if h.action != "dispatch_idt":
            continue
        name = h.options.get("idt_base")
        g = ctx.globals.get(name) if name else None
        if name is None or g is None or g.source != m.ReadReg("sidt.base"):
            yield (f"dispatch_idt takes the IDT base from '{name}', which is not a global captured "
                   f"from sidt.base; define `global host_idt_base = sidt.base` and use it", h.loc)
            continue
        a = ctx.host.get("HOST_IDTR_BASE")
        if a is None or a.source != m.GlobalRef(name):
            yield (f"HOST_IDTR_BASE must be the global {name} that the interrupt path reads: "
                   f"HOST_IDTR_BASE = {name}", a.loc if a else h.loc)


@check("EXTINT-WINDOW", sdm("28.7.5"), "interrupts queued for the guest have an interrupt-window handler")
def check_extint_window(ctx: Ctx):
    """`dispatch_idt` queues an interrupt the guest cannot take yet (RFLAGS.IF
    clear, STI or MOV SS blocking, an event already being injected) and sets
    "interrupt-window exiting", so that the guest exits as soon as it can
    take it; that exit (reason 7) needs a handler, or the first interrupt
    that waits stops the machine."""
    for h in ctx.spec.exits:
        if h.action != "dispatch_idt":
            continue
        w = ctx.handlers.get("interrupt_window")
        if w is None or w.action != "inject_pending":
            yield ("dispatch_idt waits for the guest's interrupt window with interrupt-window "
                   "exiting; add `exit interrupt_window -> inject_pending`", w.loc if w else h.loc)


# --- the VMCB catalogue: APM vol. 2 Appendices B and C ----------------------------------

def _span(f: m.VmcbField) -> str:
    return f"{f.offset:#05x}" if f.size == 1 else f"{f.offset:#05x}-{f.end - 1:#05x}"


@check("VMCB-AREA", apm("Appendix B"), "every VMCB field lies in its area")
def check_vmcb_area(ctx: Ctx):
    """The VMCB is one 4 KiB page: the control area (Table B-1) holds bytes
    0x000-0x3FF, the state save area (Table B-2) 0x400-0xFFF. A field of
    `vmcb control` or `vmcb save` lies wholly in its own area (its offset is
    the area's base plus the offset written)."""
    for f in ctx.spec.vmcb_fields.values():
        first, end = m.VMCB_AREAS[f.area]
        if not (first <= f.offset and f.end <= end):
            yield (f"VMCB field {f.name} ({_span(f)}) is outside the {f.area} area ({first:#05x}-{end - 1:#05x}); "
                   f"check its offset, and the area's base, against APM Table B-{1 if f.area == 'control' else 2}"), \
                f.loc


@check("VMCB-ALIGN", apm("Appendix B"), "VMCB fields of 2, 4 or 8 bytes are naturally aligned")
def check_vmcb_align(ctx: Ctx):
    """Every field of 2, 4 or 8 bytes in the APM's VMCB tables starts at a
    multiple of its size; one that does not has a wrong offset or size."""
    for f in ctx.spec.vmcb_fields.values():
        if f.size in (2, 4, 8) and f.offset % f.size:
            yield (f"VMCB field {f.name} at {f.offset:#05x} is {f.size} bytes but not {f.size}-byte aligned; "
                   f"check its offset and size against the APM's table"), f.loc


@check("VMCB-OVERLAP", apm("Appendix B"), "no two VMCB fields overlap")
def check_vmcb_overlap(ctx: Ctx):
    """Each byte of the VMCB belongs to at most one field: two fields that
    share a byte mean a wrong offset or size in one of them."""
    reaching: Optional[m.VmcbField] = None         # of the fields before, the one that ends last
    for f in sorted(ctx.spec.vmcb_fields.values(), key=lambda f: (f.offset, f.end)):
        if reaching is not None and f.offset < reaching.end:
            later, earlier = (f, reaching) if _order(ctx.spec, f.loc) >= _order(ctx.spec, reaching.loc) \
                else (reaching, f)
            yield (f"VMCB field {later.name} ({_span(later)}) overlaps {earlier.name} ({_span(earlier)}, at "
                   f"{earlier.loc}); one of their offsets or sizes is wrong"), later.loc
        if reaching is None or f.end > reaching.end:
            reaching = f


@check("SVM-EXIT-CODE", apm("Appendix C"), "an intercept's exit code is its vector's base plus its bit")
def check_svm_exit_codes(ctx: Ctx):
    """An intercept of vector 3 (misc1, VMCB offset 0x00C) exits with code
    0x60 plus its bit number, one of vector 4 (misc2, 0x010) with 0x80 plus
    its bit: an svm_exit_codes entry that names such an intercept has that
    code."""
    for x in ctx.spec.svm_exits.values():
        bit = ctx.spec.intercepts.get(x.intercept) if x.intercept else None
        if bit is None or bit.group not in m.SVM_EXIT_CODE_BASES:
            continue
        base = m.SVM_EXIT_CODE_BASES[bit.group]
        if x.code != base + bit.bit:
            yield (f"SVM exit code {x.name} = {x.code:#x}, but intercept {bit.qualname} (bit {bit.bit} of "
                   f"{bit.group}) exits with {base:#x} + {bit.bit} = {base + bit.bit:#x}; write "
                   f"{x.name} = {base + bit.bit:#x}, or name its own intercept"), x.loc


# --- VMRUN's consistency checks: APM vol. 2 15.5.1 -------------------------------------

#: The consistency checks of APM vol. 2 15.5.1 "Canonicalization and
#: Consistency Checks", by the ids of the catalogue's vmrun_checks (one APM
#: item, the MSR or IOIO intercept tables, is two checks: VMRUN-MSRPM, VMRUN-IOPM).
APM_VMRUN_CHECKS = (
    "VMRUN-EFER-SVME", "VMRUN-CR0-CD-NW", "VMRUN-CR0-HIGH", "VMRUN-CR3-MBZ", "VMRUN-CR4-MBZ", "VMRUN-DR6-HIGH",
    "VMRUN-DR7-HIGH", "VMRUN-EFER-MBZ", "VMRUN-EFER-LONG-MODE", "VMRUN-LME-PG-PAE", "VMRUN-LME-PG-PE",
    "VMRUN-CS-L-D", "VMRUN-INTERCEPT", "VMRUN-MSRPM", "VMRUN-IOPM", "VMRUN-EVENTINJ", "VMRUN-ASID",
)

#: EVENTINJ.TYPE values APM vol. 2 15.20 defines; the others are reserved.
APM_EVENT_TYPES = {0: "INTR", 2: "NMI", 3: "exception", 4: "software interrupt"}


def _vmrun_loc(ctx: Ctx) -> m.Loc:
    """Where a problem of the VMRUN checks as a whole is shown: the first
    check, else the VMCB catalogue's first field."""
    spec = ctx.spec
    first = next(iter(spec.vmrun_checks.values()), None) or next(iter(spec.vmcb_fields.values()), None)
    return (first.loc if first else None) or m.Loc(spec.file, 1, 1)


@check("VMRUN-LIST", apm("15.5.1"), "the VMCB catalogue lists every consistency check VMRUN makes")
def check_vmrun_list(ctx: Ctx):
    """VMRUN exits with VMEXIT_INVALID when the guest's VMCB fails any of the
    checks APM 15.5.1 lists. A VMCB catalogue (dsl/vmcb.hv) lists each in
    `vmrun_checks`, by its id (check.APM_VMRUN_CHECKS), so that the
    hypervisor checks the VMCB as VMRUN will before its first VMRUN and names
    the check that fails."""
    if not ctx.spec.vmcb_fields:
        return
    ids = {c.id for c in ctx.spec.vmrun_checks.values()}
    missing = [i for i in APM_VMRUN_CHECKS if i not in ids]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        yield (f"vmrun_checks lacks {', '.join(missing)} of APM 15.5.1; without {them} a VMCB that VMRUN "
               f"refuses goes unnamed"), _vmrun_loc(ctx)


@check("VMRUN-KINDS", apm("15.5.1"), "every kind of VMRUN check the runtime evaluates is used")
def check_vmrun_kinds(ctx: Ctx):
    """svm_checks.c evaluates each kind of VMRUN check that
    model.VMRUN_CHECK_KINDS lists (forbidden, mbz, cr4_mbz, efer_mbz,
    long_mode, below_maxphyaddr, event_injection); the catalogue's
    `vmrun_checks` use every one. A kind no check uses is code that never
    runs, or a check the catalogue lost. (A check of a kind the runtime does
    not know is an error of the catalogue itself.)"""
    if not ctx.spec.vmcb_fields:
        return
    used = {c.kind for c in ctx.spec.vmrun_checks.values()}
    unused = [k for k in m.VMRUN_CHECK_KINDS if k not in used]
    if unused:
        yield (f"no VMRUN check is of kind {', '.join(unused)}, which the runtime evaluates "
               f"(model.VMRUN_CHECK_KINDS); add the check of the APM that needs it"), _vmrun_loc(ctx)


@check("VMRUN-INTERCEPT", apm("15.5.1", "Appendix C"), "the VMRUN intercept svm.c sets is the one VMRUN requires")
def check_vmrun_intercept(ctx: Ctx):
    """VMRUN requires the VMRUN intercept set in the guest's VMCB. svm.c sets
    the catalogue's intercept `vmrun` (SVM_INTERCEPT_VMRUN) for every guest,
    whatever exits the spec handles, so this is decided here: the catalogue
    declares the intercept vmrun, its exit code `vmrun` is that intercept's,
    and the run-time check VMRUN-INTERCEPT tests that very bit
    (`kind forbidden when GROUP.vmrun clear`)."""
    spec = ctx.spec
    if not spec.vmcb_fields:
        return
    bit = next((b for b in spec.intercepts.values() if b.name == "vmrun"), None)
    if bit is None:
        yield ("the catalogue declares no intercept vmrun, which svm.c sets for every guest "
               "(SVM_INTERCEPT_VMRUN); APM Table B-1 puts it at bit 0 of vector 4 (misc2)"), _vmrun_loc(ctx)
        return
    exit_code = spec.svm_exits.get("vmrun")
    if exit_code is not None and exit_code.intercept != bit.qualname:
        yield (f"the exit code vmrun names the intercept {exit_code.intercept or '(none)'}, not {bit.qualname}, "
               f"the one svm.c sets"), exit_code.loc
    rule = next((c for c in spec.vmrun_checks.values() if c.id == "VMRUN-INTERCEPT"), None)
    if rule is not None and [(t.intercept, t.set) for t in rule.when] != [(bit.qualname, False)]:
        yield (f"VMRUN-INTERCEPT is `{rule.arguments()}`, but svm.c sets {bit.qualname}: write "
               f"`kind forbidden when {bit.qualname} clear`"), rule.loc


@check("VMRUN-EVENTINJ", apm("15.5.1", "15.20"), "the event types and exception vectors VMRUN accepts are the APM's")
def check_vmrun_eventinj(ctx: Ctx):
    """VMRUN refuses an EVENTINJ with a reserved TYPE, or of TYPE 3
    (exception) with a vector that is not an exception's, vector 2 (NMI)
    among them. The run-time check VMRUN-EVENTINJ accepts the types of
    `event_types` and the vectors of its `exceptions`, so those are the
    APM's: types 0 (INTR), 2 (NMI), 3 (`exception`) and 4 (software
    interrupt); exception vectors below 32, never 2. It reads the fields
    `vector`, `type` and `valid` of `event_injection`."""
    spec = ctx.spec
    if not spec.vmcb_fields:
        return
    for t in spec.event_types.values():
        if t.number not in APM_EVENT_TYPES:
            yield (f"event type {t.name} = {t.number} is reserved (APM 15.20 defines "
                   f"{', '.join(f'{n} {w}' for n, w in APM_EVENT_TYPES.items())}); VMRUN refuses it, and "
                   f"VMRUN-EVENTINJ would let it through"), t.loc
    exception = spec.event_types.get("exception")
    if exception is None or exception.number != 3:
        loc = exception.loc if exception else _vmrun_loc(ctx)
        yield "event_types names type 3 `exception`: VMRUN-EVENTINJ checks the vector of that type", loc
    lacking = [f for f in ("vector", "type", "valid") if f not in spec.event_injection]
    if lacking:
        yield (f"event_injection lacks {', '.join(lacking)}, which VMRUN-EVENTINJ reads "
               f"(SVM_EVENTINJ_{lacking[0].upper()})"), _vmrun_loc(ctx)
    for c in spec.vmrun_checks.values():
        bad = [v for v in c.exceptions if v == 2 or v > 31]
        if c.kind == "event_injection" and bad:
            yield (f"{c.id} lets vector{'s' if len(bad) > 1 else ''} {m.vector_ranges(bad)} through as an "
                   f"exception; exceptions are vectors 0-31 and 2 is the NMI's"), c.loc


# --- the language's own rules ----------------------------------------------------

@check("VALUE-WIDTH", sdm("Appendix B"), "constant values fit their field's width")
def check_value_widths(ctx: Ctx):
    """A field is 16, 32 or 64 bits wide (natural width is 64 bits in a 64-bit
    host); a value that does not fit would be truncated by VMWRITE."""
    for a in ctx.spec.host_state:
        f = ctx.spec.fields.get(a.field)
        v = ctx.constant(a.source)
        if f is not None and v is not None and v >> f.bits:
            yield f"{a.field} is a {f.bits}-bit field; {v:#x} does not fit", a.loc


@check("DUP-ASSIGN", "docs/dsl.md#host-state", "nothing is defined or assigned twice")
def check_duplicates(ctx: Ctx):
    """A host-state field, a global, a control request or an exit reason's
    handler is given once; a second one is a mistake, not an override."""
    spec = ctx.spec
    for items, key, what in ((spec.host_state, lambda a: a.field, "host-state field"),
                             (spec.globals, lambda g: g.name, "global"),
                             (spec.control_reqs, lambda r: r.control, "control"),
                             (spec.exits, lambda h: h.reason, "exit reason")):
        first: dict[str, Optional[m.Loc]] = {}
        for it in items:
            k = key(it)
            if k in first:
                yield f"{what} {k} is given twice (first at {first[k]})", it.loc
            else:
                first[k] = it.loc


def _order(spec: m.Spec, loc: Optional[m.Loc]) -> tuple:
    """Where a declaration stands as if every import were pasted in place."""
    if loc is None or loc.file not in spec.file_order:
        return (1 << 30,)
    return spec.file_order[loc.file] + (loc.line, loc.col)


@check("GLOBAL-BEFORE-DEF", "docs/dsl.md#globals", "globals are defined before they are used")
def check_global_order(ctx: Ctx):
    """Globals are captured in the order they are defined, once, before any
    VMCS is written; a use above the definition reads as if it came first."""
    spec = ctx.spec
    defined = {g.name: _order(spec, g.loc) for g in reversed(spec.globals)}
    uses = [(g.source, g.loc) for g in spec.globals] + [(a.source, a.loc) for a in spec.host_state]
    uses += [(m.GlobalRef(h.options["idt_base"]), h.loc) for h in spec.exits if "idt_base" in h.options]
    for source, loc in uses:
        if isinstance(source, m.GlobalRef) and source.name in defined and _order(spec, loc) <= defined[source.name] \
                and loc is not None and loc.file in spec.files:
            d = ctx.globals[source.name].loc
            yield f"global {source.name} is used before it is defined (at {d})", loc


@check("SYM-PER-CPU", "docs/dsl.md#sources", "per-CPU values are evaluated per CPU")
def check_per_cpu(ctx: Ctx):
    """host_stack_top, host_gdt, host_tss and per_cpu_data differ on each CPU:
    a host-state field taking one of them must say `per_cpu`, and a global
    (captured once, on the boot CPU) cannot take one."""
    for a in ctx.spec.host_state:
        if isinstance(a.source, m.Symbol) and m.SYMBOLS.get(a.source.name) and a.when != "per_cpu":
            yield f"{a.source.name} differs per CPU: write `{a.field} = symbol({a.source.name}) per_cpu`", a.loc
    for g in ctx.spec.globals:
        if isinstance(g.source, m.Symbol) and m.SYMBOLS.get(g.source.name):
            yield f"global {g.name} is captured once, but {g.source.name} differs per CPU", g.loc


@check("GLOBAL-UNUSED", "docs/dsl.md#globals", "every global is read", severity="warning")
def check_global_unused(ctx: Ctx):
    """A global is captured to be read; one nobody reads is dead code."""
    used = {a.source.name for a in ctx.spec.host_state if isinstance(a.source, m.GlobalRef)}
    used |= {g.source.name for g in ctx.spec.globals if isinstance(g.source, m.GlobalRef)}
    used |= {h.options["idt_base"] for h in ctx.spec.exits if "idt_base" in h.options}
    for g in ctx.spec.globals:
        if g.name not in used:
            yield f"global {g.name} is never read", g.loc


@check("ID-SIGNATURE", "docs/dsl.md#identity", "the CPUID signature is 12 ASCII characters")
def check_signature(ctx: Ctx):
    """CPUID leaf 0x40000000 returns the hypervisor's signature in EBX, ECX
    and EDX: exactly 12 bytes, printable ASCII."""
    sig = ctx.spec.identity.signature
    if len(sig) != 12 or not all(" " <= c <= "~" for c in sig):
        loc = ctx.spec.identity.loc or m.Loc(ctx.spec.file, 1, 1)
        yield f"signature \"{sig}\" must be exactly 12 printable ASCII characters (it is {len(sig)})", loc


@check("ID-VERSION", "docs/dsl.md#identity", "the version is MAJOR.MINOR.PATCH")
def check_version(ctx: Ctx):
    """The hypervisor reports its version over VMCALL as one number,
    MAJOR << 16 | MINOR << 8 | PATCH: three decimal numbers below 256."""
    v = ctx.spec.identity.version
    parts = v.split(".")
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() and int(p) < 256 for p in parts):
        loc = ctx.spec.identity.loc or m.Loc(ctx.spec.file, 1, 1)
        yield f"version \"{v}\" must be MAJOR.MINOR.PATCH, each below 256 (e.g. \"0.1.0\")", loc


#: COM1 at 115200 baud (8N1) carries 11520 characters a second: about 140
#: lines of 80. More would not be written faster, only spin in VMX root.
LOG_RATE_MAX = 100
LOG_BURST_MAX = 1000


@check("LOG-RATE", "docs/dsl.md#options", "the log's rate limit is one the serial line can carry")
def check_log_rate(ctx: Ctx):
    """`option log_rate` (lines a second) and `option log_burst` (lines at
    once) bound what the hypervisor writes to COM1 from VMX root. Both are
    at least 1; the rate at most 100 (COM1 at 115200 baud carries about 140
    lines of 80 characters a second, and every line is written with the
    guest stopped); the burst at most 1000 and not below the rate."""
    s, locs = ctx.spec.settings, ctx.spec.setting_locs
    rate, burst = ctx.spec.int_setting("log_rate"), ctx.spec.int_setting("log_burst")
    if not 1 <= rate <= LOG_RATE_MAX:
        yield (f"option log_rate = {rate}: lines a second from 1 to {LOG_RATE_MAX} "
               f"(COM1 carries about 140 a second)"), locs.get("log_rate")
    if not 1 <= burst <= LOG_BURST_MAX:
        yield f"option log_burst = {burst}: lines from 1 to {LOG_BURST_MAX}", locs.get("log_burst")
    elif 1 <= rate <= LOG_RATE_MAX and burst < rate:
        written = "log_burst" in s
        yield (f"option log_burst = {burst}{'' if written else ' (the default)'} is below "
               f"log_rate = {rate}: a second's worth of lines could never be written at once; "
               f"set option log_burst = {rate} or more"), \
            locs.get("log_burst") if written else locs.get("log_rate")


@check("ICR-EMULATION", "docs/runtime.md#init-and-sipi",
       "the APIC ICR emulation has what it is built on: EPT, and the INIT and SIPI handlers")
def check_icr_emulation(ctx: Ctx):
    """`option apic_icr_emulation` write-protects the local APIC page in EPT
    and records INIT and SIPI for the CPU they are sent to, which then starts
    the way the `init` and `sipi` actions start a CPU after a real INIT: it
    needs `proc2.enable_ept` (and unrestricted guest, to start in real mode),
    `exit init_signal -> init` and `exit sipi`."""
    if not ctx.spec.settings.get("apic_icr_emulation"):
        return
    where = ctx.spec.setting_locs.get("apic_icr_emulation")
    for control in ("proc2.enable_ept", "proc2.unrestricted_guest"):
        if not ctx.wants(control):
            yield f"option apic_icr_emulation needs {control} in the controls block", where
    for reason, action in (("init_signal", "init"), ("sipi", "sipi")):
        h = ctx.handlers.get(reason)
        if h is None or h.action != action:
            yield f"option apic_icr_emulation needs `exit {reason} -> {action}`", h.loc if h else where


@check("SELF-PROTECTION", "docs/runtime.md#isolation",
       "the hypervisor's memory is hidden in EPT, with a policy the runtime knows")
def check_self_protection(ctx: Ctx):
    """`option self_protection` (on by default) maps every page the
    hypervisor keeps to a read-only decoy page in EPT, so it needs
    `proc2.enable_ept`; `option self_protection_violation` is one of the
    policies a guest write there can get."""
    s, locs = ctx.spec.settings, ctx.spec.setting_locs
    policy = s.get("self_protection_violation")
    if policy is not None and policy not in m.PROTECTION_VIOLATION_POLICIES:
        yield (f"option self_protection_violation is '{policy}'; the policies are "
               f"{', '.join(m.PROTECTION_VIOLATION_POLICIES)}"), locs.get("self_protection_violation")
    if ctx.spec.bool_setting("self_protection") and not ctx.wants("proc2.enable_ept"):
        yield ("option self_protection (on by default) needs proc2.enable_ept in the controls block, or "
               "`option self_protection = off`"), locs.get("self_protection", ctx.host_block_loc())


# --- running them ------------------------------------------------------------------

def check_spec(spec: m.Spec) -> list[Diagnostic]:
    """Run every check; the diagnostics in file order."""
    ctx = Ctx(spec)
    diags = []
    for info in CHECKS.values():
        for message, loc in info.fn(ctx):
            line = source_line(spec.sources.get(loc.file, ""), loc.line) if loc else None
            diags.append(Diagnostic(info.severity, message, loc, info.id, info.section, line))
    diags.sort(key=lambda d: (_order(spec, d.loc), d.check_id or ""))
    return diags


def load_and_check(path, out=None) -> m.Spec:
    """load_spec + check_spec: raises SpecError when there are errors,
    prints warnings to `out`, returns the spec."""
    spec = load_spec(path)
    diags = check_spec(spec)
    if any(d.severity == "error" for d in diags):
        raise SpecError(diags)
    for d in diags:
        print(d, file=out or sys.stderr)
    return spec


# --- rules only the CPU can decide ------------------------------------------------------

def runtime_rules(spec: m.Spec) -> list[m.RuntimeRule]:
    """The rules the generated code checks on the values it is about to write
    (so a spec built with --no-check is still caught), in a fixed order."""
    R = m.RuntimeRule
    ctx = Ctx(spec)
    rules = [
        R(f"{reg.upper()}-FIXED", sdm("25.8", "28.2.2"),
          f"{reg.upper()} meets IA32_VMX_{reg.upper()}_FIXED0/1", "cr_fixed",
          {"reg": reg, "fixed0_msr": spec.msr_number(f"IA32_VMX_{reg.upper()}_FIXED0"),
           "fixed1_msr": spec.msr_number(f"IA32_VMX_{reg.upper()}_FIXED1")})
        for reg in ("cr0", "cr4")
    ]
    for group, (fieldname, cap_name, true_name) in m.CONTROL_GROUPS.items():
        cap, true = spec.msr_number(cap_name), spec.msr_number(true_name)
        if group == "proc2" and not ctx.wants("proc.activate_secondary_controls"):
            continue
        rules.append(R(f"CTL-ALLOWED:{group}", sdm("28.2.1", "Appendix A.3", "Appendix A.4", "Appendix A.5"),
                       f"{fieldname} within the allowed-0/allowed-1 settings", "control_allowed",
                       {"group": group, "capability_msr": cap, "true_msr": true}))
    for f in SELECTORS:
        rules.append(R(f"HOST-SEL-RPL-TI:{f}", sdm("28.2.3"), f"{f} has RPL and TI 0",
                       "host_selector_rpl_ti", {"field": f}))
    for f in ("HOST_CS_SELECTOR", "HOST_TR_SELECTOR"):
        rules.append(R(f"HOST-{f.split('_')[1]}-NONZERO", sdm("28.2.3"), f"{f} is not 0",
                       "host_selector_nonzero", {"field": f}))
    rules.append(R("HOST-64BIT", sdm("28.2.4"), "host-address-space-size is 1 and CR4.PAE is 1",
                   "host_64bit", {}))
    for f, section in [(f, sdm("28.2.3")) for f in BASES] + [(f, sdm("28.2.2")) for f in SYSENTER] + \
            [("HOST_RIP", sdm("28.2.4"))]:
        rules.append(R(f"CANONICAL:{f}", section, f"{f} is canonical", "canonical", {"field": f}))
    if ctx.wants("exit.load_ia32_pat"):
        rules.append(R("HOST-PAT", sdm("28.2.2"), "HOST_IA32_PAT holds valid memory types", "pat_valid",
                       {"field": "HOST_IA32_PAT"}))
    if ctx.wants("exit.load_ia32_efer"):
        rules.append(R("HOST-EFER", sdm("28.2.2"), "HOST_IA32_EFER reserved bits 0, LMA = LME = 1",
                       "efer_consistent", {"field": "HOST_IA32_EFER"}))
    return rules


# --- documentation -----------------------------------------------------------------

DOC_BEGIN = "<!-- checks:begin (generated by `python -m uefi_hv.check --doc`; do not edit) -->"
DOC_END = "<!-- checks:end -->"


def checks_markdown() -> str:
    """The table of checks for docs/dsl.md, from the registry."""
    rows = [f"Sections are numbered as in the {SDM_EDITION}; APM sections as in the {APM_EDITION}.", "",
            "| id | section | severity | rule |", "|---|---|---|---|"]
    for c in CHECKS.values():
        text = " ".join(c.text.split()).replace("|", "\\|")
        rows.append(f"| `{c.id}` | {cited(c.section)} | {c.severity} | {text} |")
    return "\n".join(rows) + "\n"


ACTIONS_DOC_BEGIN = ("<!-- actions:begin (generated by `python -m uefi_hv.check --doc`; "
                     "do not edit) -->")
ACTIONS_DOC_END = "<!-- actions:end -->"

#: How each kind of action option is written in a spec (model.ActionInfo.options).
_OPTION_SYNTAX = {"flag": "{}", "names": "{} = NAME, ...", "global": "{} = GLOBAL",
                  "vectors": "{} = V, ... (32..255)", "int": "{} = N", "string": '{} = "TEXT"'}


def actions_markdown() -> str:
    """The table of exit actions for docs/dsl.md, from model.EXIT_ACTIONS."""
    rows = ["| action | handles | options | what it does | controls it needs |", "|---|---|---|---|---|"]
    for a in m.EXIT_ACTIONS.values():
        if a.internal:
            continue
        options = "; ".join(f"`{_OPTION_SYNTAX[kind].format(name)}`" for name, kind in a.options.items())
        needs = [" or ".join(f"`{c}`" for c in a.causing_controls(r)) for r in a.reasons if a.causing_controls(r)]
        rows.append(f"| `{a.name}` | {', '.join(a.reasons) or 'any'} | {options} | {a.text} | "
                    f"{'; '.join(needs) or '-'} |")
    return "\n".join(rows) + "\n"


VMRUN_DOC_BEGIN = ("<!-- vmrun-checks:begin (generated by `python -m uefi_hv.check --doc`; "
                   "do not edit) -->")
VMRUN_DOC_END = "<!-- vmrun-checks:end -->"


def vmrun_checks_markdown() -> str:
    """The table of dsl/vmcb.hv's VMRUN checks for docs/dsl.md."""
    rows = ["| id | section | VMRUN fails when | kind and arguments |", "|---|---|---|---|"]
    for c in vmrun_checks().values():
        title = c.title.replace("|", "\\|")
        rows.append(f"| `{c.id}` | APM {', '.join(c.sections)} | {title} | `{c.arguments()}` |")
    return "\n".join(rows) + "\n"


#: The generated tables of docs/dsl.md: (begin marker, end marker, table).
DOC_TABLES = ((DOC_BEGIN, DOC_END, checks_markdown), (ACTIONS_DOC_BEGIN, ACTIONS_DOC_END, actions_markdown),
              (VMRUN_DOC_BEGIN, VMRUN_DOC_END, vmrun_checks_markdown))


def update_docs(path) -> bool:
    """Rewrite the tables between the markers of `path`; True when it changed."""
    p = Path(path)
    text = new = p.read_text()
    for begin, end, table in DOC_TABLES:
        head, sep, rest = new.partition(begin)
        _, sep2, tail = rest.partition(end)
        if not sep or not sep2:
            raise UsageError(f"error: {path} lacks the markers {begin!r} ... {end!r}")
        new = f"{head}{begin}\n{table()}{end}{tail}"
    if new != text:
        p.write_text(new)
    return new != text


# --- the commands ----------------------------------------------------------------

def cmd_check(args) -> int:
    spec = load_and_check(args.spec)
    shown = spec.file
    host = len(spec.host_state)
    print(f"{shown}: ok ({len(spec.fields)} fields in the catalogue, {host} host-state sources, "
          f"{len(spec.globals)} global{'s' if len(spec.globals) != 1 else ''}, {len(spec.exits)} exit handlers; "
          f"{len(CHECKS)} checks)")
    return 0


def catalogue() -> m.Spec:
    return load_spec(DSL_DIR / "vmcs.hv")


def cmd_fields(args) -> int:
    try:
        return _print_fields(args)
    except BrokenPipeError:         # `uefi-hv fields | head`: the reader has seen enough
        sys.stdout = open(os.devnull, "w")
        return 0


def _print_fields(args) -> int:
    spec = catalogue()
    fields = sorted(spec.fields.values(), key=lambda f: f.encoding)
    if args.json:
        print(json.dumps([{
            "name": f.name, "encoding": f.encoding, "high_encoding": f.high_encoding,
            "width": f.width, "type": f.type, "index": f.index,
            "exists_when": f.exists_when, "description": f.description,
        } for f in fields], indent=1))
        return 0
    print(f"{'encoding':<8} {'high':<6} {'width':<7} {'type':<9} {'name':<30} exists when")
    for f in fields:
        high = f"0x{f.high_encoding:04X}" if f.high_encoding is not None else ""
        print(f"0x{f.encoding:04X}   {high:<6} {f.width:<7} {f.type:<9} {f.name:<30} {f.exists_when or ''}")
    return 0


def vmrun_checks() -> dict[str, m.VmrunCheck]:
    """The consistency checks VMRUN makes, as dsl/vmcb.hv lists them, by id."""
    spec = parse_text('import "vmcs.hv"\nimport "vmcb.hv"\n', "catalogues.hv", DSL_DIR / "catalogues.hv")
    return {c.id: c for c in spec.vmrun_checks.values()}


def cmd_explain(args) -> int:
    wanted = args.check_id.strip().upper()
    info = CHECKS.get(wanted)
    rules = vmrun_checks()
    rule = rules.get(wanted)
    if info is None and rule is None:
        known = list(CHECKS) + [i for i in rules if i not in CHECKS]
        starting = [c for c in known if c.startswith(wanted)] if wanted else []
        hint = (f"; did you mean {' or '.join(repr(c) for c in starting[:4])}?" if starting
                else did_you_mean(wanted, known))
        raise UsageError(f"error: no check '{args.check_id}'{hint}; "
                         f"'uefi-hv explain' knows: {', '.join(known)}")
    if info is not None:
        print(f"{info.id} ({info.section}, {info.severity}): {info.title}\n")
        print(info.text)
        if info.section.startswith("SDM "):
            print(f"\n{cited(info.section)}; {SDM_EDITION}")
        elif info.section.startswith("APM ") and rule is None:
            print(f"\n{cited(info.section)}; {APM_EDITION}")
    if rule is not None:
        if info is not None:
            print()
        _explain_vmrun_check(rule)
    return 0


def _explain_vmrun_check(rule: m.VmrunCheck) -> None:
    """A VMRUN check of the catalogue, as `uefi-hv explain` shows it."""
    kind = m.VMRUN_CHECK_KINDS[rule.kind]
    print(f"{rule.id} ({rule.section}, run-time): {rule.title}\n")
    print("VMRUN exits with VMEXIT_INVALID when this holds of the guest's VMCB. The hypervisor decides it on\n"
          "the VMCB before each CPU's first VMRUN (svm_checks.c); when it holds, the CPU goes back to the\n"
          "firmware and the failure is named: \"run-time check "
          f"{rule.id} (APM {', '.join(rule.sections)}) failed: ...\".\n")
    print(f"{rule.loc}: {rule.arguments()}" if rule.loc else rule.arguments())
    print(textwrap.fill(f"{rule.kind}: {kind.text}", 100, initial_indent="  ", subsequent_indent="    "))
    print(f"\n{cited(rule.section)}; {APM_EDITION}")


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m uefi_hv.check", description="the check registry")
    p.add_argument("--doc", action="store_true", help="print the checks and actions tables for docs/dsl.md")
    p.add_argument("--update-docs", metavar="FILE", help="rewrite the table between the markers of FILE")
    args = p.parse_args(argv)
    if args.update_docs:
        print("updated" if update_docs(args.update_docs) else "up to date")
    else:
        sys.stdout.write(checks_markdown() + "\n" + actions_markdown() + "\n" + vmrun_checks_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
