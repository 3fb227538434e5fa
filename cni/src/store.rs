//! The file-backed store of attachments and the built-in IPAM.
//!
//! Layout under `dataDir`: one directory per network name, holding
//! - `lock`: taken with `flock(LOCK_EX)` around every read-modify-write, so
//!   concurrent plugin processes serialise (the lock dies with the process,
//!   so a crashed plugin never leaves it held);
//! - `state-<boot id>.a` and `.b`: every attachment `(containerID, ifname)`
//!   with its address, host veth and ifindex, and the allocation cursor per
//!   range, as JSON with a generation number, followed by a line with the
//!   FNV-1a hash of the JSON. A save writes the generation after the current
//!   one into the *other* file, in place; a load takes the valid file with
//!   the highest generation. A plugin killed in the middle of a save leaves
//!   that file invalid (hash mismatch) and the previous state intact. Readers
//!   never see a half-written state anyway: they hold the lock. (In place,
//!   because replacing a file by rename or truncation makes ext4 flush it,
//!   which costs milliseconds per ADD.)
//!
//! The boot id (`/proc/sys/kernel/random/boot_id`) in the file names makes a
//! reboot start from an empty store: no pod, veth or pinned map of the last
//! boot survives it, so nothing of it can be in use. Files of other boots are
//! removed on the next access. This also makes fsync unnecessary: a power
//! loss is a reboot.
//!
//! Attachments are recorded for delegated IPAM too (without owning the
//! address), so that GC knows what to release.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::config::Cidr;
use crate::{Error, Result};

/// One recorded attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    /// Host-side veth name.
    pub host_if: String,
    /// Host-side veth ifindex once the link exists (0 before).
    #[serde(default)]
    pub host_ifindex: u32,
    /// The address came from a delegated IPAM plugin (release it there).
    #[serde(default)]
    pub delegated: bool,
    #[serde(default)]
    pub netns: String,
}

impl Record {
    pub fn is(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Incremented by every save.
    #[serde(default)]
    pub generation: u64,
    /// Last address handed out per range (allocation continues after it, so
    /// a released address is not reused at once).
    #[serde(default)]
    pub cursors: BTreeMap<String, Ipv4Addr>,
    #[serde(default)]
    pub attachments: Vec<Record>,
}

impl State {
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<&Record> {
        self.attachments.iter().find(|r| r.is(container_id, ifname))
    }

    pub fn find_mut(&mut self, container_id: &str, ifname: &str) -> Option<&mut Record> {
        self.attachments.iter_mut().find(|r| r.is(container_id, ifname))
    }

    pub fn remove(&mut self, container_id: &str, ifname: &str) -> Option<Record> {
        let i = self.attachments.iter().position(|r| r.is(container_id, ifname))?;
        Some(self.attachments.remove(i))
    }

    pub fn in_use(&self, ip: Ipv4Addr) -> bool {
        self.attachments.iter().any(|r| r.ip == ip)
    }

    /// Picks a free address in `ranges`, continuing after each range's cursor.
    pub fn allocate(&mut self, ranges: &[Cidr]) -> Result<Ipv4Addr> {
        for range in ranges {
            let key = range.to_string();
            let (first, last) = range.hosts();
            let start = self
                .cursors
                .get(&key)
                .map(|c| u32::from(*c))
                .filter(|c| (first..=last).contains(c))
                .map_or(first, |c| if c >= last { first } else { c + 1 });
            let size = last - first + 1;
            for i in 0..size {
                let off = (start - first + i) % size;
                let ip = Ipv4Addr::from(first + off);
                if !self.in_use(ip) {
                    self.cursors.insert(key, ip);
                    return Ok(ip);
                }
            }
        }
        Err(Error::PoolExhausted {
            ranges: ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            used: self.attachments.iter().filter(|r| !r.delegated).count(),
        })
    }

    /// Free addresses left in `ranges`.
    pub fn free(&self, ranges: &[Cidr]) -> u64 {
        ranges
            .iter()
            .map(|r| {
                let used = self.attachments.iter().filter(|a| r.contains(a.ip)).count() as u64;
                r.size().saturating_sub(used)
            })
            .sum()
    }
}

/// The store of one network, locked for as long as this value lives.
pub struct Store {
    _lock: Flock<File>,
    /// The two state files; `current` indexes the one loaded (if any).
    paths: [PathBuf; 2],
    current: Option<usize>,
    pub state: State,
    dirty: bool,
}

/// The id of the running boot (empty when unreadable).
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', ""))
        .unwrap_or_default()
}

/// `<dataDir>/<network>`.
pub fn network_dir(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The file's state when it is complete and intact.
fn decode(bytes: &[u8]) -> Option<State> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (json, hash) = text.trim_end_matches('\n').rsplit_once('\n')?;
    if u64::from_str_radix(hash, 16).ok()? != fnv1a(json.as_bytes()) {
        return None;
    }
    serde_json::from_str(json).ok()
}

