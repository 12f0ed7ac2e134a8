//! Loading a Linux kernel (ELF vmlinux, bzImage, PVH) into guest memory and preparing
//! the x86-64 boot state: zero page / PVH start info, e820, MP table, page tables and
//! initial vCPU registers.

pub mod layout;
