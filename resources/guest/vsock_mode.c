/*
 * kiln.mode=vsock: the two roles on the driver of vsock.c, run in this order:
 *   echo server  listens on kiln.vsock_port (default 1234; 0: skip) for one connection from
 *                the host (CID 2) and sends every byte back until the host shuts down;
 *   client       with kiln.vsock_connect=P: connects to host port P from
 *                kiln.vsock_local_port (default 5000), sends kiln.vsock_bytes (default
 *                200000) of the pattern byte i = (i * 7 + 3) & 0xff under the host's credit,
 *                then shuts down. See README.md for the output lines.
 */
#include "boot.h"
#include "lib.h"
#include "modes.h"
#include "vsock.h"

#define DEFAULT_PORT 1234
#define DEFAULT_LOCAL_PORT 5000
#define DEFAULT_BYTES 200000
#define MAX_BYTES (64u << 20)
#define DEFAULT_WAIT 60000       /* idle polls, ~1 ms each under the emulator */
#define CREDIT_ASK_POLLS 200     /* stuck without credit this long: CREDIT_REQUEST */
#define RST_WAIT_POLLS 5000      /* after our SHUTDOWN: wait this long for the host's RST */
#define POLL_DELAY 600           /* pause loops per idle poll (~1 ms) */

static void delay(u64 loops)
{
    for (u64 i = 0; i < loops; i++)
        cpu_pause();
}

/* Echo what the host's credit allows; consumed bytes move fwd_cnt. True if it sent. */
static bool pump_echo(struct vsock_conn *c)
{
    bool sent = false;
    if (c->shut_rcv) { /* the host reads no more: drop the rest */
        c->fwd_cnt += c->ring_len;
        c->ring_head = (c->ring_head + c->ring_len) % VSOCK_BUF_ALLOC;
        c->ring_len = 0;
    }
    while (c->ring_len > 0 && !vsk.failed) {
        u32 n = vsock_peer_credit(c);
        if (n == 0)
            break;
        n = n < c->ring_len ? n : c->ring_len;
        n = n < VSOCK_BUF_ALLOC - c->ring_head ? n : VSOCK_BUF_ALLOC - c->ring_head;
        n = n < VSOCK_TX_DATA_MAX ? n : VSOCK_TX_DATA_MAX;
        int s = vsock_tx_slot();
        if (s < 0)
            return sent;
        memcpy(vsock_tx_data(s), vsock_ring() + c->ring_head, n);
        c->ring_head = (c->ring_head + n) % VSOCK_BUF_ALLOC;
        c->ring_len -= n;
        c->fwd_cnt += n;
        c->echoed += n;
        vsock_send_rw(c, s, n);
        sent = true;
    }
    /* Every header carries fwd_cnt; an explicit update only after half the buffer. */
    if (c->fwd_cnt - c->last_fwd_sent > VSOCK_BUF_ALLOC / 2)
        sent = vsock_send_ctl(c, VSOCK_OP_CREDIT_UPDATE, 0) || sent;
    return sent;
}

/* Stuck on credit with data to send: after CREDIT_ASK_POLLS idle polls ask, then again
 * every CREDIT_ASK_POLLS * 5. */
static void maybe_ask_credit(struct vsock_conn *c, u64 idle)
{
    if (idle == 1)
        vsk.credit_stalls++;
    if (idle == CREDIT_ASK_POLLS || (idle > CREDIT_ASK_POLLS && idle % (CREDIT_ASK_POLLS * 5) == 0))
        vsock_send_ctl(c, VSOCK_OP_CREDIT_REQUEST, 0);
}