fn encode(state: &State) -> Vec<u8> {
    let json = serde_json::to_string(state).expect("State serialises");
    format!("{json}\n{:016x}\n", fnv1a(json.as_bytes())).into_bytes()
}

impl Store {
    /// Locks and loads the store of `network` under `data_dir`, creating it
    /// when missing.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = network_dir(data_dir, network);
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io(&lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Io { path: lock_path.clone(), source: e.into() })?;
        let prefix = format!("state-{}.", boot_id());
        let paths = [dir.join(format!("{prefix}a")), dir.join(format!("{prefix}b"))];
        // Forget earlier boots (and the format before the a/b files).
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                let ours = paths.iter().any(|p| p.file_name() == Some(e.file_name().as_os_str()));
                if n.starts_with("state-") && !ours {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let mut best: Option<(usize, State)> = None;
        let mut unreadable = 0;
        for (i, p) in paths.iter().enumerate() {
            match fs::read(p) {
                Ok(bytes) => match decode(&bytes) {
                    Some(st) if best.as_ref().is_none_or(|(_, b)| st.generation > b.generation) => {
                        best = Some((i, st));
                    }
                    Some(_) => {}
                    None => unreadable += 1,
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(p)(e)),
            }
        }
        if best.is_none() && unreadable == 2 {
            return Err(Error::IpamStore {
                path: dir,
                reason: "both state files are damaged; move them away to start over".into(),
            });
        }
        let (current, state) = match best {
            Some((i, st)) => (Some(i), st),
            None => (None, State::default()),
        };
        Ok(Store { _lock: lock, paths, current, state, dirty: false })
    }

    /// Opens the store only if it exists (for DEL and GC, which must not
    /// fail on a missing or unwritable `dataDir` when there is nothing to do).
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Store>> {
        if !network_dir(data_dir, network).join("lock").exists() {
            return Ok(None);
        }
        Self::open(data_dir, network).map(Some)
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Writes the state (when changed) into the file not holding the current
    /// one, in place, never truncating it to zero.
    pub fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let target = self.current.map_or(0, |c| 1 - c);
        let path = &self.paths[target];
        self.state.generation += 1;
        let bytes = encode(&self.state);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
            f.write_all(&bytes)?;
            f.set_len(bytes.len() as u64)
        };
        write().map_err(Error::io(path))?;
        self.current = Some(target);
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, ip: Ipv4Addr) -> Record {
        Record {
            container_id: id.into(),
            ifname: "eth0".into(),
            ip,
            host_if: String::new(),
            host_ifindex: 0,
            delegated: false,
            netns: String::new(),
        }
    }

    #[test]
    fn allocates_sequentially_and_wraps() {
        let ranges = [Cidr::parse("10.0.0.0/30").unwrap()];
        let mut s = State::default();
        let a = s.allocate(&ranges).unwrap();
        s.attachments.push(rec("a", a));
        let b = s.allocate(&ranges).unwrap();
        s.attachments.push(rec("b", b));
        assert_eq!((a, b), (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(s.allocate(&ranges).unwrap_err().code(), 102);
        assert_eq!(s.free(&ranges), 0);
        s.remove("a", "eth0");
        assert_eq!(s.allocate(&ranges).unwrap(), a);
    }

    #[test]
    fn store_round_trips_under_a_lock() {
        let dir = std::env::temp_dir().join(format!("sluice-cni-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let mut st = Store::open(&dir, "net").unwrap();
            st.state.attachments.push(rec("x", Ipv4Addr::new(10, 0, 0, 9)));
            st.mark_dirty();
            st.save().unwrap();
        }
        let st = Store::open(&dir, "net").unwrap();
        assert_eq!(st.state.find("x", "eth0").unwrap().ip, Ipv4Addr::new(10, 0, 0, 9));
        drop(st);
        assert!(Store::open_existing(&dir, "other").unwrap().is_none());
        // A save cut short leaves its file invalid; the other one is used.
        {
            let mut st = Store::open(&dir, "net").unwrap();
            st.state.attachments.clear();
            st.mark_dirty();
            st.save().unwrap();
            let damaged = st.paths[st.current.unwrap()].clone();
            drop(st);
            let mut bytes = fs::read(&damaged).unwrap();
            bytes.truncate(bytes.len() / 2);
            fs::write(&damaged, bytes).unwrap();
        }
        let st = Store::open(&dir, "net").unwrap();
        assert_eq!(st.state.attachments.len(), 1, "the previous generation survives");
        drop(st);
        fs::remove_dir_all(&dir).unwrap();
    }
}
