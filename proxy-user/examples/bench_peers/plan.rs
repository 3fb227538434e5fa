//! Which services of a generated set are measured: the measured service's
//! placement (first, middle or last of the N services in the order every
//! data plane is given them) and its number of endpoints.
//!
//! All measured services of one N go into one service set where they fit,
//! so each data plane is programmed once per N and every (placement,
//! endpoints) pair is measured on the same loaded rules. Only when N is too
//! small to hold them apart (N < 3 × the number of endpoint counts) is
//! there one set per endpoint count, and placements that fall on the same
//! service (at N = 1 first, middle and last are one service) are measured
//! once, labelled with all of them.

use serde::Serialize;

/// Where the measured service sits among the N services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    First,
    Middle,
    Last,
}

impl Placement {
    pub const ALL: [Placement; 3] = [Placement::First, Placement::Middle, Placement::Last];

    pub fn name(self) -> &'static str {
        match self {
            Placement::First => "first",
            Placement::Middle => "middle",
            Placement::Last => "last",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Placement> {
        Placement::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            anyhow::anyhow!("unknown placement `{s}` (there are: first, middle, last)")
        })
    }
}

/// One measured service of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its index among the set's services (0-based, in generation order).
    pub index: u32,
    /// Its number of endpoints (the first `endpoints` backend pods).
    pub endpoints: u32,
    /// The placements it stands for (several only at small N).
    pub placements: Vec<Placement>,
}

impl Target {
    /// `last`, or `first=middle=last` where the placements coincide.
    pub fn label(&self) -> String {
        self.placements.iter().map(|p| p.name()).collect::<Vec<_>>().join("=")
    }
}

/// One service set to program: `n` services, the `targets` among them
/// (sorted by index); every other service has one unreached endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPlan {
    pub n: u32,
    pub targets: Vec<Target>,
}

impl SetPlan {
    /// The measured service at `index`, if any.
    pub fn target_at(&self, index: u32) -> Option<&Target> {
        self.targets.iter().find(|t| t.index == index)
    }

    /// The endpoint counts measured in this set, in target order, deduplicated.
    pub fn endpoint_counts(&self) -> Vec<u32> {
        let mut v: Vec<u32> = Vec::new();
        for t in &self.targets {
            if !v.contains(&t.endpoints) {
                v.push(t.endpoints);
            }
        }
        v
    }
}

