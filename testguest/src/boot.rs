//! Everything that runs in ring 0: the PVH entry, the AP trampoline, the static
//! descriptor and page tables, and the trap handlers.
//!
//! Ring-0 code is emulated instruction by instruction on this project's nested KVM
//! (about 10,000× slower than ring 3), so this file does the least it can: enter long
//! mode with page tables the assembler built, load a static GDT/TSS/IDT, and `iretq`
//! to ring 3 with IOPL 3 and interrupts off. The IDT entries themselves are written
//! from ring 3 (`traps::install`) because an entry splits its handler's address into
//! pieces no ELF relocation can express.
//!
//! Ring 0 is entered again only through the IDT: the #GP handler performs the port
//! I/O (`in`/`out`/`rep outsb`) and MSR accesses that ring 3 may not do itself, and
//! every other trap is turned into a call of `testguest_fatal` back in ring 3.

/// Most CPUs the guest brings up; the rest are ignored.
pub const MAX_CPUS: usize = 64;
/// Each CPU's ring-3 stack.
const USER_STACK_SHIFT: u32 = 15;
/// Each CPU's ring-0 stack, which also hosts the ring-3 stack of `testguest_fatal`.
const KERNEL_STACK_SIZE: usize = 8192;
/// Physical address the AP trampoline is copied to; its SIPI vector is this >> 12.
pub const AP_TRAMPOLINE_PADDR: u64 = 0x8000;

