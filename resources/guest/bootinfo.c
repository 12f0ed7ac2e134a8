/* Reading the boot inputs: Linux boot_params (boot.rst "zero page") and PVH hvm_start_info. */
#include "boot.h"
#include "lib.h"

#define CMDLINE_MAX 0x10000

/* struct boot_params offsets (Documentation/arch/x86/zero-page.rst). */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define E820_ENTRY_SIZE 20
#define E820_TABLE_MAX 128

/* struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
#define PVH_MAGIC 0x336ec578
#define HSI_MAGIC 0
#define HSI_NR_MODULES 12
#define HSI_MODLIST 16
#define HSI_CMDLINE 24
#define HSI_MEMMAP 40
#define HSI_MEMMAP_ENTRIES 48
#define HSI_MEMMAP_ENTRY_SIZE 24
#define HSI_MOD_PADDR 0
#define HSI_MOD_SIZE 8

static void read_cmdline(struct boot_info *bi, u64 paddr)
{
    bi->cmdline = "";
    bi->cmdline_len = 0;
    if (paddr == 0 || paddr >= FOUR_GIB)
        return;
    const char *s = PHYS(paddr);
    size_t n = 0;
    while (n < CMDLINE_MAX && paddr + n < FOUR_GIB && s[n])
        n++;
    bi->cmdline = s;
    bi->cmdline_len = n;
}

static void read_linux64(struct boot_info *bi, const u8 *bp)
{
    read_cmdline(bi, rd32(bp + BP_CMD_LINE_PTR) | ((u64)rd32(bp + BP_EXT_CMD_LINE_PTR) << 32));
    bi->initrd_addr = rd32(bp + BP_RAMDISK_IMAGE) | ((u64)rd32(bp + BP_EXT_RAMDISK_IMAGE) << 32);
    bi->initrd_size = rd32(bp + BP_RAMDISK_SIZE) | ((u64)rd32(bp + BP_EXT_RAMDISK_SIZE) << 32);
    u32 n = bp[BP_E820_ENTRIES];
    if (n > E820_TABLE_MAX)
        n = E820_TABLE_MAX;
    for (u32 i = 0; i < n; i++) {
        const u8 *e = bp + BP_E820_TABLE + i * E820_ENTRY_SIZE;
        bi->memmap[i].addr = rd64(e);
        bi->memmap[i].size = rd64(e + 8);
        bi->memmap[i].type = rd32(e + 16);
    }
    bi->nr_memmap = n;
}

static void read_pvh(struct boot_info *bi, const u8 *si)
{
    u32 magic = rd32(si + HSI_MAGIC);
    if (magic != PVH_MAGIC) {
        check_fail("pvh_magic", "expected 0x%x got 0x%x", PVH_MAGIC, magic);
        bi->valid = false;
        return;
    }
    read_cmdline(bi, rd64(si + HSI_CMDLINE));
    u64 mods = rd64(si + HSI_MODLIST);
    if (rd32(si + HSI_NR_MODULES) > 0 && mods != 0 && mods < FOUR_GIB) {
        bi->initrd_addr = rd64((const u8 *)PHYS(mods) + HSI_MOD_PADDR);
        bi->initrd_size = rd64((const u8 *)PHYS(mods) + HSI_MOD_SIZE);
    }
    u64 map = rd64(si + HSI_MEMMAP);
    u32 n = rd32(si + HSI_MEMMAP_ENTRIES);
    if (map == 0 || map >= FOUR_GIB)
        n = 0;
    if (n > MAX_MEMMAP)
        n = MAX_MEMMAP;
    for (u32 i = 0; i < n; i++) {
        const u8 *e = (const u8 *)PHYS(map) + i * HSI_MEMMAP_ENTRY_SIZE;
        bi->memmap[i].addr = rd64(e);
        bi->memmap[i].size = rd64(e + 8);
        bi->memmap[i].type = rd32(e + 16);
    }
    bi->nr_memmap = n;
}

void boot_info_read(struct boot_info *bi, u64 info_paddr, bool pvh)
{
    memset(bi, 0, sizeof(*bi));
    bi->pvh = pvh;
    bi->valid = true;
    bi->cmdline = "";
    if (info_paddr == 0 || info_paddr >= FOUR_GIB) {
        bi->valid = false;
        return;
    }
    if (pvh)
        read_pvh(bi, PHYS(info_paddr));
    else
        read_linux64(bi, PHYS(info_paddr));
}
