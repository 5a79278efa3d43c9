//! Kernel ABI of netlink and nfnetlink_queue: numbers and struct layouts, nothing else.
//!
//! Defined here because libc lacks some and these are the ones the codec is checked against.
//! All multi-byte netlink header fields are host order; NFQUEUE payload values are big-endian.
//! This module owns no logic and must never grow any: no functions, no syscalls.

use libc::c_int;

// <linux/netlink.h>
/// Netlink protocol of nfnetlink sockets.
pub const NETLINK_NETFILTER: c_int = 12;
/// `setsockopt` level of netlink socket options.
pub const SOL_NETLINK: c_int = 270;
/// 1 = do not report receive-queue overflow as `ENOBUFS`. We set 0: overflow must be counted.
pub const NETLINK_NO_ENOBUFS: c_int = 5;
/// 1 = an error reply quotes only the header of the failed request, not the whole request.
pub const NETLINK_CAP_ACK: c_int = 10;
/// `sizeof(struct nlmsghdr)`: u32 len, u16 type, u16 flags, u32 seq, u32 pid.
pub const NLMSG_HDRLEN: usize = 16;
/// Netlink messages and attributes start on 4-byte boundaries (`NLMSG_ALIGNTO`, `NLA_ALIGNTO`).
pub const NL_ALIGNTO: usize = 4;
/// Nothing: skip.
pub const NLMSG_NOOP: u16 = 1;
/// Error or acknowledgement: `struct nlmsgerr` (i32 negative errno, 0 = ack; request header).
pub const NLMSG_ERROR: u16 = 2;
/// End of a multipart dump.
pub const NLMSG_DONE: u16 = 3;
/// Flag: this is a request.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Flag: answer with an acknowledgement even on success.
pub const NLM_F_ACK: u16 = 0x4;
/// Flag: the dump was interrupted by a change; its messages may be inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// Flags: return every object (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// `sizeof(struct nlattr)`: u16 len (header included, padding excluded), u16 type.
pub const NLA_HDRLEN: usize = 4;
/// Attribute type bits without `NLA_F_NESTED` (0x8000) and `NLA_F_NET_BYTEORDER` (0x4000).
pub const NLA_TYPE_MASK: u16 = 0x3fff;
/// Attribute type flag: the value is a list of attributes.
pub const NLA_F_NESTED: u16 = 0x8000;

// <linux/netfilter/nfnetlink.h>
/// `nfgenmsg.version`.
pub const NFNETLINK_V0: u8 = 0;
/// Subsystem id in the high byte of `nlmsg_type`.
pub const NFNL_SUBSYS_QUEUE: u16 = 3;
/// `sizeof(struct nfgenmsg)`: u8 family, u8 version, be16 res_id (the queue number).
pub const NFGENMSG_LEN: usize = 4;

// <linux/netfilter/nfnetlink_queue.h>: message types (low byte of `nlmsg_type`).
/// Kernel -> us: a queued packet.
pub const NFQNL_MSG_PACKET: u16 = 0;
/// Us -> kernel: verdict for one packet.
pub const NFQNL_MSG_VERDICT: u16 = 1;
/// Us -> kernel: queue configuration.
pub const NFQNL_MSG_CONFIG: u16 = 2;
/// Us -> kernel: verdict for every queued packet with id <= the given one.
pub const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

// Packet and verdict attributes (`enum nfqnl_attr_type`).
/// `struct nfqnl_msg_packet_hdr` (packed, 7 bytes): be32 id, be16 hw_protocol, u8 hook.
pub const NFQA_PACKET_HDR: u16 = 1;
/// `struct nfqnl_msg_verdict_hdr`: be32 verdict, be32 id.
pub const NFQA_VERDICT_HDR: u16 = 2;
/// be32 firewall mark (sent only when non-zero; we send it to set a new one).
pub const NFQA_MARK: u16 = 3;
/// be32 input interface index.
pub const NFQA_IFINDEX_INDEV: u16 = 5;
/// be32 output interface index.
pub const NFQA_IFINDEX_OUTDEV: u16 = 6;
/// `struct nfqnl_msg_packet_hw`: be16 hw_addrlen, u16 pad, u8 hw_addr[8]. Sent for packets
/// with an input device whose link layer has a header parser (Ethernet: the source MAC).
pub const NFQA_HWADDR: u16 = 9;
/// Size of `struct nfqnl_msg_packet_hw`.
pub const NFQA_HWADDR_LEN: usize = 12;
/// The packet bytes, from the network header, at most the copy range.
pub const NFQA_PAYLOAD: u16 = 10;
/// Nested `CTA_*` attributes of the packet's conntrack entry (needs `NFQA_CFG_F_CONNTRACK`).
pub const NFQA_CT: u16 = 11;
/// be32 `enum ip_conntrack_info` of the packet (needs `NFQA_CFG_F_CONNTRACK`).
pub const NFQA_CT_INFO: u16 = 12;
/// be32 full packet length, sent only when the payload was cut to the copy range.
pub const NFQA_CAP_LEN: u16 = 13;
/// be32 `NFQA_SKB_*` flags, sent only when non-zero.
pub const NFQA_SKB_INFO: u16 = 14;
/// be32 uid of the sending socket (needs `NFQA_CFG_F_UID_GID`).
pub const NFQA_UID: u16 = 16;
/// be32 gid of the sending socket (needs `NFQA_CFG_F_UID_GID`).
pub const NFQA_GID: u16 = 17;

