//! Drop reasons: every packet the kernel programs drop is counted under one
//! of these in the per-CPU array `SL_DROPS`, indexed by the reason's value.

/// Why a packet was dropped. The value is the index into `SL_DROPS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// An IPv4 header with IHL < 5 or a total length shorter than its header.
    InvalidIpHeader = 1,
    /// A packet too short for the headers it announces.
    Truncated = 2,
    /// The service has no usable backend: rejected (ICMP port unreachable
    /// back to the client).
    NoBackend = 3,
    /// A backend slot or backend entry the service points at is missing
    /// (the control plane is mid-update, or the maps are inconsistent).
    BackendMissing = 4,
    /// A conntrack entry for a new flow could not be created (map full and
    /// LRU could not evict, or another error): fail closed.
    CtCreateFailed = 5,
    /// A checksum or store helper failed while rewriting the packet.
    NatFailed = 6,
    /// An ICMP error about a translated flow whose frontend is gone, so it
    /// cannot be translated back.
    IcmpErrorUntranslatable = 7,
    /// A packet to a service address on a port/protocol that no service
    /// serves: rejected like a service without endpoints.
    NoServicePort = 8,
    /// A Local traffic policy and no local endpoint while the service has
    /// endpoints elsewhere: dropped, as kube-proxy does (not rejected).
    NoLocalBackend = 9,
    /// An external flow to a backend on another node could not be SNATed:
    /// no node address known, or no free source port.
    SnatFailed = 10,
    /// A new flow to a frontend with `loadBalancerSourceRanges` (a
    /// LoadBalancer IP or NodePort) from a source outside the ranges.
    SourceRangeDenied = 11,
    /// A packet to a service port of a protocol the data path cannot
    /// translate (SCTP: its CRC32c checksum cannot be updated by the BPF
    /// helpers): rejected with ICMP port unreachable.
    UnsupportedProtocol = 12,
}

impl DropReason {
    /// Number of slots in `SL_DROPS` (index 0 is unused).
    pub const COUNT: u32 = 16;

    /// Every reason, in value order.
    pub const ALL: [DropReason; 12] = [
        DropReason::InvalidIpHeader,
        DropReason::Truncated,
        DropReason::NoBackend,
        DropReason::BackendMissing,
        DropReason::CtCreateFailed,
        DropReason::NatFailed,
        DropReason::IcmpErrorUntranslatable,
        DropReason::NoServicePort,
        DropReason::NoLocalBackend,
        DropReason::SnatFailed,
        DropReason::SourceRangeDenied,
        DropReason::UnsupportedProtocol,
    ];

    /// A stable snake_case name for metrics and the CLI.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::InvalidIpHeader => "invalid_ip_header",
            DropReason::Truncated => "truncated",
            DropReason::NoBackend => "no_backend",
            DropReason::BackendMissing => "backend_missing",
            DropReason::CtCreateFailed => "ct_create_failed",
            DropReason::NatFailed => "nat_failed",
            DropReason::IcmpErrorUntranslatable => "icmp_error_untranslatable",
            DropReason::NoServicePort => "no_service_port",
            DropReason::NoLocalBackend => "no_local_backend",
            DropReason::SnatFailed => "snat_failed",
            DropReason::SourceRangeDenied => "source_range_denied",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
        }
    }
}

const _: () = assert!((DropReason::UnsupportedProtocol as u32) < DropReason::COUNT);
