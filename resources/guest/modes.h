/* Extra work selected by kiln.mode= (virtio drivers). */
#ifndef KILN_GUEST_MODES_H
#define KILN_GUEST_MODES_H

/* kiln.mode=blk: virtio-blk checks (blk.c). */
void blk_run(void);
/* kiln.mode=net: virtio-net checks (net.c). */
void net_run(void);

#endif
