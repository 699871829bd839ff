// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Empty programs on the seven hooks of net.bpf.c: the fixed cost of having a BPF program
 * attached to each tracepoint (the floor for bpf_ab.c, docs/bench/network.md). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tp_btf/inet_sock_set_state") int BPF_PROG(e_set_state) { return 0; }
SEC("tp_btf/tcp_probe") int BPF_PROG(e_tcp_probe) { return 0; }
SEC("tp_btf/tcp_retransmit_skb") int BPF_PROG(e_retransmit) { return 0; }
SEC("tp_btf/tcp_retransmit_synack") int BPF_PROG(e_retransmit_synack) { return 0; }
SEC("tp_btf/tcp_send_reset") int BPF_PROG(e_send_reset) { return 0; }
SEC("tp_btf/tcp_receive_reset") int BPF_PROG(e_receive_reset) { return 0; }
SEC("tp_btf/kfree_skb") int BPF_PROG(e_kfree_skb) { return 0; }
