/*
 * nfq_baseline: the smallest useful NFQUEUE consumer, for benches/raw.rs to compare nfqmark
 * against. It binds one queue with libnetfilter_queue, copies whole packets (as nfqmark does),
 * and accepts every packet unchanged:
 *
 *   nfq_baseline QUEUE          one verdict per packet (nfq_set_verdict), the classic loop
 *   nfq_baseline QUEUE batch    one batch verdict per receive burst (nfq_set_verdict_batch):
 *                               read until the socket is empty, then accept everything up to
 *                               the last id at once
 *
 * Same queue settings as nfqmark's defaults: max length 4096, 8 MiB receive buffer (forced),
 * no fail-open (the bench runs nfqmark with --fail-closed too, so what is delivered went through
 * the program). On SIGTERM/SIGINT it prints "packets=N verdicts=M" and exits 0.
 *
 * Built by benches/raw.rs at bench time: gcc -O2 nfq_baseline.c -lnetfilter_queue
 * (Debian: libnetfilter-queue-dev).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

static volatile sig_atomic_t stop;
static uint64_t packets, verdicts;
static uint32_t last_id;
static int batch;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data)
{
    (void)msg; (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    packets++;
    if (batch) {
        last_id = id;
        return 0;
    }
    verdicts++;
    return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s QUEUE [batch]\n", argv[0]);
        return 2;
    }
    int queue = atoi(argv[1]);
    batch = argc > 2 && strcmp(argv[2], "batch") == 0;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: recv returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct nfq_handle *h = nfq_open();
    if (!h) {
        perror("nfq_open");
        return 2;
    }
    struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)queue, &on_packet, NULL);
    if (!qh) {
        perror("nfq_create_queue");
        return 2;
    }
    if (nfq_set_queue_maxlen(qh, 4096) < 0)
        perror("nfq_set_queue_maxlen");
    int fd = nfq_fd(h);
    int rcvbuf = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        perror("SO_RCVBUFFORCE");
    /* Copy mode last: the kernel starts queueing once it is set. */
    if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 0xffff) < 0) {
        perror("nfq_set_mode");
        return 2;
    }
    fprintf(stderr, "nfq_baseline: queue %d bound (%s verdicts)\n", queue,
            batch ? "batch" : "per-packet");

    static char buf[1 << 18] __attribute__((aligned));
    while (!stop) {
        int flags = 0;
        int got = 0;
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof buf, flags);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    break;
                if (errno == ENOBUFS) /* overflow: the kernel dropped some; carry on */
                    continue;
                perror("recv");
                stop = 1;
                break;
            }
            nfq_handle_packet(h, buf, (int)n);
            got = 1;
            if (!batch)
                break;
            /* Batch mode: drain what is there without blocking, then one verdict. */
            flags = MSG_DONTWAIT;
        }
        if (batch && got && last_id) {
            nfq_set_verdict_batch(qh, last_id, NF_ACCEPT);
            verdicts++;
            last_id = 0;
        }
    }
    printf("packets=%llu verdicts=%llu\n", (unsigned long long)packets,
           (unsigned long long)verdicts);
    fflush(stdout);
    nfq_destroy_queue(qh);
    nfq_close(h);
    return 0;
}
