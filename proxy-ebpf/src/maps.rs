//! The maps, pinned by name under the agent's `<bpffs-root>/maps/`.
//! Keys, values and sizes come from `proxy-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtEntry, CtKey, DatapathConfig, DropReason, EndpointInfo,
    FragKey, FragPorts, RevNat, ServiceKey, ServiceValue, SockRevNat, SockRevNatKey,
    SourceRangeKey, TrafficStats,
};

#[map]
pub static SL_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(proxy_common::SERVICES_MAX, proxy_common::BPF_F_NO_PREALLOC);

#[map]
pub static SL_BACKENDS: HashMap<u32, Backend> =
    HashMap::pinned(proxy_common::BACKENDS_MAX, proxy_common::BPF_F_NO_PREALLOC);

#[map]
pub static SL_REVNAT: HashMap<u32, RevNat> =
    HashMap::pinned(proxy_common::REVNAT_MAX, proxy_common::BPF_F_NO_PREALLOC);

#[map]
pub static SL_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(proxy_common::CT_MAX, 0);

#[map]
pub static SL_FRAGS: LruHashMap<FragKey, FragPorts> =
    LruHashMap::pinned(proxy_common::FRAGS_MAX, 0);

#[map]
pub static SL_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

/// Local pods by IPv4 address; written by the CNI plugin.
#[map]
pub static SL_ENDPOINTS: HashMap<u32, EndpointInfo> =
    HashMap::pinned(proxy_common::ENDPOINTS_MAX, 0);

/// Frontend addresses -> number of frontends on them.
#[map]
pub static SL_VIPS: HashMap<u32, u32> =
    HashMap::pinned(proxy_common::VIPS_MAX, proxy_common::BPF_F_NO_PREALLOC);

/// Per-service counters by reverse-NAT index (entries made by the control
/// plane). Per CPU, so the packet path adds without atomics; not
/// preallocated, so memory follows the number of services, not the maximum.
#[map]
pub static SL_SVC_STATS: PerCpuHashMap<u32, TrafficStats> =
    PerCpuHashMap::pinned(proxy_common::REVNAT_MAX, proxy_common::BPF_F_NO_PREALLOC);

/// Per-backend counters by backend id (entries made by the control plane).
#[map]
pub static SL_BE_STATS: PerCpuHashMap<u32, TrafficStats> =
    PerCpuHashMap::pinned(proxy_common::BACKENDS_MAX, proxy_common::BPF_F_NO_PREALLOC);

/// Session affinity: (client, frontend) -> backend and last use.
#[map]
pub static SL_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(proxy_common::AFFINITY_MAX, 0);

/// Socket-level LB: (socket, backend) -> the frontend it asked for.
#[map]
pub static SL_SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNat> =
    LruHashMap::pinned(proxy_common::SOCK_REVNAT_MAX, 0);

/// This node's addresses -> `NODE_ADDR_*` flags (written by the agent).
#[map]
pub static SL_NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(proxy_common::NODE_ADDRS_MAX, 0);

/// The agent's settings for the data path (index 0).
#[map]
pub static SL_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// `loadBalancerSourceRanges`: (reverse-NAT index, source) prefixes allowed
/// on frontends with `SVC_FLAG_SOURCE_RANGES` (written by the agent).
#[map]
pub static SL_SRC_RANGES: LpmTrie<SourceRangeKey, u32> =
    LpmTrie::pinned(proxy_common::SRC_RANGES_MAX, 0);

/// The cluster's pod address space (written by the agent): destinations of
/// the FIB fast path.
#[map]
pub static SL_POD_CIDRS: LpmTrie<u32, u32> = LpmTrie::pinned(proxy_common::POD_CIDRS_MAX, 0);

/// Fast-path decisions by `FWD_*` slot.
#[map]
pub static SL_FWD_STATS: PerCpuArray<u64> = PerCpuArray::pinned(proxy_common::FWD_STATS_COUNT, 0);
