/* Common types and port/MMIO helpers for the Kiln test guest (freestanding, no libc). */
#ifndef KILN_GUEST_TYPES_H
#define KILN_GUEST_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* Everything below 4 GiB is identity mapped: a physical address is a pointer. */
#define PHYS(addr) ((void *)(uintptr_t)(addr))
#define FOUR_GIB 0x100000000ULL

static inline void outb(u16 port, u8 val)
{
    __asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port) : "memory");
}

static inline u8 inb(u16 port)
{
    u8 val;
    __asm__ volatile("inb %1, %0" : "=a"(val) : "Nd"(port) : "memory");
    return val;
}

static inline void cpu_pause(void)
{
    __asm__ volatile("pause" ::: "memory");
}

/* Compiler barrier: the emulated CPU and the VMM see memory in program order (x86 TSO). */
static inline void barrier(void)
{
    __asm__ volatile("" ::: "memory");
}

static inline u8 mmio_read8(u64 addr) { return *(volatile u8 *)PHYS(addr); }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)PHYS(addr); }
static inline void mmio_write8(u64 addr, u8 v) { *(volatile u8 *)PHYS(addr) = v; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)PHYS(addr) = v; }

static inline u16 rd16(const void *p) { u16 v; __builtin_memcpy(&v, p, 2); return v; }
static inline u32 rd32(const void *p) { u32 v; __builtin_memcpy(&v, p, 4); return v; }
static inline u64 rd64(const void *p) { u64 v; __builtin_memcpy(&v, p, 8); return v; }

#endif
