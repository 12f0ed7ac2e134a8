/* virtio-net checks (kiln.mode=net): phase 2. */
#include "lib.h"
#include "modes.h"

void net_run(void)
{
    check_fail("net", "not implemented yet");
}
