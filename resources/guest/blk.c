/* virtio-blk checks (kiln.mode=blk): phase 2. */
#include "lib.h"
#include "modes.h"

void blk_run(void)
{
    check_fail("blk", "not implemented yet");
}