core::arch::global_asm!(
    r#"
    .set KCODE64, 0x08
    .set KDATA, 0x10
    .set KCODE32, 0x18
    .set USER_DS, 0x23
    .set USER_CS, 0x2b
    .set TSS0, 0x30
    /* CR4: PAE | OSFXSR | OSXMMEXCPT. CR0: PG | NE | MP | PE (EM, TS, CD, NW clear). */
    .set CR4_BOOT, 0x620
    .set CR0_BOOT, 0x80000023
    /* RFLAGS in ring 3: IOPL 3, IF clear, reserved bit 1. */
    .set USER_RFLAGS, 0x3002

    /* ---------------- PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY) ---------------- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_entry

    /* ---------------- 32-bit entry (BSP from PVH, APs from the trampoline) ---- */
    .section .text.boot, "ax"
    .code32
    .globl pvh_entry
pvh_entry:
    /* ebx = struct hvm_start_info; the BSP is CPU 0. */
    movl %ebx, start_info_paddr
    /* Under PVM a ring-3 cpuid runs natively and describes the host's CPU, so the
       leaves ring 3 needs are read here, where they describe the guest's. */
    movl $1, %eax
    cpuid
    movl %ebx, boot_cpuid
    movl %ecx, boot_cpuid + 4
    movl $0x40000000, %eax
    cpuid
    movl %eax, boot_cpuid + 8
    movl %ebx, boot_cpuid + 12
    movl %ecx, boot_cpuid + 16
    movl %edx, boot_cpuid + 20
    movl $0x40000001, %eax
    cpuid
    movl %eax, boot_cpuid + 24
    xorl %esi, %esi
common32:
    /* esi = CPU index. Long mode with the static identity map, SSE on. */
    movl $CR4_BOOT, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    movl $0x100, %eax
    xorl %edx, %edx
    wrmsr
    movl $CR0_BOOT, %eax
    movl %eax, %cr0
    lgdtl gdt_ptr
    ljmpl $KCODE64, $long64

ap_entry32:
    movw $KDATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    movzbl apic_to_cpu(%ebx), %esi
    jmp common32

    .code64
long64:
    movl %esi, %eax
    shll $4, %eax
    addl $TSS0, %eax
    ltrw %ax
    lidt idt_ptr(%rip)
    leal 1(%esi), %eax
    shll ${user_stack_shift}, %eax
    addq $user_stacks, %rax
    movq %rax, %rsp
    pushq $USER_DS
    pushq %rax
    pushq $USER_RFLAGS
    pushq $USER_CS
    pushq $ring3_entry
    movl %esi, %edi
    iretq

    /* ---------------- AP real-mode trampoline, copied to 0x8000 ---------------- */
    .code16
    .globl ap_tramp_start
    .globl ap_tramp_end
ap_tramp_start:
    lgdtl %cs:(ap_tramp_gdt_ptr - ap_tramp_start)
    movl $1, %eax
    movl %eax, %cr0
    ljmpl $KCODE32, $ap_entry32
    .balign 4
ap_tramp_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
ap_tramp_end:

    /* ---------------- ring-3 landing pads ---------------- */
    .code64
    .text
ring3_entry:
    /* The call leaves rsp = 8 mod 16 at entry, as the SysV ABI expects. */
    call testguest_main
    ud2
fatal_entry:
    call testguest_fatal
    ud2

    /* ---------------- ring-0 trap handlers ---------------- */
    /* One 16-byte stub per vector; the vector's error code (or 0) and number are
       pushed and the fault is reported from ring 3. */
    .balign 16
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp fatal_common
    .set vec, vec + 1
    .endr

fatal_common:
    /* stack: vector, error code, rip, cs, rflags, rsp, ss. Leave for ring 3 on the
       lower part of this CPU's ring-0 stack and call
       testguest_fatal(vector, rip, cr2, error, cs). */
    popq %rdi
    popq %rcx
    movq (%rsp), %rsi
    movq 8(%rsp), %r8
    movq %cr2, %rdx
    leaq -1024(%rsp), %rax
    andq $-16, %rax
    leaq fatal_entry(%rip), %r9
    pushq $USER_DS
    pushq %rax
    pushq $USER_RFLAGS
    pushq $USER_CS
    pushq %r9
    iretq

    /* #GP: emulate the port I/O and MSR instructions that ring 3 may not execute.
       Fast paths first: out dx,al (serial data), in al,dx (serial status) and
       rep outsb (16-byte serial bursts). */
    .globl gp_handler
gp_handler:
    testb $3, 16(%rsp)
    jz .Lgp_fatal
    pushq %rax
    pushq %rbx
    /* stack: rbx, rax, error, rip, cs, ... */
    movq 24(%rsp), %rbx
    movzbl (%rbx), %eax
    cmpb $0xee, %al
    jne 1f
    popq %rbx
    popq %rax
    outb %al, %dx
    incq 8(%rsp)
    addq $8, %rsp
    iretq
1:
    cmpb $0xec, %al
    jne 2f
    popq %rbx
    popq %rax
    inb %dx, %al
    incq 8(%rsp)
    addq $8, %rsp
    iretq
2:
    cmpb $0xf3, %al
    jne .Lgp_slow
    cmpb $0x6e, 1(%rbx)
    jne .Lgp_slow
    popq %rbx
    popq %rax
    rep outsb
    addq $2, 8(%rsp)
    addq $8, %rsp
    iretq

.Lgp_slow:
    pushq %rcx
    pushq %rdx
    /* stack: rdx, rcx, rbx, rax, error, rip; rdx still holds the caller's port. */
    cmpb $0x0f, %al
    je .Lgp_msr
    movl $1, %ecx
    cmpb $0x66, %al
    jne .Lgp_32
    movzbl 1(%rbx), %eax
    movl $2, %ecx
    cmpb $0xef, %al
    je .Lgp_out_w
    cmpb $0xed, %al
    je .Lgp_in_w
    movzbl 2(%rbx), %edx
    movl $3, %ecx
    cmpb $0xe7, %al
    je .Lgp_out_w
    cmpb $0xe5, %al
    je .Lgp_in_w
    jmp .Lgp_bad
.Lgp_32:
    cmpb $0xef, %al
    je .Lgp_out_l
    cmpb $0xed, %al
    je .Lgp_in_l
    movzbl 1(%rbx), %edx
    movl $2, %ecx
    cmpb $0xe6, %al
    je .Lgp_out_b
    cmpb $0xe4, %al
    je .Lgp_in_b
    cmpb $0xe7, %al
    je .Lgp_out_l
    cmpb $0xe5, %al
    je .Lgp_in_l
    jmp .Lgp_bad
.Lgp_msr:
    movzbl 1(%rbx), %eax
    cmpb $0x30, %al
    je 3f
    cmpb $0x32, %al
    jne .Lgp_bad
    rdmsr
    movq %rax, 24(%rsp)
    movq %rdx, (%rsp)
    movl $2, %ecx
    jmp .Lgp_done
3:
    movq 24(%rsp), %rax
    wrmsr
    movl $2, %ecx
    jmp .Lgp_done
.Lgp_out_b:
    movq 24(%rsp), %rax
    outb %al, %dx
    jmp .Lgp_done
.Lgp_out_w:
    movq 24(%rsp), %rax
    outw %ax, %dx
    jmp .Lgp_done
.Lgp_out_l:
    movq 24(%rsp), %rax
    outl %eax, %dx
    jmp .Lgp_done
.Lgp_in_b:
    movq 24(%rsp), %rax
    inb %dx, %al
    movq %rax, 24(%rsp)
    jmp .Lgp_done
.Lgp_in_w:
    movq 24(%rsp), %rax
    inw %dx, %ax
    movq %rax, 24(%rsp)
    jmp .Lgp_done
.Lgp_in_l:
    inl %dx, %eax
    movq %rax, 24(%rsp)
.Lgp_done:
    addq %rcx, 40(%rsp)
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $8, %rsp
    iretq
.Lgp_bad:
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
.Lgp_fatal:
    pushq $13
    jmp fatal_common

    /* ---------------- descriptor tables ---------------- */
    .section .rodata.gdt, "a"
    .balign 16
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
    .balign 16
idt_ptr:
    .word 4095
    .quad testguest_idt

    .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff  /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff  /* 0x10 kernel data */
    .quad 0x00cf9a000000ffff  /* 0x18 kernel code, 32-bit (AP trampoline) */
    .quad 0x00cff2000000ffff  /* 0x20 user data */
    .quad 0x00affa000000ffff  /* 0x28 user code, 64-bit */
    /* 0x30 + 16 * cpu: 64-bit TSS, base = __tss_area + 128 * cpu (area 64 KiB aligned) */
    .set cpu, 0
    .rept {max_cpus}
    .word 0x67
    .word cpu * 128
    .byte __tss_base_23_16
    .byte 0x89
    .byte 0
    .byte __tss_base_31_24
    .long 0
    .long 0
    .set cpu, cpu + 1
    .endr
gdt_end:

    .globl start_info_paddr
    .balign 4
start_info_paddr:
    .long 0
    .globl boot_cpuid
boot_cpuid:
    .fill 7, 4, 0

    .section .tss, "aw"
    .set cpu, 0
    .rept {max_cpus}
    .long 0
    .quad kernel_stacks + (cpu + 1) * {kernel_stack_size}  /* RSP0 */
    .fill 88, 1, 0
    .word 0
    .word 104  /* I/O bitmap offset beyond the limit: no bitmap */
    .fill 24, 1, 0
    .set cpu, cpu + 1
    .endr

    /* Identity map of the first 64 GiB with 2 MiB pages, user-accessible and
       writable; the chipset window 0xfe000000-0xffffffff is uncached. */
    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .set i, 0
    .rept 64
    .quad pd + i * 4096 + 0x7
    .set i, i + 1
    .endr
    .fill 448, 8, 0
pd:
    .set i, 0
    .rept 32768
    .if (i >= 0x7f0) && (i < 0x800)
    .quad (i << 21) + 0x9f
    .else
    .quad (i << 21) + 0x87
    .endif
    .set i, i + 1
    .endr

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .globl testguest_idt
testguest_idt:
    .skip 4096
    .globl apic_to_cpu
apic_to_cpu:
    .skip 256
    .balign 4096
kernel_stacks:
    .skip {max_cpus} * {kernel_stack_size}
user_stacks:
    .skip {max_cpus} << {user_stack_shift}
"#,
    max_cpus = const MAX_CPUS,
    kernel_stack_size = const KERNEL_STACK_SIZE,
    user_stack_shift = const USER_STACK_SHIFT,
    options(att_syntax)
);

