/* Extra work selected by kiln.mode= (virtio drivers). */
#ifndef KILN_GUEST_MODES_H
#define KILN_GUEST_MODES_H

#include "types.h"

/* kiln.mode=blk: virtio-blk checks (blk.c). */
void blk_run(void);
/* kiln.mode=net: virtio-net checks (net.c). */
void net_run(void);

struct boot_info;
/* kiln.mode=blkbench: virtio-blk throughput loop for `kiln bench --io blk` (bench.c). */
void blkbench_run(const struct boot_info *bi);
/* kiln.mode=netbench: virtio-net frame loop for `kiln bench --io net` (bench.c). */
void netbench_run(const struct boot_info *bi);
/* kiln.mode=hostile: misbehaving virtio-blk driver, recovery checked after each case. */
void hostile_run(const struct boot_info *bi);
/* Token `key` in [lo, hi] (default `def` when absent); reports `check` FAIL when bad
 * (bench.c). */
bool bench_arg(const char *check, const char *key, u64 def, u64 lo, u64 hi, u64 *out);

/* Modes for the API tests (api_modes.c). count returns only on a bad kiln.every. */
void count_run(void);
void kbd_run(void);
void blkresize_run(void);
void netrate_run(void);

/* kiln.mode=snap: counts forever with checksums and disk requests in flight, for the
 * snapshot/restore tests (snap_mode.c); returns only on a bad argument. */
void snap_run(void);

/* kiln.mode=vsock: echo server and/or client on the virtio-vsock device (vsock.c). */
void vsock_run(const struct boot_info *bi);
/* kiln.mode=rng: four 64-byte requests to the virtio-rng device (rng.c). */
void rng_run(void);

#endif