/* After our SHUTDOWN: the host answers RST; if it does not, we send one (§5.10.6.6). */
static void close_with_shutdown(struct vsock_conn *c)
{
    if (!vsock_send_ctl(c, VSOCK_OP_SHUTDOWN, VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND))
        return;
    for (u64 idle = 0; !c->reset && !vsk.failed; idle++) {
        if (vsock_poll(c))
            idle = 0;
        else if (idle >= RST_WAIT_POLLS || idle >= vsk.wait)
            break;
        else
            delay(POLL_DELAY);
    }
    if (!c->reset) {
        kprintf("KILN-GUEST vsock no rst after shutdown, sending rst\n");
        vsock_send_ctl(c, VSOCK_OP_RST, 0);
    }
}

static void echo_server(u32 port)
{
    struct vsock_conn *c = &vsock_cn;
    u64 idle = 0;
    memset(c, 0, sizeof(*c));
    c->state = VSOCK_LISTEN;
    c->echo = true;
    c->local_port = port;
    kprintf("KILN-GUEST vsock listening %u\n", port);
    while (c->state == VSOCK_LISTEN && !vsk.failed)
        if (!vsock_idle(&idle, vsock_poll(c), "accept"))
            return;
    idle = 0;
    while (!vsk.failed) {
        bool progress = vsock_poll(c);
        if (c->overflow) {
            vsock_send_ctl(c, VSOCK_OP_RST, 0);
            vsock_fail("host sent beyond our credit; buf_alloc", VSOCK_BUF_ALLOC);
            return;
        }
        if (c->reset)
            break;
        progress = pump_echo(c) || progress;
        if (c->shut_send && c->ring_len == 0) {
            /* The host sends no more and all is echoed (the device keeps TX order): it
             * asked to close. Both flags: it expects our RST; only SEND: we shut down too
             * and wait for its RST. */
            if (c->shut_rcv)
                vsock_send_ctl(c, VSOCK_OP_RST, 0);
            else
                close_with_shutdown(c);
            break;
        }
        if (c->ring_len > 0 && vsock_peer_credit(c) == 0 && !progress)
            maybe_ask_credit(c, idle + 1);
        if (!vsock_idle(&idle, progress, "echo"))
            return;
    }
    if (vsk.failed)
        return;
    kprintf("KILN-GUEST vsock echo closed bytes=%lu\n", (unsigned long)c->echoed);
    if (c->echoed != c->rx_bytes)
        kprintf("KILN-GUEST vsock echo received %lu dropped %lu\n", (unsigned long)c->rx_bytes,
                (unsigned long)(c->rx_bytes - c->echoed));
}

static void client(u32 peer_port, u32 local_port, u64 total)
{
    struct vsock_conn *c = &vsock_cn;
    u64 idle = 0, sent = 0;
    u32 fnv = 0x811c9dc5;
    memset(c, 0, sizeof(*c));
    c->state = VSOCK_CONNECTING;
    c->local_port = local_port;
    c->peer_port = peer_port;
    if (!vsock_send_ctl(c, VSOCK_OP_REQUEST, 0))
        return;
    while (c->state == VSOCK_CONNECTING && !c->reset && !vsk.failed)
        if (!vsock_idle(&idle, vsock_poll(c), "connect"))
            return;
    if (c->reset) {
        kprintf("KILN-GUEST vsock connect refused %u\n", peer_port);
        vsock_fail("connect refused (RST) by host port", peer_port);
        return;
    }
    if (vsk.failed)
        return;
    kprintf("KILN-GUEST vsock connected %u from %u\n", peer_port, local_port);
    idle = 0;
    while (sent < total && !vsk.failed) {
        bool progress = vsock_poll(c);
        if (c->reset || c->shut_rcv) {
            vsock_fail(c->reset ? "reset by the host after bytes"
                                : "host shut down receiving after bytes",
                       sent);
            return;
        }
        u32 credit = vsock_peer_credit(c);
        while (credit > 0 && sent < total) {
            u32 n = credit < VSOCK_TX_DATA_MAX ? credit : VSOCK_TX_DATA_MAX;
            n = total - sent < n ? (u32)(total - sent) : n;
            int s = vsock_tx_slot();
            if (s < 0)
                return;
            u8 *d = vsock_tx_data(s);
            for (u32 i = 0; i < n; i++) {
                d[i] = (u8)((sent + i) * 7 + 3);
                fnv = (fnv ^ d[i]) * 0x01000193;
            }
            if (!vsock_send_rw(c, s, n))
                return;
            sent += n;
            credit -= n;
            progress = true;
        }
        if (c->fwd_cnt - c->last_fwd_sent > VSOCK_BUF_ALLOC / 2)
            vsock_send_ctl(c, VSOCK_OP_CREDIT_UPDATE, 0);
        if (sent < total && credit == 0 && !progress)
            maybe_ask_credit(c, idle + 1);
        if (!vsock_idle(&idle, progress, credit == 0 ? "credit" : "send"))
            return;
    }
    if (vsk.failed)
        return;
    close_with_shutdown(c);
    if (vsk.failed)
        return;
    if (c->rx_bytes)
        kprintf("KILN-GUEST vsock client received %lu bytes (dropped)\n",
                (unsigned long)c->rx_bytes);
    kprintf("KILN-GUEST vsock sent %lu fnv=%08x\n", (unsigned long)sent, fnv);
    kprintf("KILN-GUEST vsock done\n");
}