/// The (placement, endpoints) pairs to measure. With `all_pairs` every
/// pair; otherwise every placement with the first endpoint count and every
/// further endpoint count at the worst of the placements (the latest in the
/// list: `last` if given), which shows each effect for fewer trials.
pub fn pairs(
    endpoints: &[u32],
    placements: &[Placement],
    all_pairs: bool,
) -> Vec<(Placement, u32)> {
    let mut placements = placements.to_vec();
    placements.sort_unstable();
    placements.dedup();
    let mut counts: Vec<u32> = Vec::new();
    for &e in endpoints {
        if !counts.contains(&e) {
            counts.push(e);
        }
    }
    let (Some(&first_count), Some(&worst)) = (counts.first(), placements.last()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &e in &counts {
        for &p in &placements {
            if all_pairs || e == first_count || p == worst {
                out.push((p, e));
            }
        }
    }
    out
}

/// The service sets that measure `pairs` at `n` services (see the module
/// documentation). `n` must be at least 1.
pub fn plan(n: u32, pairs: &[(Placement, u32)]) -> Vec<SetPlan> {
    assert!(n >= 1, "at least one service");
    let mut counts: Vec<u32> = Vec::new();
    for &(_, e) in pairs {
        if !counts.contains(&e) {
            counts.push(e);
        }
    }
    let k = counts.len() as u32;
    let mut sets = Vec::new();
    if u64::from(n) >= 3 * u64::from(k) {
        // first: [0, k), middle: [(n-k)/2, (n-k)/2 + k), last: [n-k, n);
        // the first endpoint count sits at the very first and very last index.
        let mut targets = Vec::new();
        for &(p, e) in pairs {
            let j = counts.iter().position(|&c| c == e).expect("counted") as u32;
            let index = match p {
                Placement::First => j,
                Placement::Middle => (n - k) / 2 + j,
                Placement::Last => n - 1 - j,
            };
            add(&mut targets, index, e, p);
        }
        targets.sort_by_key(|t| t.index);
        sets.push(SetPlan { n, targets });
    } else {
        for &e in &counts {
            let mut targets = Vec::new();
            for &(p, _) in pairs.iter().filter(|&&(_, pe)| pe == e) {
                add(&mut targets, single_index(p, n), e, p);
            }
            targets.sort_by_key(|t| t.index);
            sets.push(SetPlan { n, targets });
        }
    }
    sets
}

/// The index of a lone measured service at placement `p` of `n`.
fn single_index(p: Placement, n: u32) -> u32 {
    match p {
        Placement::First => 0,
        Placement::Middle => (n - 1) / 2,
        Placement::Last => n - 1,
    }
}

fn add(targets: &mut Vec<Target>, index: u32, endpoints: u32, p: Placement) {
    match targets.iter_mut().find(|t| t.index == index) {
        Some(t) => {
            debug_assert_eq!(t.endpoints, endpoints, "one service, one endpoint count");
            if !t.placements.contains(&p) {
                t.placements.push(p);
                t.placements.sort_unstable();
            }
        }
        None => targets.push(Target { index, endpoints, placements: vec![p] }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Placement::{First, Last, Middle};

    fn t(index: u32, endpoints: u32, placements: &[Placement]) -> Target {
        Target { index, endpoints, placements: placements.to_vec() }
    }

    // Expect: without all_pairs, the placements with the first endpoint
    // count and the further counts at the worst placement only; with it,
    // the cross product; duplicates and order of the input do not matter.
    #[test]
    fn pairs_subset_and_cross_product() {
        assert_eq!(pairs(&[1, 10], &[Last, First], false), [(First, 1), (Last, 1), (Last, 10)]);
        assert_eq!(
            pairs(&[1, 10, 1], &[First, Middle, Last], false),
            [(First, 1), (Middle, 1), (Last, 1), (Last, 10)]
        );
        assert_eq!(
            pairs(&[10, 1], &[First, Middle], false),
            [(First, 10), (Middle, 10), (Middle, 1)]
        );
        assert_eq!(
            pairs(&[1, 10], &[First, Last], true),
            [(First, 1), (Last, 1), (First, 10), (Last, 10)]
        );
        assert!(pairs(&[], &[First], false).is_empty());
        assert!(pairs(&[1], &[], false).is_empty());
    }

    // Expect: at N = 1000 one set holds every measured service at distinct
    // indices: the first endpoint count at 0 and 999, the second next to
    // them, middle around 499.
    #[test]
    fn one_set_when_n_is_large() {
        let p = pairs(&[1, 10], &Placement::ALL, true);
        let sets = plan(1000, &p);
        assert_eq!(sets.len(), 1);
        assert_eq!(
            sets[0].targets,
            [
                t(0, 1, &[First]),
                t(1, 10, &[First]),
                t(499, 1, &[Middle]),
                t(500, 10, &[Middle]),
                t(998, 10, &[Last]),
                t(999, 1, &[Last]),
            ]
        );
        assert_eq!(sets[0].endpoint_counts(), [1, 10]);
        assert_eq!(sets[0].target_at(998).map(Target::label), Some("last".to_owned()));
        assert!(sets[0].target_at(2).is_none());
        // The default subset.
        let sets = plan(10_000, &pairs(&[1, 10], &[First, Last], false));
        assert_eq!(sets[0].targets, [t(0, 1, &[First]), t(9998, 10, &[Last]), t(9999, 1, &[Last])]);
    }

    // Expect: the smallest N that still fits (3 × counts) gives distinct
    // indices; below it one set per endpoint count, where coinciding
    // placements merge into one target.
    #[test]
    fn small_n_splits_and_merges() {
        let p = pairs(&[1, 10], &Placement::ALL, true);
        let sets = plan(6, &p);
        assert_eq!(sets.len(), 1);
        let mut idx: Vec<u32> = sets[0].targets.iter().map(|t| t.index).collect();
        idx.dedup();
        assert_eq!(idx, [0, 1, 2, 3, 4, 5]);

        let sets = plan(1, &p);
        assert_eq!(
            sets,
            [
                SetPlan { n: 1, targets: vec![t(0, 1, &[First, Middle, Last])] },
                SetPlan { n: 1, targets: vec![t(0, 10, &[First, Middle, Last])] },
            ]
        );
        assert_eq!(sets[0].targets[0].label(), "first=middle=last");

        let sets = plan(2, &p);
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[1].targets, [t(0, 10, &[First, Middle]), t(1, 10, &[Last])]);

        // One endpoint count: one set from N = 3 on; N = 1 merges.
        let p1 = pairs(&[1], &Placement::ALL, false);
        assert_eq!(
            plan(3, &p1)[0].targets,
            [t(0, 1, &[First]), t(1, 1, &[Middle]), t(2, 1, &[Last])]
        );
        assert_eq!(
            plan(1, &p1),
            [SetPlan { n: 1, targets: vec![t(0, 1, &[First, Middle, Last])] }]
        );
    }

    #[test]
    fn placement_names_round_trip() {
        for p in Placement::ALL {
            assert_eq!(Placement::parse(p.name()).unwrap(), p);
        }
        assert!(Placement::parse("centre").unwrap_err().to_string().contains("centre"));
    }
}
