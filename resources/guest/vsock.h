/* virtio-vsock (virtio 1.2 §5.10) wire format (little endian) and the polled driver of vsock.c. */
#ifndef KILN_GUEST_VSOCK_H
#define KILN_GUEST_VSOCK_H

#include "types.h"
#include "virtio.h"

#define VSOCK_HOST_CID 2
#define VSOCK_HDR_LEN 44

#define VSOCK_TYPE_STREAM 1

#define VSOCK_OP_REQUEST 1
#define VSOCK_OP_RESPONSE 2
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5
#define VSOCK_OP_CREDIT_UPDATE 6
#define VSOCK_OP_CREDIT_REQUEST 7

/* SHUTDOWN flags: the sender will receive (RCV) / send (SEND) no more data. */
#define VSOCK_SHUTDOWN_RCV 1
#define VSOCK_SHUTDOWN_SEND 2

/* virtio_vsock_event id */
#define VSOCK_EVENT_TRANSPORT_RESET 0

struct vsock_hdr {
    u64 src_cid;
    u64 dst_cid;
    u32 src_port;
    u32 dst_port;
    u32 len;
    u16 type;
    u16 op;
    u32 flags;
    u32 buf_alloc;
    u32 fwd_cnt;
} __attribute__((packed));
_Static_assert(sizeof(struct vsock_hdr) == VSOCK_HDR_LEN, "virtio_vsock_hdr is 44 bytes");

/* The driver of vsock.c, shared with the roles of vsock_mode.c. */

#define VSOCK_AREA 0x1000000ULL   /* 16 MiB: the bench modes' area (never in the same boot) */
#define VSOCK_AREA_SIZE 0x21000
#define VSOCK_NTX 4               /* packets in flight, two descriptors each (header, data) */
#define VSOCK_TX_DATA_MAX 4096    /* payload bytes per RW packet sent */
#define VSOCK_BUF_ALLOC (64u * 1024) /* advertised receive buffer = the echo ring */

enum vsock_state { VSOCK_LISTEN, VSOCK_CONNECTING, VSOCK_OPEN };

struct vsock_conn {
    enum vsock_state state;
    bool echo;                  /* server role: echo RW data back */
    bool reset;                 /* RST received (or a transport reset event) */
    bool shut_send, shut_rcv;   /* the host's SHUTDOWN flags */
    bool overflow;              /* the host sent beyond our credit */
    u32 local_port, peer_port;
    u32 peer_buf_alloc, peer_fwd_cnt; /* from the host's latest header */
    u32 tx_cnt;                 /* payload bytes we sent */
    u32 fwd_cnt;                /* payload bytes we consumed */
    u32 last_fwd_sent;          /* fwd_cnt in the last header we sent */
    u32 ring_head, ring_len;    /* echo ring: pending bytes */
    u64 rx_bytes, echoed;
};

struct vsock {
    struct vdev dev;
    struct virtq rxq, txq, evq;
    u64 cid, wait;
    int rx_of_head[VQ_MAX_SIZE];
    int tx_of_head[VQ_MAX_SIZE];
    int ev_of_head[VQ_MAX_SIZE];
    bool tx_busy[VSOCK_NTX];
    bool failed;                /* a KILN-CHECK vsock FAIL was printed */
    unsigned noise;
    u64 tx_pkts, rx_pkts, updates_sent, updates_rx, requests_sent, credit_stalls;
};

extern struct vsock vsk;
extern struct vsock_conn vsock_cn;

/* Set up the device found by virtio_find_id (queues, DRIVER_OK, CID, buffers posted). */
bool vsock_open(void);
/* Reap TX completions, handle received packets and events; true when anything happened. */
bool vsock_poll(struct vsock_conn *c);
/* Wait-loop bookkeeping: false (timeout reported) after kiln.wait idle polls in a row. */
bool vsock_idle(u64 *idle, bool progress, const char *what);
/* A free TX slot (waiting for completions, bounded); -1 after a timeout. */
int vsock_tx_slot(void);
u8 *vsock_tx_data(int slot);
/* The echo ring: VSOCK_BUF_ALLOC bytes. */
u8 *vsock_ring(void);
/* Send a packet without payload / an RW packet whose payload is in vsock_tx_data(slot). */
bool vsock_send_ctl(struct vsock_conn *c, u16 op, u32 flags);
bool vsock_send_rw(struct vsock_conn *c, int slot, u32 len);
/* The host's credit: its buf_alloc minus our bytes in flight (0 if inconsistent). */
u32 vsock_peer_credit(const struct vsock_conn *c);
/* KILN-CHECK vsock FAIL "<what> <n>" / "timeout <what>" (plus a KILN-GUEST timeout line). */
void vsock_fail(const char *what, u64 n);
void vsock_timeout(const char *what);

#endif