/* The buffer area must be RAM (a type-1 e820 entry covering it). */
static bool area_in_ram(const struct boot_info *bi)
{
    for (u32 i = 0; i < bi->nr_memmap; i++) {
        const struct mem_range *r = &bi->memmap[i];
        if (r->type == E820_RAM && r->addr <= VSOCK_AREA &&
            r->addr + r->size >= VSOCK_AREA + VSOCK_AREA_SIZE)
            return true;
    }
    return false;
}

void vsock_run(const struct boot_info *bi)
{
    const char *v;
    size_t n;
    u64 port, connect = 0, local, bytes;
    bool has_connect = cmdline_get("kiln.vsock_connect", &v, &n);
    if (!bench_arg("vsock", "kiln.vsock_port", DEFAULT_PORT, 0, 0xffffffff, &port) ||
        (has_connect && !bench_arg("vsock", "kiln.vsock_connect", 0, 1, 0xffffffff, &connect)) ||
        !bench_arg("vsock", "kiln.vsock_local_port", DEFAULT_LOCAL_PORT, 1, 0xffffffff, &local) ||
        !bench_arg("vsock", "kiln.vsock_bytes", DEFAULT_BYTES, 0, MAX_BYTES, &bytes) ||
        !bench_arg("vsock", "kiln.wait", DEFAULT_WAIT, 1, 1ULL << 32, &vsk.wait))
        return;
    if (!virtio_find_id(VIRTIO_ID_VSOCK, &vsk.dev, "vsock")) {
        check_fail("vsock", "no device");
        return;
    }
    if (!area_in_ram(bi)) {
        check_fail("vsock", "RAM does not cover buffers 0x%lx..0x%lx", (unsigned long)VSOCK_AREA,
                   (unsigned long)(VSOCK_AREA + VSOCK_AREA_SIZE));
        return;
    }
    if (!vsock_open())
        return;
    if (port != 0)
        echo_server((u32)port);
    if (has_connect && !vsk.failed)
        client((u32)connect, (u32)local, bytes);
    kprintf("KILN-GUEST vsock stats tx_pkts=%lu rx_pkts=%lu credit_updates_sent=%lu "
            "credit_updates_received=%lu credit_requests_sent=%lu credit_stalls=%lu\n",
            (unsigned long)vsk.tx_pkts, (unsigned long)vsk.rx_pkts, (unsigned long)vsk.updates_sent,
            (unsigned long)vsk.updates_rx, (unsigned long)vsk.requests_sent,
            (unsigned long)vsk.credit_stalls);
    if (!vsk.failed)
        check_ok("vsock");
}
