/* The polled virtio-net driver of net.c, shared with the API modes (api_modes.c). */
#ifndef KILN_GUEST_NET_H
#define KILN_GUEST_NET_H

#include "virtio.h"

#define NET_HDR_LEN 12 /* virtio_net_hdr_v1 (VERSION_1, no MRG_RXBUF) */
#define ETH_HLEN 14
#define ETH_MAX_FRAME 1514
#define ETHERTYPE_KILN 0x88b5

struct net {
    struct vdev dev;
    struct virtq rxq, txq;
    u8 mac[6];
    unsigned frames, received, bad, ignored;
};

/* Initialise the first virtio_mmio.device as a NIC (prefix "net"): RX and TX queues, receive
 * buffers posted. */
bool net_open(struct net *nt);
/* Read the MAC from the config space into nt->mac, print it, check kiln.mac if given. */
void net_mac(struct net *nt);

#endif
