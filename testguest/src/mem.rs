//! The C memory functions the compiler emits calls to. Written with string
//! instructions or volatile accesses so that LLVM cannot turn them into calls to
//! themselves.

use core::arch::asm;

#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and do not overlap.
    unsafe {
        asm!(
            "rep movsb",
            inout("rdi") dst => _,
            inout("rsi") src => _,
            inout("rcx") len => _,
            options(nostack, preserves_flags)
        );
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= len {
        // Destination below the source or disjoint: a forward copy is safe.
        // SAFETY: the caller guarantees both ranges are valid; a forward
        // `rep movsb` reads each byte before it can be overwritten.
        unsafe { memcpy(dst, src, len) };
    } else {
        // Destination overlaps the source from above: copy backwards.
        // SAFETY: as above; len > 0 here, so the end pointers stay in range.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rdi") dst.wrapping_add(len - 1) => _,
                inout("rsi") src.wrapping_add(len - 1) => _,
                inout("rcx") len => _,
                options(nostack)
            );
        }
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memset(dst: *mut u8, value: i32, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!(
            "rep stosb",
            inout("rdi") dst => _,
            inout("rcx") len => _,
            in("al") value as u8,
            options(nostack, preserves_flags)
        );
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    for i in 0..len {
        // SAFETY: the caller guarantees both ranges are valid for `len` bytes.
        let x = unsafe { core::ptr::read_volatile(a.wrapping_add(i)) };
        // SAFETY: as above.
        let y = unsafe { core::ptr::read_volatile(b.wrapping_add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, len) }
}