// Configuration (`enum nfqnl_attr_config`, `enum nfqnl_msg_config_cmds`, ...).
/// `struct nfqnl_msg_config_cmd`: u8 command, u8 pad, be16 pf.
pub const NFQA_CFG_CMD: u16 = 1;
/// `struct nfqnl_msg_config_params` (packed, 5 bytes): be32 copy_range, u8 copy_mode.
pub const NFQA_CFG_PARAMS: u16 = 2;
/// be32 most packets held waiting for a verdict.
pub const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
/// be32 which `NFQA_CFG_F_*` flags this message changes.
pub const NFQA_CFG_MASK: u16 = 4;
/// be32 the new values of the flags under the mask.
pub const NFQA_CFG_FLAGS: u16 = 5;
pub const NFQNL_CFG_CMD_BIND: u8 = 1;
pub const NFQNL_CFG_CMD_UNBIND: u8 = 2;
/// Obsolete (a no-op since Linux 3.8, acknowledged before any queue lookup).
pub const NFQNL_CFG_CMD_PF_BIND: u8 = 3;
/// Copy mode: metadata and (up to copy_range bytes of) the packet.
pub const NFQNL_COPY_PACKET: u8 = 2;
/// Queue full: accept new packets instead of dropping them.
pub const NFQA_CFG_F_FAIL_OPEN: u32 = 1 << 0;
/// Report each packet's conntrack entry (`NFQA_CT`, `NFQA_CT_INFO`). Refused with `EOPNOTSUPP`
/// by kernels built without `CONFIG_NETFILTER_NETLINK_GLUE_CT`.
pub const NFQA_CFG_F_CONNTRACK: u32 = 1 << 1;
/// Take GSO packets unsegmented, with checksums possibly not yet computed.
pub const NFQA_CFG_F_GSO: u32 = 1 << 2;
/// Report the sending socket's uid and gid.
pub const NFQA_CFG_F_UID_GID: u32 = 1 << 3;
/// The kernel clamps the copy range to this (`0xffff - NLA_HDRLEN`).
pub const MAX_COPY_RANGE: u32 = 0xffff - NLA_HDRLEN as u32;

/// `NFQA_SKB_INFO` flag: the packet's checksum is not computed yet (only with the GSO flag).
pub const SKB_CSUM_NOT_READY: u32 = 1 << 0;
/// `NFQA_SKB_INFO` flag: the packet is a GSO super-packet (only with the GSO flag).
pub const SKB_GSO: u32 = 1 << 1;
/// `NFQA_SKB_INFO` flag: the checksum of an incoming packet has not been verified.
pub const SKB_CSUM_NOT_VERIFIED: u32 = 1 << 2;

// <linux/netfilter.h>
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;
pub const NF_REPEAT: u32 = 4;

/// `nlmsg_type` of queued packets.
pub const PACKET_MSG_TYPE: u16 = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;

// <linux/netfilter/nfnetlink.h>
/// Subsystem id of ctnetlink (conntrack entries).
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;

// <linux/netfilter/nfnetlink_conntrack.h>: message types (`enum cntl_msg_types`).
/// Create or (without `NLM_F_CREATE`) update an entry; also the type of entries sent to us.
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
/// Get one entry by tuple.
pub const IPCTNL_MSG_CT_GET: u16 = 1;

