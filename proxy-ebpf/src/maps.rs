//! The maps, pinned by name under the agent's `<bpffs-root>/maps/`.
//! Keys, values and sizes come from `proxy-common`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use proxy_common::{
    Backend, CtEntry, CtKey, DropReason, EndpointInfo, FragKey, FragPorts, RevNat, ServiceKey,
    ServiceValue,
};

#[map]
pub static SL_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(proxy_common::SERVICES_MAX, 0);

#[map]
pub static SL_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(proxy_common::BACKENDS_MAX, 0);

#[map]
pub static SL_REVNAT: HashMap<u16, RevNat> = HashMap::pinned(proxy_common::REVNAT_MAX, 0);

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
pub static SL_VIPS: HashMap<u32, u32> = HashMap::pinned(proxy_common::VIPS_MAX, 0);
