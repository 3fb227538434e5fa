//! Measurement: what the kernel operations of a pod's wiring cost in
//! isolation, on fresh veth pairs in throwaway namespaces (no process spawn,
//! one thread in the node namespace). Compares attaching the pinned pod
//! program with tcx (a bpf link) against legacy tc (clsact qdisc + cls_bpf
//! filter over netlink), with the host veth down and up, and times the veth
//! creation, setting it up, and deleting it with each kind of attachment.
//! Needs root.
//!
//! ```text
//! cargo build --release -p sluice-cni --examples
//! unshare --mount --propagation private target/release/examples/attach_cost [--n N]
//! ```

use std::time::{Duration, Instant};

use aya::programs::tc::{NlOptions, TcAttachOptions, TcHandle, qdisc_add_clsact};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use sluice::datapath::PinPaths;
use sluice::datapath::loader::Datapath;
use sluice::testbed::{BpffsMount, Netns, TestDir, require_root, sweep_stale};
use sluice_cni::netlink;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attach {
    None,
    TcxDown,
    TcxUp,
    TcDown,
    TcUp,
}

const VARIANTS: [Attach; 5] =
    [Attach::None, Attach::TcxDown, Attach::TcxUp, Attach::TcDown, Attach::TcUp];

#[derive(Default, Clone)]
struct Samples {
    create: Vec<Duration>,
    up: Vec<Duration>,
    attach: Vec<Duration>,
    delete: Vec<Duration>,
}

/// Attaches `prog` to `host` as `how` says; the time it took.
fn attach(
    prog: &mut SchedClassifier,
    how: Attach,
    host: &str,
    links: &mut Vec<aya::programs::tc::SchedClassifierLink>,
) -> anyhow::Result<Option<Duration>> {
    let t = Instant::now();
    match how {
        Attach::TcxDown | Attach::TcxUp => {
            let id = prog.attach_with_options(
                host,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?;
            links.push(prog.take_link(id)?);
        }
        Attach::TcDown | Attach::TcUp => {
            qdisc_add_clsact(host)?;
            let id = prog.attach_with_options(
                host,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: 1,
                    handle: TcHandle::new(0, 1),
                    classid: None,
                }),
            )?;
            // The filter stays with the device.
            std::mem::forget(prog.take_link(id)?);
        }
        Attach::None => return Ok(None),
    }
    Ok(Some(t.elapsed()))
}

fn main() -> anyhow::Result<()> {
    if !require_root() {
        std::process::exit(1);
    }
    let mut n = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--n" => n = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other:?} (--n N)"),
        }
    }
    sweep_stale();
    let dir = TestDir::new("attach-cost")?;
    let bpffs = BpffsMount::new_in(&dir)?;
    let root = bpffs.path().join("sluice");
    drop(Datapath::load(&PinPaths::new(&root), &sluice::datapath::MapSizes::small())?);
    let prog_path = sluice_cni::datapath::Pins::new(&root).program();
    let node = Netns::new("cost-node")?;
    // A long-lived clsact + tcx user so that the ingress static key never
    // flips (as on a node where the agent serves external devices).
    node.ip(&["link", "add", "keep0", "type", "veth", "peer", "name", "keep1"])?;
    let pods: Vec<Netns> =
        (0..n).map(|i| Netns::new(&format!("cost{i}"))).collect::<anyhow::Result<_>>()?;
    let pod_paths: Vec<String> = pods.iter().map(|p| p.path().display().to_string()).collect();

    let samples =
        node.exec(Duration::from_secs(600), move || -> anyhow::Result<Vec<Samples>> {
            let mut prog = SchedClassifier::from_pin(&prog_path)?;
            qdisc_add_clsact("keep0")?;
            let keep = prog.attach_with_options(
                "keep0",
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?;
            let _keep = prog.take_link(keep)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut out = vec![Samples::default(); VARIANTS.len()];
            for (i, path) in pod_paths.iter().enumerate() {
                let ns = std::fs::File::open(path)?;
                // Interleaved: every variant once per pod namespace.
                for k in 0..VARIANTS.len() {
                    let v = (i + k) % VARIANTS.len();
                    let s = &mut out[v];
                    let host = format!("c{i}v{v}");
                    let peer = format!("e{v}");
                    rt.block_on(async {
                        let h = netlink::connect()?;
                        let t = Instant::now();
                        netlink::create_veth(&h, &host, &peer, &ns, 1500).await?;
                        s.create.push(t.elapsed());
                        let index = netlink::link_by_name(&h, &host).await?.expect("created").index;
                        let mut links = Vec::new();
                        let up_first = matches!(VARIANTS[v], Attach::TcxUp | Attach::TcUp);
                        if !up_first {
                            s.attach.extend(attach(&mut prog, VARIANTS[v], &host, &mut links)?);
                        }
                        let t = Instant::now();
                        netlink::set_up(&h, index, &host).await?;
                        s.up.push(t.elapsed());
                        if up_first {
                            s.attach.extend(attach(&mut prog, VARIANTS[v], &host, &mut links)?);
                        }
                        let t = Instant::now();
                        netlink::delete_link_index(&h, index, &host).await?;
                        s.delete.push(t.elapsed());
                        drop(links);
                        anyhow::Ok(())
                    })?;
                }
            }
            Ok(out)
        })??;

    let pct = |v: &[Duration], q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let mut v = v.to_vec();
        v.sort();
        v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
    };
    println!("{n} veth pairs per variant (peer created in a pod netns); ms p50 / p99");
    println!(
        "{:<10} {:>15} {:>15} {:>15} {:>15}",
        "variant", "create", "set up", "attach", "delete"
    );
    for (v, s) in VARIANTS.iter().zip(&samples) {
        let f = |x: &[Duration]| format!("{:.2} / {:.2}", pct(x, 0.5), pct(x, 0.99));
        println!(
            "{:<10} {:>15} {:>15} {:>15} {:>15}",
            format!("{v:?}"),
            f(&s.create),
            f(&s.up),
            f(&s.attach),
            f(&s.delete)
        );
    }
    drop(pods);
    Ok(())
}