// <linux/netfilter/nfnetlink_conntrack.h>: attributes of a conntrack entry (`enum ctattr_type`).
/// Nested `CTA_TUPLE_*`: the original direction's tuple.
pub const CTA_TUPLE_ORIG: u16 = 1;
/// Nested `CTA_TUPLE_*`: the reply direction's tuple.
pub const CTA_TUPLE_REPLY: u16 = 2;
/// be32 `IPS_*` status bits.
pub const CTA_STATUS: u16 = 3;
/// be32 connection mark.
pub const CTA_MARK: u16 = 8;
/// be32 the entry's id (stable while it lives).
pub const CTA_ID: u16 = 12;
/// be16 conntrack zone, sent only when not the default zone 0.
pub const CTA_ZONE: u16 = 18;
/// be32 the bits of the mark a `CTA_MARK` update changes: `ctnetlink_change_mark` computes
/// `(old & ~mask) ^ mark`, so the mark sent must have no bits outside the mask.
pub const CTA_MARK_MASK: u16 = 21;
/// `enum ctattr_tuple`: nested addresses.
pub const CTA_TUPLE_IP: u16 = 1;
/// `enum ctattr_tuple`: nested protocol and ports.
pub const CTA_TUPLE_PROTO: u16 = 2;
/// `enum ctattr_ip`: be32 IPv4 source.
pub const CTA_IP_V4_SRC: u16 = 1;
/// `enum ctattr_ip`: be32 IPv4 destination.
pub const CTA_IP_V4_DST: u16 = 2;
/// `enum ctattr_ip`: 16-byte IPv6 source.
pub const CTA_IP_V6_SRC: u16 = 3;
/// `enum ctattr_ip`: 16-byte IPv6 destination.
pub const CTA_IP_V6_DST: u16 = 4;
/// `enum ctattr_l4proto`: u8 IP protocol.
pub const CTA_PROTO_NUM: u16 = 1;
/// `enum ctattr_l4proto`: be16 source port.
pub const CTA_PROTO_SRC_PORT: u16 = 2;
/// `enum ctattr_l4proto`: be16 destination port.
pub const CTA_PROTO_DST_PORT: u16 = 3;

// <linux/netfilter/nf_conntrack_common.h>
/// `IPS_CONFIRMED`: the entry is in the conntrack table; clear while its first packet is
/// still on its way (the entry is confirmed when that packet leaves the last hook).
pub const IPS_CONFIRMED: u32 = 1 << 3;

// <linux/netfilter.h>: `nfgenmsg.nfgen_family` of nf_tables objects.
/// nft `inet` tables (IPv4 and IPv6).
pub const NFPROTO_INET: u8 = 1;
/// nft `ip` tables (iptables-nft).
pub const NFPROTO_IPV4: u8 = 2;
/// nft `ip6` tables (ip6tables-nft).
pub const NFPROTO_IPV6: u8 = 10;

// <linux/netfilter/nfnetlink.h>
/// Subsystem id of nf_tables.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;

// <linux/netfilter/nf_tables.h>: message types (`enum nf_tables_msg_types`).
/// Kernel -> us: one rule (each message of a rule dump).
pub const NFT_MSG_NEWRULE: u16 = 6;
/// Us -> kernel: get rules; with `NLM_F_DUMP` every rule, filtered by `NFTA_RULE_TABLE`.
pub const NFT_MSG_GETRULE: u16 = 7;