unsafe extern "C" {
    /// Physical address of `struct hvm_start_info`, stored by the PVH entry.
    static start_info_paddr: u32;
    /// The 256-entry IDT that `lidt` loaded; filled in from ring 3.
    pub static mut testguest_idt: [u64; 512];
    /// APIC ID → CPU index, read by each AP in ring 0 to find its stacks and TSS.
    pub static mut apic_to_cpu: [u8; 256];
    /// Per-vector 16-byte stubs that report the trap as fatal.
    pub static isr_stubs: u8;
    /// #GP handler that emulates ring-3 port I/O and MSR accesses.
    pub static gp_handler: u8;
    /// CPUID leaf 1 EBX and ECX, leaf 0x40000000 EAX..EDX and leaf 0x40000001 EAX,
    /// as the BSP saw them in ring 0.
    static boot_cpuid: [u32; 7];
    /// Real-mode AP start code, position independent, copied to `AP_TRAMPOLINE_PADDR`.
    pub static ap_tramp_start: u8;
    pub static ap_tramp_end: u8;
    /// First byte after the loaded image (code, data, tables, stacks).
    static __image_end: u8;
}

/// Physical address of the PVH start info the loader handed over.
pub fn start_info() -> u64 {
    // SAFETY: written once by the PVH entry before any Rust code runs.
    u64::from(unsafe { core::ptr::read_volatile(&raw const start_info_paddr) })
}

/// What the BSP's `cpuid` reported in ring 0.
#[derive(Clone, Copy, Debug)]
pub struct BootCpuid {
    pub leaf1_ebx: u32,
    pub leaf1_ecx: u32,
    /// Leaf 0x40000000: highest hypervisor leaf and the 12-byte signature.
    pub hv_max: u32,
    pub hv_signature: [u32; 3],
    /// Leaf 0x40000001 EAX: KVM feature bits.
    pub hv_features: u32,
}

pub fn cpuid() -> BootCpuid {
    // SAFETY: written once by the PVH entry before any Rust code runs.
    let r = unsafe { core::ptr::read_volatile(&raw const boot_cpuid) };
    BootCpuid {
        leaf1_ebx: r[0],
        leaf1_ecx: r[1],
        hv_max: r[2],
        hv_signature: [r[3], r[4], r[5]],
        hv_features: r[6],
    }
}

/// First physical address after the image; RAM from here on is free for the workload.
pub fn image_end() -> u64 {
    (&raw const __image_end) as u64
}
