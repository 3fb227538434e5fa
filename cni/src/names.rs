//! Deterministic host-side interface names.

/// Host-side veth name of the attachment `(container_id, ifname)`: `sl`
/// followed by the low 48 bits, as 12 lowercase hex digits, of the 64-bit
/// FNV-1a hash of `"<container_id>/<ifname>"` (offset basis
/// `0xcbf29ce484222325`, prime `0x100000001b3`). Neither part can contain a
/// `/`, so the key is unambiguous. This definition is part of sluice's
/// interface (`--pod-devices sl+`, GC of leftovers) and must never change.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain(std::iter::once(b'/')).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("sl{:012x}", h & 0xffff_ffff_ffff)
}

/// `true` for names of the form `sl` + 12 lowercase hex digits.
pub fn is_host_veth_name(name: &str) -> bool {
    name.strip_prefix("sl").is_some_and(|h| {
        h.len() == 12 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        // Pinned: changing the hash would orphan every existing pod's veth.
        assert_eq!(host_veth_name("abc", "eth0"), host_veth_name("abc", "eth0"));
        assert_eq!(
            host_veth_name("abc", "eth0"),
            "sl".to_owned()
                + &{
                    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                    for b in b"abc/eth0" {
                        h ^= u64::from(*b);
                        h = h.wrapping_mul(0x100_0000_01b3);
                    }
                    format!("{:012x}", h & 0xffff_ffff_ffff)
                }
        );
        assert_eq!(host_veth_name("", ""), "sla24c860189fe");
        assert_ne!(host_veth_name("abc", "eth0"), host_veth_name("abc", "eth1"));
        assert_eq!(host_veth_name("abc", "eth0").len(), 14);
        assert!(is_host_veth_name(&host_veth_name("x", "eth0")));
        assert!(!is_host_veth_name("slXYZ"));
    }
}