// Rule attributes (`enum nft_rule_attributes`).
/// String: the rule's table.
pub const NFTA_RULE_TABLE: u16 = 1;
/// String: the rule's chain.
pub const NFTA_RULE_CHAIN: u16 = 2;
/// be64: the rule's handle.
pub const NFTA_RULE_HANDLE: u16 = 3;
/// Nested list of `NFTA_LIST_ELEM`, each an expression.
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
/// Bytes: userspace's TLVs (libnftnl `struct nftnl_udata`: u8 type, u8 len, value).
pub const NFTA_RULE_USERDATA: u16 = 7;
/// `enum nft_list_attributes`: one element of a list.
pub const NFTA_LIST_ELEM: u16 = 1;
/// `enum nft_expr_attributes`: string, the expression's type ("counter", "target", ...).
pub const NFTA_EXPR_NAME: u16 = 1;
/// `enum nft_expr_attributes`: nested, the expression's own attributes.
pub const NFTA_EXPR_DATA: u16 = 2;
/// `enum nft_counter_attributes`: be64 bytes counted.
pub const NFTA_COUNTER_BYTES: u16 = 1;
/// `enum nft_counter_attributes`: be64 packets counted.
pub const NFTA_COUNTER_PACKETS: u16 = 2;
/// `enum nft_target_attributes` / `enum nft_match_attributes` (xtables compat): string name.
pub const NFTA_XT_NAME: u16 = 1;
/// be32 revision of the xtables extension.
pub const NFTA_XT_REV: u16 = 2;
/// The xtables extension's own info struct, in host byte order.
pub const NFTA_XT_INFO: u16 = 3;
/// `enum nft_queue_attributes`: be16 first queue number.
pub const NFTA_QUEUE_NUM: u16 = 1;
/// `enum nft_queue_attributes`: be16 number of queues balanced over.
pub const NFTA_QUEUE_TOTAL: u16 = 2;
/// `enum nft_queue_attributes`: the queue number comes from a register (not known here).
pub const NFTA_QUEUE_SREG_QNUM: u16 = 4;
/// libnftnl `NFTNL_UDATA_RULE_COMMENT`: the rule's comment, NUL-terminated.
pub const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
/// `struct xt_comment_info` (xt_comment.h): `char comment[256]`.
pub const XT_MAX_COMMENT_LEN: usize = 256;

// <linux/netlink.h>: more request flags.
/// Flag (new objects): create it if it does not exist.
pub const NLM_F_CREATE: u16 = 0x400;
/// Flag: one of several messages answering one request (a dump).
#[cfg(test)]
pub const NLM_F_MULTI: u16 = 0x2;

// <linux/netfilter/nfnetlink.h>: batches (a transaction of nf_tables messages).
/// Opens a batch; its `nfgenmsg.res_id` names the subsystem (big-endian).
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// Closes a batch: the kernel commits it if every message in it succeeded.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// Multicast group of nf_tables change notifications (`NFNLGRP_NFTABLES`).
pub const NFNLGRP_NFTABLES: u32 = 7;

// <linux/netfilter/nf_tables.h>: set and set element messages.
/// Kernel -> us: one set (the answer to a get).
pub const NFT_MSG_NEWSET: u16 = 9;
/// Us -> kernel: get one set by table and name.
pub const NFT_MSG_GETSET: u16 = 10;
/// Us -> kernel: add (or, existing, on Linux >= 6.12 re-time) elements; kernel -> us: elements
/// (each message of a dump, and notifications).
pub const NFT_MSG_NEWSETELEM: u16 = 12;
/// Us -> kernel: get elements (one by key, or all with `NLM_F_DUMP`).
pub const NFT_MSG_GETSETELEM: u16 = 13;
/// Us -> kernel: delete elements (`ENOENT` fails the batch for one that is not there).
pub const NFT_MSG_DELSETELEM: u16 = 14;
/// Us -> kernel: delete elements, no error for one that is not there (Linux >= 6.3).
pub const NFT_MSG_DESTROYSETELEM: u16 = 30;

// Set attributes (`enum nft_set_attributes`).
/// String: the set's table.
pub const NFTA_SET_TABLE: u16 = 1;
/// String: the set's name.
pub const NFTA_SET_NAME: u16 = 2;
/// be32 `NFT_SET_*` flags.
pub const NFTA_SET_FLAGS: u16 = 3;
/// be32 the key's data type (nft's numbering; concatenations combine them).
pub const NFTA_SET_KEY_TYPE: u16 = 4;
/// be32 the key's length in bytes (concatenated fields each padded to 4 bytes).
pub const NFTA_SET_KEY_LEN: u16 = 5;
/// Set flag: a map (elements carry data).
pub const NFT_SET_MAP: u32 = 0x8;
/// Set flag: elements may time out.
pub const NFT_SET_TIMEOUT: u32 = 0x10;

// Set element list attributes (`enum nft_set_elem_list_attributes`).
/// String: the table.
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
/// String: the set.
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
/// Nested list of `NFTA_LIST_ELEM`, each one element's attributes.
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

// Set element attributes (`enum nft_set_elem_attributes`).
/// Nested `NFTA_DATA_VALUE`: the key.
pub const NFTA_SET_ELEM_KEY: u16 = 1;
/// be64 milliseconds: how long the element lives from its (re)insertion.
pub const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
/// be64 milliseconds: how long it has left (sent by the kernel; settable on insertion).
pub const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
/// `enum nft_data_attributes`: the value's bytes.
pub const NFTA_DATA_VALUE: u16 = 1;
